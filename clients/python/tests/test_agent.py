"""The client against a real agent and the example MCP server (see conftest.py)."""

import asyncio
import json
import os
import signal
import ssl
import stat
import subprocess
import sys
import textwrap
import time

import pytest

import tessera
from conftest import SCOPE, UNCONSENTED
from helpers import list_tasks, revoked_ids, wait_for

PR = {"repo": "acme/api", "number": 42}


def text(result):
    return "\n".join(c.text for c in result.content if getattr(c, "text", None))


async def call(task, url, tool="get_pull_request", args=PR):
    async with task.mcp(url) as client:
        return await client.call_tool(tool, args)


def test_begin_call_and_end_on_exit(env):
    with env.task() as task:
        assert task.spiffe_id == f"spiffe://{task.svid.trust_domain}/client/{task.info.client}/task/{task.id}"
        assert task.info.scopes == (SCOPE,)
        assert task.server_id == f"spiffe://{task.svid.trust_domain}/mcp/github"

        async def session():
            async with task.mcp(env.url) as client:
                tools = sorted(t.name for t in (await client.list_tools()).tools)
                result = await client.call_tool("get_pull_request", PR)
                denied = await client.call_tool("list_pulls", {"repo": "acme/api"})
                return tools, result, denied

        tools, result, denied = asyncio.run(session())
        # Only what the task asked for, though the consent allows more.
        assert tools == ["get_pull_request"]
        assert not result.is_error, text(result)
        assert json.loads(text(result))["number"] == 42
        assert denied.is_error
        assert denied.structured_content["authorization"]["reason"] == "out_of_scope"
        assert list_tasks(env.socket)[task.id].ended_at_unix == 0
        task_id = task.id
    # Ended by the client (not by the process exiting), and on the feed at once.
    ended = list_tasks(env.socket)[task_id]
    assert ended.end_reason == "ended"
    assert task.ended and task.end_reason == "ended"
    assert task_id in revoked_ids(env.socket, want=task_id)


def test_end_on_exception(env):
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with env.task() as task:
            task_id = task.id
            result = asyncio.run(call(task, env.url))
            assert not result.is_error, text(result)
            raise Boom()
    assert list_tasks(env.socket)[task_id].end_reason == "ended"
    assert task_id in revoked_ids(env.socket, want=task_id)


def test_end_on_exception_inside_async_with(env):
    async def runtime():
        async with env.task() as task:
            runtime.task_id = task.id
            async with task.mcp(env.url) as client:
                await client.call_tool("get_pull_request", PR)
                raise LookupError("the model gave up")

    # The MCP SDK runs on anyio task groups, which wrap what escapes them in an
    # ExceptionGroup; either way the runtime's own exception is what left the block.
    with pytest.raises((LookupError, BaseExceptionGroup)) as info:
        asyncio.run(runtime())
    assert info.type is LookupError or info.group_contains(LookupError, depth=None)
    assert list_tasks(env.socket)[runtime.task_id].end_reason == "ended"


def test_consent_refusal_is_a_typed_error_with_the_agents_message(env):
    with pytest.raises(tessera.ConsentRequired) as info:
        with env.task(scopes=[SCOPE, UNCONSENTED]):
            pytest.fail("BeginTask succeeded without consent")
    e = info.value
    assert e.missing == [UNCONSENTED], e
    assert UNCONSENTED in e.agent_message and "consent" in e.agent_message
    assert e.code == "PERMISSION_DENIED"
    assert UNCONSENTED in str(e)
    # No consent at all for this subject: still ConsentRequired, nothing listed as missing.
    with pytest.raises(tessera.ConsentRequired) as info:
        tessera.Task(server="github", subject="nobody@acme.corp", scopes=[SCOPE], socket=env.socket).begin()
    assert info.value.missing == []
    assert "nobody@acme.corp" in info.value.agent_message


def test_agent_unreachable(env, tmp_path):
    with pytest.raises(tessera.AgentUnreachable):
        tessera.Task(server="github", subject=env.subject, scopes=[SCOPE], socket=tmp_path / "none.sock").begin()
    # A socket nobody listens on (the agent gone): UNAVAILABLE from gRPC.
    import socket as so

    path = str(tmp_path / "dead.sock")
    s = so.socket(so.AF_UNIX)
    s.bind(path)
    s.close()
    with pytest.raises(tessera.AgentUnreachable) as info:
        tessera.Task(server="github", subject=env.subject, scopes=[SCOPE], socket=path, timeout=5).begin()
    assert info.value.code == "UNAVAILABLE"


def test_svid_files_follow_the_task(env):
    with env.task() as task:
        files = task.files
        assert stat.S_IMODE(os.stat(files.dir).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(files.key).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(files.combined).st_mode) == 0o600
        assert files.cert.read_text() == task.svid.chain_pem()
        assert files.bundle.read_text() == task.svid.bundle_pem()
        # What a tool outside Python would do with them: a plain SSLContext from the
        # files (checking the server's SPIFFE ID is then that tool's job).
        ctx = ssl.create_default_context(cafile=str(files.bundle))
        ctx.load_cert_chain(files.cert, files.key)
        assert "PRIVATE KEY" not in repr(task.svid)
    assert not files.key.exists() and not files.cert.exists() and not files.dir.exists()


