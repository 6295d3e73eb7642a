"""The stock Python MCP SDK against the example MCP server, authenticated the MCP
specification's machine-to-machine way: client_credentials with private_key_jwt
(RFC 7523 §2.2), the assertion a task's JWT-SVID fetched from the agent with
py-spiffe. Nothing here is Tessera's code; the SDK finds its way alone
(401 -> RFC 9728 metadata -> RFC 8414 metadata -> token endpoint -> call).

Run by tests/tests/mcp_oauth.rs, never by hand in CI. Prints one JSON object
(statuses, challenges, tool results; never a token) that the Rust test asserts on.

    mcp_oauth.py SOCKET PROTO_DIR URL SERVER_ID OTHER_URL TOKEN_TTL_SECS

SOCKET: the agent's workload socket; this interpreter is registered there as
a client with consent for the github tools the story uses. URL: the server's
resource URL (https://<addr>/mcp). OTHER_URL: a second server with the same
identity but another resource URL, whose tokens URL must refuse.
"""

import json
import ssl
import sys
import time
from urllib.parse import parse_qs, urlparse

import anyio
import httpx2
from mcp import ClientSession
from mcp.client.auth.extensions.client_credentials import PrivateKeyJWTOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from spiffe import SpiffeId, WorkloadApiClient
from cryptography.hazmat.primitives.serialization import Encoding

from stock_clients import WORKLOAD_HEADER, stubs

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


# === TLS: the trust domain's bundle, and the server's SPIFFE ID ===


class _ServerIdCheck(ssl.SSLObject):
    """Checks, when the handshake completes and before a byte of the request is written,
    that the server's certificate names exactly the expected SPIFFE ID (the way
    clients/python's TaskSSLContext does): without it any workload holding an SVID of
    the trust domain could pose as the server and be handed the assertion and the token."""

    def do_handshake(self):
        super().do_handshake()
        expected = self.context.expected_server_id
        cert = self.getpeercert() or {}
        uris = [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]
        if uris != [expected]:
            raise ssl.SSLCertVerificationError(f"server presented {uris}, expected {expected}")


def pinned_context(bundle, server_id):
    """Trusts exactly the trust domain's CAs. The server's SVID names it by one URI SAN
    (spiffe://<td>/mcp/<server>) and no DNS name or IP, so Python's hostname check can
    only be switched off; _ServerIdCheck puts the identity check back."""
    pem = "".join(c.public_bytes(Encoding.PEM).decode() for c in bundle.x509_authorities)
    ctx = ssl.create_default_context(cadata=pem)
    ctx.check_hostname = False
    ctx.sslobject_class = _ServerIdCheck
    ctx.expected_server_id = server_id
    return ctx


# === what the SDK needs from us: token storage and the assertion ===


class MemoryStorage:
    def __init__(self):
        self.tokens, self.client_info = None, None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


class Trace:
    """Every HTTP exchange the SDK makes (the discovery included), without credentials."""

    def __init__(self):
        self.exchanges = []

    async def on_response(self, response):
        # Never read the body here: a hook runs inside the SDK's auth flow, and reading the
        # standalone GET SSE stream to its end would hold that flow (and every request
        # queued behind it) until the stream closes.
        www = response.headers.get("www-authenticate")
        entry = {
            "method": response.request.method,
            "path": response.request.url.path,
            "status": response.status_code,
            "www_authenticate": www,
        }
        if response.request.url.path.endswith("/token"):
            form = parse_qs(response.request.content.decode())
            entry["form_keys"] = sorted(form)
            entry["resource"] = form.get("resource", [None])[0]
            entry["scope"] = form.get("scope", [None])[0]
        self.exchanges.append(entry)


def origin(url):
    p = urlparse(url)
    return f"{p.scheme}://{p.netloc}"


def challenge(response):
    return {
        "status": response.status_code,
        "www_authenticate": response.headers.get("www-authenticate"),
        "error": error_of(response),
    }


def error_of(response):
    try:
        return response.json().get("error")
    except Exception:
        return None


def call_outcome(result):
    text = " ".join(getattr(c, "text", "") for c in result.content)
    structured = result.structured_content or {}
    auth = structured.get("authorization") or {}
    return {"is_error": bool(result.is_error), "text": text, "reason": auth.get("reason")}


