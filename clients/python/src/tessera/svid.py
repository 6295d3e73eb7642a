"""A task's X.509-SVID as the agent sends it (DER), and its PEM forms on disk."""

from __future__ import annotations

import base64
import dataclasses
import os
import pathlib
import ssl
import tempfile

__all__ = ["Svid", "SvidFiles", "split_der_certificates"]

# A DER chain or bundle far larger than any real one is refused rather than parsed.
_MAX_CERTS = 64


def split_der_certificates(data: bytes) -> list[bytes]:
    """Splits concatenated DER certificates (the Workload API's form for chains and
    bundles). Every length is checked against the input: the bytes come from a
    socket, and a malformed one raises ``ValueError`` instead of being half-used."""
    certs = []
    i = 0
    while i < len(data):
        if len(certs) == _MAX_CERTS:
            raise ValueError(f"more than {_MAX_CERTS} certificates")
        if data[i] != 0x30 or i + 2 > len(data):
            raise ValueError("not a DER certificate (expected a SEQUENCE)")
        first = data[i + 1]
        if first < 0x80:
            length, header = first, 2
        else:
            n = first & 0x7F
            # Long form, at most 4 length bytes, minimally encoded (DER).
            if n == 0 or n > 4 or i + 2 + n > len(data) or data[i + 2] == 0:
                raise ValueError("invalid DER length")
            length = int.from_bytes(data[i + 2 : i + 2 + n], "big")
            if length < 0x80:
                raise ValueError("invalid DER length")
            header = 2 + n
        end = i + header + length
        if end > len(data):
            raise ValueError("truncated DER certificate")
        certs.append(data[i:end])
        i = end
    if not certs:
        raise ValueError("no certificate")
    return certs


def _pem(label: str, der: bytes) -> str:
    b64 = base64.b64encode(der).decode("ascii")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


@dataclasses.dataclass(frozen=True)
class Svid:
    """One issued SVID of a task.

    ``key_der`` is the PKCS#8 private key: it is never part of ``repr()``.
    """

    spiffe_id: str
    chain_der: tuple[bytes, ...]
    key_der: bytes = dataclasses.field(repr=False)
    bundle_der: tuple[bytes, ...]
    hint: str

    @classmethod
    def from_wire(cls, spiffe_id: str, x509_svid: bytes, key: bytes, bundle: bytes, hint: str) -> "Svid":
        if not spiffe_id.startswith("spiffe://"):
            raise ValueError(f"not a SPIFFE ID: {spiffe_id!r}")
        if not key:
            raise ValueError("no private key")
        return cls(
            spiffe_id=spiffe_id,
            chain_der=tuple(split_der_certificates(x509_svid)),
            key_der=key,
            bundle_der=tuple(split_der_certificates(bundle)),
            hint=hint,
        )

    @property
    def trust_domain(self) -> str:
        return self.spiffe_id[len("spiffe://") :].split("/", 1)[0]

    def chain_pem(self) -> str:
        """The certificate chain, leaf first."""
        return "".join(ssl.DER_cert_to_PEM_cert(c) for c in self.chain_der)

    def key_pem(self) -> str:
        return _pem("PRIVATE KEY", self.key_der)

    def bundle_pem(self) -> str:
        """The trust domain's CA certificates."""
        return "".join(ssl.DER_cert_to_PEM_cert(c) for c in self.bundle_der)


class SvidFiles:
    """The current SVID as PEM files in a private directory (mode 0700), rewritten on
    every rotation, deleted when the task ends:

    - ``cert`` (``svid.pem``): the chain, leaf first;
    - ``key`` (``svid.key.pem``, mode 0600): the private key;
    - ``bundle`` (``bundle.pem``): the trust domain's CAs;
    - ``combined`` (``svid.combined.pem``, 0600): chain and key in one file.

    Each file is replaced atomically (write, then rename), but two files cannot be
    swapped together: a reader that must never pair a new certificate with an old key
    reads ``combined`` (Python's ``load_cert_chain`` accepts it as the certfile).
    """

    def __init__(self, directory: str | os.PathLike | None = None):
        if directory is None:
            # A tmpfs private to the user when there is one: the key never touches a disk.
            base = os.environ.get("XDG_RUNTIME_DIR")
            self.dir = pathlib.Path(
                tempfile.mkdtemp(prefix="tessera-task-", dir=base if base and os.path.isdir(base) else None)
            )
            self._owned = True
        else:
            self.dir = pathlib.Path(directory)
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._owned = False
        os.chmod(self.dir, 0o700)
        self.cert = self.dir / "svid.pem"
        self.key = self.dir / "svid.key.pem"
        self.bundle = self.dir / "bundle.pem"
        self.combined = self.dir / "svid.combined.pem"

    def write(self, svid: Svid) -> None:
        chain, key = svid.chain_pem(), svid.key_pem()
        self._replace(self.key, key, 0o600)
        self._replace(self.combined, chain + key, 0o600)
        self._replace(self.bundle, svid.bundle_pem(), 0o644)
        self._replace(self.cert, chain, 0o644)

    def _replace(self, path: pathlib.Path, text: str, mode: int) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        try:
            # mkstemp creates it 0600; loosen only what is public.
            os.fchmod(fd, mode)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def remove(self) -> None:
        """Deletes the key material (and the directory, if this object made it)."""
        for p in (self.key, self.combined, self.cert, self.bundle):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        if self._owned:
            try:
                self.dir.rmdir()
            except OSError:
                pass
