"""A task: BeginTask on enter, its SVID followed through rotations, EndTask on exit."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import logging
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterable

import grpc

from . import errors
from .svid import Svid, SvidFiles
from .tls import TaskSSLContext, server_spiffe_id

__all__ = ["Task", "TaskInfo", "DEFAULT_SOCKET"]

log = logging.getLogger("tessera")

DEFAULT_SOCKET = "/run/tessera/workload.sock"
# Every Workload API call carries this header (the spec's guard against SSRF).
_HEADER = (("workload.spiffe.io", "true"),)


def _proto():
    # Generated at build time (setup.py); imported late so that importing `tessera`
    # for its errors or types never needs grpc's C core to load.
    from ._proto import tasks_pb2, tasks_pb2_grpc, workload_pb2, workload_pb2_grpc

    return tasks_pb2, tasks_pb2_grpc, workload_pb2, workload_pb2_grpc


def socket_path(socket: str | os.PathLike | None) -> str:
    """The workload socket: ``socket``, else ``SPIFFE_ENDPOINT_SOCKET``, else the
    default; accepts a path, ``unix:PATH`` or ``unix:///PATH``."""
    s = os.fspath(socket) if socket is not None else os.environ.get("SPIFFE_ENDPOINT_SOCKET") or DEFAULT_SOCKET
    for prefix in ("unix://", "unix:"):
        if s.startswith(prefix):
            s = s[len(prefix) :]
            break
    if not s.startswith("/"):
        raise ValueError(f"the workload socket must be an absolute unix socket path, got {s!r}")
    return s


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """What the agent recorded for a task (the Tasks API's ``Task``)."""

    id: str
    spiffe_id: str
    client: str
    subject: str
    server: str
    scopes: tuple[str, ...]
    purpose: str
    consent_id: str
    begun_at: datetime.datetime
    deadline: datetime.datetime
    ended_at: datetime.datetime | None
    end_reason: str

    @classmethod
    def from_proto(cls, t) -> "TaskInfo":
        def ts(s: int) -> datetime.datetime:
            return datetime.datetime.fromtimestamp(s, datetime.timezone.utc)

        return cls(
            id=t.id,
            spiffe_id=t.spiffe_id,
            client=t.client,
            subject=t.subject,
            server=t.server,
            scopes=tuple(t.scopes),
            purpose=t.purpose,
            consent_id=t.consent_id,
            begun_at=ts(t.begun_at_unix),
            deadline=ts(t.deadline_unix),
            ended_at=ts(t.ended_at_unix) if t.ended_at_unix else None,
            end_reason=t.end_reason,
        )


def _typed(e: grpc.RpcError, scopes: Iterable[str] | None = None) -> errors.TesseraError:
    code = e.code() if hasattr(e, "code") else None
    name = code.name if code is not None else "UNKNOWN"
    details = (e.details() if hasattr(e, "details") else None) or str(e)
    return errors.from_status(name, details, scopes=list(scopes or []))