async def story(socket, proto_dir, url, server_id, other_url, ttl):
    pb2, rpc = stubs(proto_dir, "tasks")
    import grpc

    tasks_api = rpc.TasksStub(grpc.insecure_channel(f"unix:{socket}"))
    begun = tasks_api.BeginTask(
        pb2.BeginTaskRequest(
            purpose="interop: the Python MCP SDK with a bearer token",
            subject="alice@acme.corp",
            server="github",
            scopes=["github/tool/get_pull_request", "github/tool/list_pulls"],
            lifetime_secs=300,
        ),
        metadata=WORKLOAD_HEADER,
        timeout=10,
    )
    task_id, task_spiffe_id = begun.task.id, begun.task.spiffe_id
    workload = WorkloadApiClient(socket_path=f"unix://{socket}")
    td = SpiffeId(task_spiffe_id).trust_domain
    bundle = workload.fetch_x509_bundles(timeout=10).get_bundle_for_trust_domain(td)
    ctx = pinned_context(bundle, server_id)

    audiences = []

    async def assertion(audience: str) -> str:
        """The SDK asks with the authorization server's issuer; the agent signs a JWT-SVID
        for the task with exactly that audience."""
        audiences.append(audience)
        svid = await anyio.to_thread.run_sync(
            lambda: workload.fetch_jwt_svid(
                audience={audience}, subject=SpiffeId(task_spiffe_id), timeout=10
            )
        )
        return svid.token

    def sdk_client(storage, trace):
        """The SDK's provider as a user sets it up: no scope, so the first token carries
        all of the task's (the server's 401 names none)."""
        auth = PrivateKeyJWTOAuthProvider(
            server_url=url,
            storage=storage,
            client_id=task_spiffe_id,
            assertion_provider=assertion,
            issuer=origin(url),
        )
        return httpx2.AsyncClient(
            verify=ctx, auth=auth, timeout=30, event_hooks={"response": [trace.on_response]}
        )

    storage, trace = MemoryStorage(), Trace()
    result = {"task_id": task_id, "task_spiffe_id": task_spiffe_id}
    raw = httpx2.AsyncClient(verify=ctx, timeout=30)
    sdk_http = sdk_client(storage, trace)

    async def token_request(endpoint, **form):
        aud = origin(url) if endpoint.startswith(origin(url)) else origin(other_url)
        svid = await anyio.to_thread.run_sync(
            lambda: workload.fetch_jwt_svid(audience={aud}, subject=SpiffeId(task_spiffe_id), timeout=10)
        )
        data = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": svid.token,
            **form,
        }
        return await raw.post(endpoint, data=data)

    token_endpoint = f"{origin(url)}/oauth/token"
    try:
        await session_story(
            result, raw, sdk_http, sdk_client, token_request, token_endpoint, trace, storage,
            workload, task_spiffe_id, tasks_api, pb2, task_id, url, other_url, ttl,
        )
    except* Exception as group:
        if result.get("stage") != "ended":
            raise
        result["ended_task_sdk"] = {"exception": [f"{type(e).__name__}: {e}"[:300] for e in leaves(group)]}
    result["ended_task_trace"] = [
        {k: e[k] for k in ("path", "status", "www_authenticate")}
        for e in trace.exchanges[result.pop("ended_mark", len(trace.exchanges)):]
    ]
    result["audiences"] = sorted(set(audiences))
    print(json.dumps(result), flush=True)


def leaves(group):
    """The exceptions inside an exception group, and their causes: what a user reads."""
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            yield from leaves(e)
        else:
            yield e
            if e.__cause__ is not None:
                yield e.__cause__


