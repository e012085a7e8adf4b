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
import errno
import os
import re
import struct
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
    """(profile name, mode) for every profile in the bytes written to `.replace`, children
    (`parent//child`) included."""
    found = []
    for match in _HEADER.finditer(data):
        pos = match.end()
        if data[pos : pos + 1] != b"\x05":
            continue
        (length,) = struct.unpack_from("<H", data, pos + 1)
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
        found.append((name, "complain" if complain else "enforce"))
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
        self._busy = 0  # sessions opened by a writer and not yet applied

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
            thread = threading.Thread(target=self._serve, args=(name,), name=f"standin{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            fifo = self.dir / thread.name.removeprefix("standin")
            while thread.is_alive():
                try:  # wake a reader blocked in open()
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                    os.close(fd)
                except OSError as exc:
                    if exc.errno not in (errno.ENXIO, errno.ENOENT):
                        raise
                thread.join(0.05)
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
        """Wait until what writers have written is applied. A real kernel applies a write
        before the write returns; here a thread reads it, a moment later."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while quiet < 2 and time.monotonic() < deadline:
            with self._lock:
                quiet = quiet + 1 if self._busy == 0 else 0
            time.sleep(0.01)

    def clear_ops(self) -> None:
        with self._lock:
            self.ops.clear()

    def _publish(self) -> None:
        text = "".join(f"{name} ({mode})\n" for name, mode in sorted(self.loaded.items()))
        tmp = self.dir / ".profiles.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.dir / "profiles")

    def _serve(self, fifo: str) -> None:
        path = self.dir / fifo
        while not self._stop.is_set():
            with open(path, "rb") as handle:
                with self._lock:
                    self._busy += 1
                data = handle.read()
            try:
                if data:
                    self._apply(fifo.removeprefix("."), data)
            finally:
                with self._lock:
                    self._busy -= 1

    def _apply(self, action: str, data: bytes) -> None:
        with self._lock:
            if action == "remove":
                for raw in data.split(b"\x00"):
                    name = raw.decode(errors="replace").strip()
                    if not name:
                        continue
                    self.ops.append(Op("remove", name))
                    for loaded in [n for n in self.loaded if n == name or n.startswith(name + "//")]:
                        del self.loaded[loaded]
            else:
                for name, mode in decode_blob(data):
                    self.ops.append(Op(action, name, mode))
                    self.loaded[name] = mode
            self._publish()


def write_enabled_file(path: Path, value: str = "Y") -> Path:
    """A stand-in for /sys/module/apparmor/parameters/enabled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value + "\n")
    return path