class Task:
    """One task of this agent runtime, for one MCP server and one human subject.

    ``with Task(...) as task:`` (or ``async with``) begins it; leaving the block ends
    it, however it is left: normally, by an exception, or by SIGTERM/SIGINT (see
    ``handle_signals``). Inside, the task's SVID is available as:

    - :meth:`ssl_context`: an ``ssl.SSLContext`` presenting the current SVID and
      accepting only the task's server by SPIFFE ID (rotations followed);
    - :attr:`files`: PEM files, rewritten on every rotation;
    - :meth:`http_client` / :meth:`mcp`: an httpx2 client and an MCP SDK client
      over that context.

    Arguments: ``server`` (its name, e.g. ``"github"``, or full SPIFFE ID),
    ``subject`` (the human the task acts for), ``scopes`` (e.g.
    ``["github/tool/get_pull_request"]``; a subset of a live consent), ``purpose``,
    ``lifetime`` (seconds or a ``timedelta``; 0 = the agent's default), ``socket``
    (default ``SPIFFE_ENDPOINT_SOCKET``, then ``/run/tessera/workload.sock``),
    ``client`` (which client identity, when the process has several),
    ``svid_dir`` (where :attr:`files` go; default a fresh private directory),
    ``handle_signals`` (turn SIGTERM into ``SystemExit(143)`` in the main thread
    while the task is open, so that the task is ended before the process exits;
    SIGINT already raises ``KeyboardInterrupt``), ``timeout`` (per agent call).

    Should the process die without running any of this (SIGKILL), the agent still
    ends the task: it is bound to this process and ends when the process exits.
    """

    def __init__(
        self,
        server: str,
        subject: str,
        scopes: Iterable[str],
        purpose: str = "",
        lifetime: float | datetime.timedelta = 0,
        *,
        socket: str | os.PathLike | None = None,
        client: str = "",
        svid_dir: str | os.PathLike | None = None,
        handle_signals: bool = True,
        timeout: float = 10.0,
    ):
        if isinstance(lifetime, datetime.timedelta):
            lifetime = lifetime.total_seconds()
        if lifetime < 0 or lifetime >= 2**32:
            raise ValueError(f"lifetime out of range: {lifetime}")
        self.server = server
        self.subject = subject
        self.scopes = list(scopes)
        self.purpose = purpose
        self.lifetime = int(lifetime)
        self.socket = socket_path(socket)
        self.client = client
        self.timeout = timeout
        self._svid_dir = svid_dir
        self._handle_signals = handle_signals

        self._lock = threading.Lock()
        self._info: TaskInfo | None = None
        self._svid: Svid | None = None
        self._files: SvidFiles | None = None
        self._ssl: TaskSSLContext | None = None
        self._channel: grpc.Channel | None = None
        self._stream = None
        self._watcher: threading.Thread | None = None
        self._closing = threading.Event()
        self._ended = threading.Event()
        self._end_reason = ""
        self._rotations = 0
        self._rotated = threading.Condition(self._lock)
        self._callbacks: list[Callable[[Svid], None]] = []
        self._signals_installed = False

    # --- lifecycle -----------------------------------------------------------------

    def begin(self) -> "Task":
        """BeginTask. Raises :class:`~tessera.errors.ConsentRequired`,
        :class:`~tessera.errors.NotAttested`, :class:`~tessera.errors.AgentUnreachable`,
        :class:`~tessera.errors.TaskRefused` with the agent's message."""
        if self._info is not None:
            raise RuntimeError("this task has already begun")
        tasks_pb2, tasks_grpc, _, _ = _proto()
        if not os.path.exists(self.socket):
            raise errors.AgentUnreachable(f"no Tessera agent socket at {self.socket}")
        self._channel = grpc.insecure_channel(f"unix:{self.socket}")
        try:
            resp = tasks_grpc.TasksStub(self._channel).BeginTask(
                tasks_pb2.BeginTaskRequest(
                    purpose=self.purpose,
                    subject=self.subject,
                    server=self.server,
                    scopes=self.scopes,
                    lifetime_secs=self.lifetime,
                    client=self.client,
                ),
                metadata=_HEADER,
                timeout=self.timeout,
            )
        except grpc.RpcError as e:
            self._channel.close()
            raise _typed(e, self.scopes) from None
        try:
            svid = Svid.from_wire(
                resp.svid.spiffe_id,
                resp.svid.x509_svid,
                resp.svid.x509_svid_key,
                resp.svid.bundle,
                resp.svid.hint,
            )
            if svid.spiffe_id != resp.task.spiffe_id or svid.hint != resp.task.id:
                raise ValueError("BeginTask answered with another task's SVID")
            self._info = TaskInfo.from_proto(resp.task)
            self._svid = svid
            self._files = SvidFiles(self._svid_dir)
            self._files.write(svid)
        except BaseException:
            # Begun but unusable: end it now rather than leave it to the process's exit.
            self._info = self._info or TaskInfo.from_proto(resp.task)
            self._end_quietly()
            raise
        _live.add(self)
        self._watcher = threading.Thread(target=self._watch, name=f"tessera-task-{self.id}", daemon=True)
        self._watcher.start()
        return self

    def end(self) -> TaskInfo | None:
        """EndTask: the SVID is revoked at once and the files are deleted. Idempotent.
        Returns the ended task as the agent recorded it (None if it never began)."""
        if self._info is None:
            return None
        with self._lock:
            if self._closing.is_set():
                return self._info
            self._closing.set()
        tasks_pb2, tasks_grpc, _, _ = _proto()
        _signals.ending += 1
        try:
            resp = tasks_grpc.TasksStub(self._channel).EndTask(
                tasks_pb2.EndTaskRequest(task_id=self.id), metadata=_HEADER, timeout=self.timeout
            )
            self._info = TaskInfo.from_proto(resp.task)
            self._end_reason = self._info.end_reason
        except grpc.RpcError as e:
            raise _typed(e) from None
        finally:
            self._release()
            _signals.ending -= 1
        _signals.deliver_deferred()
        return self._info

    def _end_quietly(self) -> None:
        try:
            self.end()
        except errors.TesseraError as e:
            # The process's exit still ends it; say so instead of hiding the failure.
            log.warning("tessera: EndTask for %s failed (%s); the agent ends it when this process exits", self.id, e)

    def _release(self) -> None:
        self._ended.set()
        _live.discard(self)
        if self._stream is not None:
            self._stream.cancel()
        if self._files is not None:
            self._files.remove()
        if self._channel is not None:
            self._channel.close()
        with self._lock:
            self._rotated.notify_all()

    def __enter__(self) -> "Task":
        self._install_signals()
        try:
            return self.begin()
        except BaseException:
            self._restore_signals()
            raise

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.end()
            else:
                # Never mask the exception that is leaving the block.
                self._end_quietly()
        finally:
            self._restore_signals()

    async def __aenter__(self) -> "Task":
        import asyncio

        self._install_signals()
        try:
            return await asyncio.to_thread(self.begin)
        except BaseException:
            self._restore_signals()
            raise

    async def __aexit__(self, exc_type, exc, tb) -> None:
        # Blocking on purpose: this also runs while the coroutine is being cancelled
        # (asyncio.run's shutdown after SIGTERM), where an await could be cut short.
        # EndTask is one local unix-socket call.
        self.__exit__(exc_type, exc, tb)

    # --- the task and its SVID ---------------------------------------------------

    @property
    def info(self) -> TaskInfo:
        if self._info is None:
            raise RuntimeError("the task has not begun")
        return self._info

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def spiffe_id(self) -> str:
        return self.info.spiffe_id

    @property
    def svid(self) -> Svid:
        """The current SVID (the latest rotation)."""
        if self._svid is None:
            raise RuntimeError("the task has not begun")
        return self._svid

    @property
    def files(self) -> SvidFiles:
        if self._files is None:
            raise RuntimeError("the task has not begun")
        return self._files

    @property
    def server_id(self) -> str:
        """The SPIFFE ID the task's MCP server must present."""
        return server_spiffe_id(self.svid.trust_domain, self.info.server)

    @property
    def rotations(self) -> int:
        """How many new SVIDs were received after the first."""
        return self._rotations

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    @property
    def end_reason(self) -> str:
        """Why the task ended ("ended", "deadline", "consent_withdrawn", "revoked"...),
        or "" while it lives."""
        return self._end_reason

    def on_rotate(self, callback: Callable[[Svid], None]) -> None:
        """Calls ``callback(svid)`` from the watcher thread on every new SVID (after
        :attr:`files` and :meth:`ssl_context` hold it)."""
        self._callbacks.append(callback)

    def wait_for_rotation(self, after: int | None = None, timeout: float | None = None) -> bool:
        """Blocks until more than ``after`` rotations (default: the current count) have
        happened; False on timeout or when the task ends first."""
        with self._lock:
            target = (self._rotations if after is None else after) + 1
            return self._rotated.wait_for(lambda: self._rotations >= target or self.ended, timeout) and (
                self._rotations >= target
            )

    def ssl_context(self) -> TaskSSLContext:
        """The task's client ``SSLContext`` (one per task, updated in place on rotation)."""
        with self._lock:
            if self._ssl is None:
                self._ssl = TaskSSLContext.for_task(self.svid, self.files, self.info.server)
            return self._ssl

    def http_client(self, *, http2: bool | None = None, **kwargs):
        """An ``httpx2.AsyncClient`` (the MCP SDK's HTTP client) presenting the task's
        SVID, with the MCP SDK's default timeouts; keyword arguments go to the client.
        Use it as an async context manager.

        After a rotation its requests go out on new connections, which present the
        new SVID: the server checks expiry on every request, so a connection kept
        alive with the old certificate would be refused once that certificate expires.

        HTTP/2 when the ``h2`` package is installed (``tessera-client[mcp]`` brings it):
        the MCP SDK closes each response stream as soon as it has its answer, which over
        HTTP/1.1 discards the connection, so every request would pay a new TLS handshake.
        """
        import httpx2

        from ._http import RotatingTransport

        if http2 is None:
            import importlib.util

            http2 = importlib.util.find_spec("h2") is not None

        kwargs.setdefault("timeout", httpx2.Timeout(30.0, read=300.0))
        # Proxies from the environment would get transports of their own, without the
        # task's SVID or the SPIFFE check: every request goes through the task's.
        kwargs.setdefault("trust_env", False)
        return httpx2.AsyncClient(transport=RotatingTransport(self, http2=http2), **kwargs)

    @contextlib.asynccontextmanager
    async def mcp(self, url: str, **client_kwargs):
        """An initialized MCP SDK ``Client`` for the task's server at ``url``, over
        streamable HTTP with mTLS: ``async with task.mcp(url) as client: ...``.
        Keyword arguments go to ``mcp.Client``."""
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        async with self.http_client() as http:
            async with Client(streamable_http_client(url, http_client=http), **client_kwargs) as client:
                yield client

    # --- rotation ------------------------------------------------------------------

    def _watch(self) -> None:
        """Follows the task's SVID on the process's FetchX509SVID stream (hint = task
        id), reconnecting with backoff, until the task ends."""
        _, _, workload_pb2, workload_grpc = _proto()
        stub = workload_grpc.SpiffeWorkloadAPIStub(self._channel)
        backoff = 0.1
        while not self._closing.is_set():
            try:
                self._stream = stub.FetchX509SVID(workload_pb2.X509SVIDRequest(), metadata=_HEADER)
                if self._closing.is_set():
                    self._stream.cancel()
                for resp in self._stream:
                    backoff = 0.1
                    if self._closing.is_set():
                        return
                    mine = [s for s in resp.svids if s.hint == self.id]
                    if not mine:
                        if self._confirm_ended_elsewhere():
                            return
                        continue
                    self._maybe_rotate(mine[0])
            except grpc.RpcError as e:
                if self._closing.is_set():
                    return
                log.info("tessera: FetchX509SVID for task %s: %s; retrying", self.id, _typed(e))
            except Exception:  # a malformed message: keep the last good SVID
                log.exception("tessera: unusable FetchX509SVID message for task %s", self.id)
            if self._closing.wait(backoff):
                return
            backoff = min(backoff * 2, 5.0)

    def _maybe_rotate(self, s) -> None:
        if self._svid is not None and b"".join(self._svid.chain_der) == s.x509_svid:
            return
        svid = Svid.from_wire(s.spiffe_id, s.x509_svid, s.x509_svid_key, s.bundle, s.hint)
        if svid.spiffe_id != self.spiffe_id:
            raise ValueError(f"SVID with hint {self.id} names {svid.spiffe_id}")
        with self._lock:
            if self._closing.is_set():
                return
            self._files.write(svid)
            if self._ssl is not None:
                self._ssl.update(svid, self._files)
            self._svid = svid
            self._rotations += 1
            self._rotated.notify_all()
        for cb in list(self._callbacks):
            try:
                cb(svid)
            except Exception:
                log.exception("tessera: on_rotate callback failed")

    def _confirm_ended_elsewhere(self) -> bool:
        """The stream no longer carries the task's SVID. Every message holds the full
        state, so the agent has dropped it: the task ended (deadline, consent withdrawn,
        revoked). Asks the agent why; it may not have recorded the end yet (it refuses
        first, then persists), so it asks a few times before settling for "unknown"."""
        tasks_pb2, tasks_grpc, _, _ = _proto()
        ended = None
        for attempt in range(50):
            if attempt and self._closing.wait(0.1):
                return True
            try:
                resp = tasks_grpc.TasksStub(self._channel).ListTasks(
                    tasks_pb2.ListTasksRequest(include_ended=True), metadata=_HEADER, timeout=self.timeout
                )
            except grpc.RpcError:
                continue
            ended = next((t for t in resp.tasks if t.id == self.id and t.ended_at_unix), None)
            if ended is not None:
                break
        with self._lock:
            if self._closing.is_set():
                return True
            if ended is not None:
                self._info = TaskInfo.from_proto(ended)
            else:
                self._info = dataclasses.replace(
                    self.info, ended_at=datetime.datetime.now(datetime.timezone.utc), end_reason="unknown"
                )
            self._end_reason = self._info.end_reason
            self._closing.set()
        log.warning("tessera: task %s ended: %s", self.id, self._end_reason)
        self._release()
        return True

    # --- signals -------------------------------------------------------------------

    def _install_signals(self) -> None:
        if not self._handle_signals or threading.current_thread() is not threading.main_thread():
            return
        _signals.acquire()
        self._signals_installed = True

    def _restore_signals(self) -> None:
        if self._signals_installed:
            self._signals_installed = False
            _signals.release()

    def __repr__(self) -> str:
        state = "ended" if self.ended else ("live" if self._info else "not begun")
        ident = self._info.spiffe_id if self._info else f"server={self.server!r}"
        return f"<tessera.Task {ident} {state}>"


