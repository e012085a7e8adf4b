"""A stand-in for the kernel side of `<securityfs>/apparmor`, for tests, dev mode and the
benchmark on hosts whose kernel has no AppArmor.

`.replace`, `.load` and `.remove` are FIFOs served by threads that play the kernel: they
decode what the real `apparmor_parser` writes (compiled policy blobs; NUL-terminated names
for removal), keep the set of loaded profiles, and publish it in `profiles` in the
kernel's format (`name (mode)`). Everything that reached the kernel interface is recorded
in `ops`, so a test can assert on what was loaded, replaced and removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import select
import struct
import termios
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# A policy blob starts every profile with: name "version", u32, name "profile", string.
_HEADER = re.compile(rb"\x04\x08\x00version\x00\x02(?P<version>.{4})\x04\x08\x00profile\x00\x07", re.DOTALL)
_FLAGS = b"\x04\x06\x00flags\x00\x07"
_FORCE_COMPLAIN = 0x800  # set in the version word by `apparmor_parser -C`


@dataclass(frozen=True)
class Op:
    action: str  # "replace" | "load" | "remove"
    name: str
    mode: str = ""


def decode_blob(data: bytes) -> list[tuple[str, str]]:
    """(profile name, mode) for every complete profile header in the bytes written to
    `.replace`, children (`parent//child`) included."""
    return [(name, mode) for name, mode, _ in _headers(data) if name is not None]


def _headers(data: bytes) -> list[tuple[str | None, str, int]]:
    """(name, mode, offset) per header; name None when the header is cut off."""
    found: list[tuple[str | None, str, int]] = []
    for match in _HEADER.finditer(data):
        pos = match.end()
        if len(data) < pos + 3:
            found.append((None, "", match.start()))
            continue
        if data[pos : pos + 1] != b"\x05":
            continue
        (length,) = struct.unpack_from("<H", data, pos + 1)
        if len(data) < pos + 3 + length + 64:  # the name and the flags that follow it
            found.append((None, "", match.start()))
            continue
        name = data[pos + 3 : pos + 3 + length].rstrip(b"\x00").decode(errors="replace")
        (version,) = struct.unpack("<I", match["version"])
        complain = bool(version & _FORCE_COMPLAIN)
        flags_at = data.find(_FLAGS, pos, pos + 3 + length + 64)
        if flags_at >= 0:
            base = flags_at + len(_FLAGS)
            # three u32 fields (type byte 0x02 each): hat, mode, audit
            with contextlib.suppress(struct.error):
                (mode,) = struct.unpack_from("<I", data, base + 6)
                complain = complain or mode == 1
        found.append((name, "complain" if complain else "enforce", match.start()))
    return found


class StandInSecurityfs:
    """`<root>/apparmor/{profiles,.replace,.load,.remove}` backed by threads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "apparmor"
        self.loaded: dict[str, str] = {}
        self.ops: list[Op] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._fds: dict[str, int] = {}

    # -- setup -------------------------------------------------------------------------
    def start(self, preloaded: dict[str, str] | None = None) -> StandInSecurityfs:
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in (".replace", ".load", ".remove"):
            path = self.dir / name
            if path.exists() or path.is_symlink():
                path.unlink()
            os.mkfifo(path)
        self.loaded = dict(preloaded or {})
        self._publish()
        for name in (".replace", ".load", ".remove"):
            self._fds[name] = os.open(self.dir / name, os.O_RDWR | os.O_NONBLOCK)
            thread = threading.Thread(target=self._serve, args=(name,), name=f"standin{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.write(fd, b"\x00")  # wake the poller (a NUL is no record)
        for thread in self._threads:
            thread.join(5)
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._threads.clear()

    def __enter__(self) -> StandInSecurityfs:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- kernel emulation --------------------------------------------------------------
    def set_loaded(self, loaded: dict[str, str]) -> None:
        """Replace the kernel state (e.g. to simulate a reboot, or profiles left over)."""
        with self._lock:
            self.loaded = dict(loaded)
            self._publish()

    def top_level(self) -> dict[str, str]:
        with self._lock:
            return {n: m for n, m in self.loaded.items() if "//" not in n}

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until everything written so far is applied. A real kernel applies a write
        before the write returns; here a thread reads it a moment later."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not any(_pending_bytes(fd) for fd in self._fds.values()):
                    return
            time.sleep(0.005)

    def clear_ops(self) -> None:
        with self._lock:
            self.ops.clear()

    def _publish(self) -> None:
        text = "".join(f"{name} ({mode})\n" for name, mode in sorted(self.loaded.items()))
        tmp = self.dir / ".profiles.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.dir / "profiles")

    def _serve(self, fifo: str) -> None:
        """Read the FIFO as one stream. It is held open read-write, so it never reaches
        end-of-file between writers: a writer that opens just as another closes cannot
        have its data dropped with a closing reader. Reading and applying happen under
        the lock, which is what makes settle() exact."""
        fd = self._fds[fifo]
        action = fifo.removeprefix(".")
        pending = b""
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not self._stop.is_set():
            poller.poll()
            with self._lock:
                available = _pending_bytes(fd)
                if not available:
                    continue
                pending = self._consume(action, pending + os.read(fd, available))

    def _consume(self, action: str, data: bytes) -> bytes:
        """Apply every complete record in `data`; return the incomplete tail."""
        if action == "remove":
            *names, tail = data.split(b"\x00")
            self._apply_removals(names)
            return tail
        keep_from = max(0, len(data) - 4096)  # enough to complete a header split across reads
        complete = []
        for name, mode, offset in _headers(data):
            if name is None:
                keep_from = min(keep_from, offset)
                break
            complete.append((name, mode))
            keep_from = max(keep_from, offset + 1)
        if complete:
            self._apply_found(action, complete)
        return data[keep_from:]

    def _apply_found(self, action: str, found: list[tuple[str, str]]) -> None:
        for name, mode in found:
            self.ops.append(Op(action, name, mode))
            self.loaded[name] = mode
        self._publish()

    def _apply_removals(self, names: list[bytes]) -> None:
        for raw in names:
            name = raw.decode(errors="replace").strip()
            if not name:
                continue
            self.ops.append(Op("remove", name))
            for loaded in [n for n in self.loaded if n == name or n.startswith(name + "//")]:
                del self.loaded[loaded]
        self._publish()


def _pending_bytes(fd: int) -> int:
    """Bytes waiting in a pipe (FIONREAD)."""
    buf = fcntl.ioctl(fd, termios.FIONREAD, b"\x00\x00\x00\x00")
    (count,) = struct.unpack("i", buf)
    return int(count)


def write_enabled_file(path: Path, value: str = "Y") -> Path:
    """A stand-in for /sys/module/apparmor/parameters/enabled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    return path
