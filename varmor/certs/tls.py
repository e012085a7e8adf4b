"""A server SSLContext whose certificate can be swapped while serving.

Python's `load_cert_chain` only reads files, and re-loading into the *same* context
affects only handshakes that start afterwards (OpenSSL copies the certificate into each
connection), which is exactly hot reload: established keep-alive connections continue,
new ones get the new certificate, the listening socket never closes. The key goes
through an anonymous memory file (memfd), so key material never touches a disk.
Handshakes run on the event loop thread, so a reload (also on that thread) is atomic
with respect to them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

from varmor.certs import metrics, pki


@contextlib.contextmanager
def _pem_paths(cert_pem: bytes, key_pem: bytes) -> Iterator[tuple[str, str]]:
    if hasattr(os, "memfd_create"):
        fds = [os.memfd_create("varmor-tls", os.MFD_CLOEXEC) for _ in range(2)]
        try:
            for fd, data in zip(fds, (cert_pem, key_pem), strict=True):
                os.write(fd, data)
            yield f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}"
        finally:
            for fd in fds:
                os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="varmor-tls-") as tmp:  # pragma: no cover - non-Linux
        cert, key = Path(tmp, "tls.crt"), Path(tmp, "tls.key")
        cert.write_bytes(cert_pem)
        key.touch(mode=0o600)
        key.write_bytes(key_pem)
        yield str(cert), str(key)


class ReloadableTLS:
    """Owns the server SSLContext handed to aiohttp; `load` swaps the serving pair."""

    def __init__(self) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.fingerprint = ""
        self.reloads = 0

    @property
    def loaded(self) -> bool:
        return bool(self.fingerprint)

    def load(self, pair: pki.KeyPair) -> bool:
        """Serve `pair` from the next handshake on; False if it is already being served.

        Raises ssl.SSLError (context unchanged) when the key does not match the cert.
        """
        fingerprint = hashlib.sha256(pair.cert_pem).hexdigest()
        if fingerprint == self.fingerprint:
            return False
        probe = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with _pem_paths(pair.cert_pem, pair.key_pem) as (cert, key):
            probe.load_cert_chain(cert, key)  # validates the pair before touching the live context
            self.context.load_cert_chain(cert, key)
        self.fingerprint = fingerprint
        self.reloads += 1
        metrics.CERT_EXPIRY.labels("serving").set(pair.not_after.timestamp())
        metrics.CERT_RELOADS.inc()
        return True