async def session_story(
    result, raw, sdk_http, sdk_client, token_request, token_endpoint, trace, storage,
    workload, task_spiffe_id, tasks_api, pb2, task_id, url, other_url, ttl,
):
    async with raw, sdk_http:
        async with streamable_http_client(url, http_client=sdk_http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                result["discovery"] = list(trace.exchanges)
                result["granted_scope"] = storage.tokens.scope if storage.tokens else None
                tools = await session.list_tools()
                result["tools"] = sorted(t.name for t in tools.tools)
                r = await session.call_tool("get_pull_request", {"repo": "acme/api", "number": 42})
                result["allowed"] = call_outcome(r)

                # Consented but not in the task: the server refuses the call itself.
                r = await session.call_tool("delete_branch", {"repo": "acme/api", "branch": "feature-x"})
                result["out_of_task"] = call_outcome(r)

                # Within the task but beyond the token: a session holding a narrower token
                # (as one restored from storage may) is answered 403 insufficient_scope,
                # and the SDK asks for the union by itself.
                narrow = await token_request(
                    token_endpoint, resource=url, scope="github/tool/get_pull_request"
                )
                narrow_storage, narrow_trace = MemoryStorage(), Trace()
                narrow_storage.tokens = OAuthToken.model_validate_json(narrow.content)
                result["narrow_minted_scope"] = narrow_storage.tokens.scope
                async with sdk_client(narrow_storage, narrow_trace) as narrow_http:
                    async with streamable_http_client(url, http_client=narrow_http) as (r2, w2):
                        async with ClientSession(r2, w2) as narrow_session:
                            await narrow_session.initialize()
                            tools = await narrow_session.list_tools()
                            result["narrow_tools"] = sorted(t.name for t in tools.tools)
                            result["narrow_setup_trace"] = list(narrow_trace.exchanges)
                            mark = len(narrow_trace.exchanges)
                            r = await narrow_session.call_tool("list_pulls", {"repo": "acme/api"})
                            result["step_up"] = call_outcome(r)
                            result["step_up_trace"] = narrow_trace.exchanges[mark:]
                            result["scope_after_step_up"] = (
                                narrow_storage.tokens.scope if narrow_storage.tokens else None
                            )

                # The token endpoint, asked directly as the SDK would be.
                resp = await token_request(
                    token_endpoint, resource=url, scope="github/tool/delete_branch"
                )
                result["scope_beyond_task"] = challenge(resp)
                resp = await token_request(token_endpoint, resource=other_url)
                result["other_resource_at_token_endpoint"] = challenge(resp)

                # A token the other server minted for itself, presented here.
                resp = await token_request(f"{origin(other_url)}/oauth/token", resource=other_url)
                result["other_server_issued"] = resp.status_code
                other_token = resp.json().get("access_token") if resp.status_code == 200 else None
                ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
                headers = {
                    "accept": "application/json, text/event-stream",
                    "content-type": "application/json",
                    "mcp-protocol-version": "2025-06-18",
                }
                if other_token:
                    resp = await raw.post(
                        url, json=ping, headers={**headers, "authorization": f"Bearer {other_token}"}
                    )
                    result["token_for_other_resource"] = challenge(resp)

                # An expired token: one minted now, presented once its lifetime is over.
                resp = await token_request(token_endpoint, resource=url)
                minted = resp.json()
                result["short_token_expires_in"] = minted.get("expires_in")
                # From here the SDK's own token expires too (the same lifetime).
                before_expiry = len(trace.exchanges)
                await anyio.sleep(min(float(minted.get("expires_in", ttl)), ttl) + 1.5)
                resp = await raw.post(
                    url, json=ping, headers={**headers, "authorization": f"Bearer {minted['access_token']}"}
                )
                result["expired"] = challenge(resp)

                # The SDK's own token expired too: it fetches a new one by itself.
                # (Its standalone GET stream, ended by the server at the token's expiry,
                # may have been the first to notice.)
                r = await session.call_tool("get_pull_request", {"repo": "acme/api", "number": 42})
                result["after_expiry"] = call_outcome(r)
                result["after_expiry_token_requests"] = sum(
                    1 for e in trace.exchanges[before_expiry:] if e["path"].endswith("/token")
                )

                # End the task. What is left: a token not yet expired, and an assertion
                # not yet expired; neither gets anything any more.
                live = (await token_request(token_endpoint, resource=url)).json()["access_token"]
                leftover = await anyio.to_thread.run_sync(
                    lambda: workload.fetch_jwt_svid(
                        audience={origin(url)}, subject=SpiffeId(task_spiffe_id), timeout=10
                    ).token
                )
                tasks_api.EndTask(pb2.EndTaskRequest(task_id=task_id), metadata=WORKLOAD_HEADER, timeout=10)
                result["stage"] = "ended"
                result["ended_mark"] = len(trace.exchanges)
                # The revocation reaches the server within milliseconds; 10 s is a
                # generous bound.
                refused, deadline = None, time.monotonic() + 10
                while refused is None and time.monotonic() < deadline:
                    resp = await raw.post(
                        url, json=ping, headers={**headers, "authorization": f"Bearer {live}"}
                    )
                    if resp.status_code != 200:
                        refused = challenge(resp)
                    else:
                        await anyio.sleep(0.02)
                result["ended_task_token"] = refused
                resp = await raw.post(
                    token_endpoint,
                    data={
                        "grant_type": "client_credentials",
                        "client_assertion_type": ASSERTION_TYPE,
                        "client_assertion": leftover,
                        "resource": url,
                    },
                )
                result["ended_task_token_endpoint"] = challenge(resp)
                # The SDK's session: its token is refused, it tries to get a new one, and
                # the agent issues no JWT-SVID for an ended task. The SDK raises that
                # from its transport's task group, which ends the session.
                mark = len(trace.exchanges)
                with anyio.fail_after(20):
                    r = await session.call_tool("get_pull_request", {"repo": "acme/api", "number": 42})
                result["ended_task_sdk"] = call_outcome(r)


def main(argv):
    if len(argv) != 7:
        raise SystemExit(__doc__)
    socket, proto_dir, url, server_id, other_url, ttl = argv[1:]
    anyio.run(story, socket, proto_dir, url, server_id, other_url, float(ttl))


if __name__ == "__main__":
    main(sys.argv)
