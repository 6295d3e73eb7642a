"""An ``ssl.SSLContext`` that presents a task's current SVID and accepts only the
server the task is for, by SPIFFE ID.

MCP servers behind Tessera present an X.509-SVID such as ``spiffe://acme.corp/mcp/github``
with no DNS name, so hostname checking cannot apply. Verification is instead:

1. the server's chain must verify against the trust domain's bundle from the agent
   (OpenSSL, ``CERT_REQUIRED``, with the TLS server purpose);
2. once the handshake completes, and before the caller can send a byte, its leaf
   must carry exactly one URI SAN, equal to the expected SPIFFE ID; otherwise the
   handshake raises :class:`tessera.errors.ServerIdentityMismatch`
   (an ``ssl.SSLCertVerificationError``) and the connection is abandoned.

Step 2 runs in ``do_handshake`` of the ``SSLObject``/``SSLSocket`` classes this context
creates, so it covers every client that wraps through the context: asyncio and anyio
(httpx, httpx2, the MCP SDK), trio, and blocking sockets.

Rotation: the agent rotates task SVIDs at half life. :meth:`TaskSSLContext.update`
loads the new certificate and key into this same context, so clients that hold it
(an httpx client's pool) present the new SVID on their next new connection; open
connections keep the certificate they were made with, which stays valid until its
own expiry. OpenSSL copies the certificate and key into each connection when the
connection object is created, so creation and update take one lock: a connection
never pairs a new certificate with an old key.

Bundle changes add CAs; OpenSSL has no way to drop one from a context, so a CA
removed from the bundle stays trusted by this context until the task ends (tasks
are short-lived; the CA's own certificates still expire).
"""

from __future__ import annotations

import ssl
import threading

from .errors import ServerIdentityMismatch
from .svid import Svid, SvidFiles

__all__ = ["TaskSSLContext", "server_spiffe_id"]


def server_spiffe_id(trust_domain: str, server: str) -> str:
    """The SPIFFE ID an MCP server named ``server`` must present: the name as given
    to BeginTask (``github``) or already a full ID."""
    if server.startswith("spiffe://"):
        return server
    return f"spiffe://{trust_domain}/mcp/{server}"


def _check_peer(sslobj) -> None:
    ctx = sslobj.context
    expected = getattr(ctx, "expected_server_id", None)
    if expected is None:
        return
    cert = sslobj.getpeercert()
    uris = [v for (k, v) in (cert or {}).get("subjectAltName", ()) if k == "URI"]
    if uris != [expected]:
        raise ServerIdentityMismatch(
            f"server presented {uris or 'no URI SAN'}, expected exactly {expected}",
            expected=expected,
            presented=uris,
        )


class _CheckedSSLObject(ssl.SSLObject):
    def do_handshake(self):
        super().do_handshake()
        _check_peer(self)


class _CheckedSSLSocket(ssl.SSLSocket):
    def do_handshake(self, block=False):
        super().do_handshake(block)
        _check_peer(self)


class TaskSSLContext(ssl.SSLContext):
    """A client ``SSLContext`` for one task. Build it with :meth:`for_task`."""

    sslobject_class = _CheckedSSLObject
    sslsocket_class = _CheckedSSLSocket

    expected_server_id: str

    @classmethod
    def for_task(cls, svid: Svid, files: SvidFiles, server: str) -> "TaskSSLContext":
        ctx = cls(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # The peer is checked by SPIFFE ID after the handshake (see the module doc);
        # the chain itself is still verified.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.expected_server_id = server_spiffe_id(svid.trust_domain, server)
        ctx._tessera_lock = threading.Lock()
        ctx.update(svid, files)
        return ctx

    def update(self, svid: Svid, files: SvidFiles) -> None:
        """Presents ``svid`` on every connection created from now on (``files`` must
        already hold it)."""
        with self._tessera_lock:
            self.load_verify_locations(cadata=svid.bundle_pem())
            # The combined file: certificate and key from the same rotation.
            self.load_cert_chain(files.combined)

    def __setattr__(self, name, value):
        # Turning hostname checks back on cannot work (the server has no DNS name), and
        # turning verification off must not happen by accident on a task's context.
        if name == "check_hostname" and value:
            raise ValueError("a task's SSLContext checks the server's SPIFFE ID, not a hostname")
        if name == "verify_mode" and value != ssl.CERT_REQUIRED and hasattr(self, "expected_server_id"):
            raise ValueError("a task's SSLContext always verifies the server")
        super().__setattr__(name, value)

    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True,
                    suppress_ragged_eofs=True, server_hostname=None, session=None):
        # SSLSocket handshakes inside its constructor; only the construction (where
        # OpenSSL copies certificate and key) happens under the lock.
        with self._tessera_lock:
            s = super().wrap_socket(sock, server_side, False, suppress_ragged_eofs,
                                    server_hostname, session)
        s._do_handshake_on_connect = do_handshake_on_connect
        if do_handshake_on_connect:
            try:
                s.getpeername()
            except OSError:
                return s  # not connected yet: connect() handshakes
            if s.gettimeout() == 0.0:
                s.close()
                raise ValueError("do_handshake_on_connect should not be specified for non-blocking sockets")
            try:
                s.do_handshake()
            except BaseException:
                s.close()
                raise
        return s

    def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None, session=None):
        with self._tessera_lock:
            return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