def test_the_server_is_verified_by_spiffe_id(env):
    """The example server presents spiffe://<td>/mcp/github: a context expecting any
    other server refuses it after the chain verifies, before a request is sent."""
    with env.task() as task:
        wrong = tessera.TaskSSLContext.for_task(task.svid, task.files, "docs")
        host, port = env.url.split("//")[1].split("/")[0].rsplit(":", 1)
        import socket as so

        with so.create_connection((host, int(port)), timeout=5) as raw:
            with pytest.raises(tessera.ServerIdentityMismatch) as info:
                wrong.wrap_socket(raw, server_hostname=None)
        assert info.value.presented == [task.server_id]
        assert isinstance(info.value, ssl.SSLCertVerificationError)
        # The right one connects, through the same code path.
        with so.create_connection((host, int(port)), timeout=5) as raw:
            with task.ssl_context().wrap_socket(raw) as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
        # Switching the checks off on a task's context is refused.
        with pytest.raises(ValueError):
            task.ssl_context().verify_mode = ssl.CERT_NONE
        with pytest.raises(ValueError):
            task.ssl_context().check_hostname = True


def leaf_not_after(task):
    # The stdlib's own certificate decoder (private, but it is exactly what
    # getpeercert() uses), so the test needs no X.509 library.
    path = task.files.dir / "leaf-for-test.pem"
    path.write_text(ssl.DER_cert_to_PEM_cert(task.svid.chain_der[0]))
    try:
        return ssl.cert_time_to_seconds(ssl._ssl._test_decode_cert(str(path))["notAfter"])
    finally:
        path.unlink()


def test_rotation_is_followed_mid_session(env):
    """One MCP session outlives the task's first SVID: the agent rotates it at half
    life, and once the first one has expired the session's calls still succeed (the
    server checks expiry on every request, and refuses expired certificates at the
    handshake), so they went out on new connections presenting the new SVID."""
    assert 0 < env.svid_ttl <= 30, "the agent must run with a short task_svid_ttl"

    async def session(task):
        async with task.mcp(env.url) as client:
            first = await client.call_tool("get_pull_request", PR)
            assert not first.is_error, text(first)
            first_expiry = leaf_not_after(task)
            # Wait until the first SVID has expired (plus a second of clock slack).
            while time.time() < first_expiry + 1.5:
                await asyncio.sleep(0.2)
            assert task.rotations >= 1, "no rotation arrived on the Workload API stream"
            assert leaf_not_after(task) > first_expiry
            later = await client.call_tool("get_pull_request", PR)
            return later

    with env.task() as task:
        first_serial = task.svid.chain_der[0]
        later = asyncio.run(session(task))
        assert not later.is_error, text(later)
        assert task.svid.chain_der[0] != first_serial
        assert task.files.cert.read_text() == task.svid.chain_pem()


CHILD = textwrap.dedent(
    """
    import asyncio, sys, time, tessera
    mode, socket, subject = sys.argv[1:4]
    task = tessera.Task(server="github", subject=subject,
                        scopes=["github/tool/get_pull_request"], socket=socket)
    if mode == "sync":
        with task:
            print(task.id, flush=True)
            time.sleep(60)
    else:
        async def main():
            async with task:
                print(task.id, flush=True)
                await asyncio.sleep(60)
        asyncio.run(main())
    """
)


@pytest.mark.parametrize(
    "mode,sig,status",
    [
        ("sync", signal.SIGTERM, 128 + signal.SIGTERM),
        ("async", signal.SIGTERM, 128 + signal.SIGTERM),
        ("sync", signal.SIGINT, None),
    ],
)
def test_signal_ends_the_task(env, mode, sig, status):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, env.socket, env.subject],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        task_id = child.stdout.readline().strip()
        assert task_id, child.stderr.read()
        assert list_tasks(env.socket)[task_id].ended_at_unix == 0
        child.send_signal(sig)
        code = child.wait(timeout=20)
    finally:
        child.kill()
    if status is not None:
        assert code == status, child.stderr.read()
    else:
        assert code != 0  # KeyboardInterrupt's traceback and exit status
    # "ended": the client's EndTask, not the agent noticing the process exit.
    task = list_tasks(env.socket)[task_id]
    assert task.end_reason == "ended", (task.end_reason, child.stderr.read())
    assert task_id in revoked_ids(env.socket, want=task_id)


def test_task_ended_elsewhere_is_noticed(env):
    """A task the agent ends on its own (here: its lifetime runs out) is seen by the
    client: ended, with the agent's reason, and its files gone."""
    with env.task(lifetime=2) as task:
        assert wait_for(lambda: task.ended, within=15), "the deadline never reached the client"
        assert task.end_reason == "deadline"
        assert not task.files.key.exists()


def test_an_unregistered_program_is_not_attested(env, tmp_path):
    """The same interpreter under another path matches no registration entry (the
    agent reads the executable's path from the kernel): NotAttested, with the agent's
    message, at BeginTask."""
    import shutil

    exe = tmp_path / "python-unregistered"
    shutil.copy(os.path.realpath(sys.executable), exe)
    code = textwrap.dedent(
        """
        import sys, tessera
        try:
            tessera.Task(server="github", subject=sys.argv[2], scopes=["github/tool/get_pull_request"],
                         socket=sys.argv[1]).begin()
        except tessera.NotAttested as e:
            print("NotAttested", e.code, e.agent_message)
        """
    )
    site = os.pathsep.join(p for p in sys.path if p.endswith("site-packages"))
    out = subprocess.run(
        [str(exe), "-c", code, env.socket, env.subject],
        env={**os.environ, "PYTHONPATH": site},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "NotAttested PERMISSION_DENIED no identity issued", out.stderr