class _SignalGuard:
    """While any task is open in the main thread, SIGTERM raises SystemExit(143)
    there (its default action would kill the process without unwinding, so no
    ``with`` block could end its task). Handlers a program installed itself are left
    alone: it then decides what SIGTERM means."""

    def __init__(self):
        self._depth = 0
        self._previous = None
        self._fired = False
        # While an EndTask is under way the exit is held back until it is done, so a
        # signal cannot cut the very call it is meant to make.
        self.ending = 0
        self._deferred: int | None = None

    def acquire(self) -> None:
        if self._depth == 0:
            # Only the default action is replaced: a handler of the program's own, or
            # one installed outside Python (getsignal answers None), is left alone.
            current = signal.getsignal(signal.SIGTERM)
            if current == signal.SIG_DFL:
                self._previous = current
                self._fired = False
                signal.signal(signal.SIGTERM, self._handler)
        self._depth += 1

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _handler(self, signum, frame) -> None:
        # Once: a second SIGTERM while the tasks are being ended must not cut that short.
        if self._fired:
            return
        self._fired = True
        if self.ending:
            self._deferred = signum
            return
        raise SystemExit(128 + signum)

    def deliver_deferred(self) -> None:
        if self._deferred is not None and not self.ending:
            signum, self._deferred = self._deferred, None
            raise SystemExit(128 + signum)


_signals = _SignalGuard()
_live: "weakref.WeakSet[Task]" = weakref.WeakSet()


@atexit.register
def _end_live_tasks() -> None:
    # Tasks begun with begin() and never ended: end them on a normal interpreter exit
    # (the agent would end them when the process exits, but as "process_exited").
    for task in list(_live):
        task._end_quietly()
