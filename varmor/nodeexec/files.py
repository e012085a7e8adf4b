"""The profile directory on the host: profile files (so they survive a reboot), the
node-local include, and the host's disk devices. `ProfileDir` has the blocking helpers;
`Writes` runs them from the event loop and keeps `DiskHealth`: a full or read-only
profile dir is recorded and reported, never raised into the agent's loops.

Only names that look like varmor's (`varmor-*`, a DNS-label-like name) are ever written or
deleted, so the agent cannot touch the host's own profiles through a crafted name.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from varmor import api
from varmor.clock import Clock, rfc3339
from varmor.kube.backoff import Backoff
from varmor.profile import NODE_LOCAL_INCLUDE, DiskDeviceError, node_local_include

DEFAULT_PROFILE_DIR = Path("/etc/apparmor.d")
DEFAULT_PARTITIONS = Path("/proc/partitions")
FORCE_COMPLAIN = "force-complain"
LOADS = "varmor/loads"  # what the parser loads from: one file per profile version
PARSER_CACHE = "varmor/cache"  # apparmor_parser's compiled-policy cache for those files
JSON = dict[str, Any]
log = logging.getLogger(__name__)
_VARMOR_NAME = re.compile(r"^varmor-[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def is_varmor_name(name: str) -> bool:
    """A profile name varmor owns and may load, replace, unload and delete."""
    return len(name) <= api.MAX_PROFILE_NAME and bool(_VARMOR_NAME.match(name))


def parse_partitions(text: str) -> list[str]:
    """Device names from /proc/partitions (`major minor #blocks name` rows, after a header)."""
    devices = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[0].isdigit() and fields[1].isdigit():
            devices.append(fields[3])
    return sorted(set(devices))


def atomic_write(path: Path, data: str) -> bool:
    """Write `data` to `path` via a temporary file and rename. Returns False (and writes
    nothing) when the file already holds exactly `data`."""
    try:
        if path.read_text() == data:
            return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True


class ProfileDir:
    """Where profile files live (default the host's /etc/apparmor.d)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # The parser cache lives under a key naming what produced it (parser and varmor
        # versions): the includes it compiled in (the image's abstractions) keep their
        # package mtimes across upgrades, so the parser could not tell a cache is stale.
        self.cache_key = "default"

    def path(self, name: str) -> Path:
        if not is_varmor_name(name):
            raise ValueError(f"refusing non-varmor profile name {name!r}")
        return self.root / name

    def write(self, name: str, text: str) -> Path:
        path = self.path(name)
        atomic_write(path, text)
        return path

    def remove(self, name: str, sha256: str | None = None) -> None:
        """Delete a profile's file and marker, and with `sha256` that version's load file."""
        self.path(name).unlink(missing_ok=True)
        self.set_force_complain(name, False)
        if sha256 is not None:
            self.forget_version(name, sha256)

    def set_force_complain(self, name: str, complain: bool) -> None:
        """Mark a profile for complain mode in `<root>/force-complain/`, which
        apparmor_parser honours when it loads from its base dir: after a reboot the host's
        own AppArmor service then loads complain-mode profiles in complain mode, not enforce."""
        marker = self.root / FORCE_COMPLAIN / self.path(name).name
        if complain:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        else:
            marker.unlink(missing_ok=True)

    def complain_markers(self) -> list[str]:
        directory = self.root / FORCE_COMPLAIN
        if not directory.is_dir():
            return []
        return sorted(p.name for p in directory.iterdir() if is_varmor_name(p.name))

    def names(self) -> list[str]:
        """varmor profile files present (anything else in the directory is not ours)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_file() and is_varmor_name(p.name))

    def write_node_local(self, partitions: Path) -> str:
        """Write `<root>/varmor/node-local` from the host's disks; returns its text."""
        found = parse_partitions(partitions.read_text()) if partitions.exists() else []
        devices = []
        for device in found:
            try:
                node_local_include([device])
            except DiskDeviceError:
                continue  # a name that could change the include's meaning is left out
            devices.append(device)
        text = node_local_include(devices)
        atomic_write(self.root / NODE_LOCAL_INCLUDE, text)
        return text

    def remove_all(self, names: Iterable[str]) -> None:
        for name in names:
            self.remove(name)

    # -- one profile's files around a load ------------------------------------------
    def stage(self, name: str, staged: Path, text: str, complain: bool) -> None:
        """Before a load: its load file (unchanged text keeps its mtime, so the parser
        cache stays valid), and the force-complain marker first: when the profile dir is
        the parser's base dir (agent on the host), a stale marker would turn an enforce
        load into complain."""
        atomic_write(staged, text)
        self.set_force_complain(name, complain)

    def keep(self, name: str, text: str, replaced: str | None) -> None:
        """After a load: the profile dir holds what the kernel has (for the host's own boot
        loading), and the replaced version's (sha256) load file and cache entry go."""
        self.write(name, text)
        if replaced is not None:
            self.forget_version(name, replaced)

    def unstage(self, name: str, staged: Path, loaded_mode: str | None) -> None:
        """After a failed load: the profile dir goes back to what the kernel has (the
        loaded version's mode, or nothing)."""
        staged.unlink(missing_ok=True)
        if loaded_mode is not None:
            self.set_force_complain(name, loaded_mode == "complain")
        elif not self.path(name).exists():
            self.set_force_complain(name, False)

    def stale(self, wanted: Iterable[str]) -> list[str]:
        """varmor profile files and complain markers of names not in `wanted`."""
        keep = set(wanted)
        return sorted({n for n in [*self.names(), *self.complain_markers()] if n not in keep})

    # -- load files and the parser cache --------------------------------------------
    # The parser loads each profile from `loads/<name>@<sha256>`, a file named by
    # its content, and keeps the compiled policy in `cache/` under that file name. A cache
    # entry therefore only ever holds the compilation of that exact text (the parser
    # itself notices changed includes by their mtimes), so a restart or a reboot loads
    # unchanged profiles from the cache in milliseconds instead of recompiling them, and
    # no cached binary can stand in for other content.

    def load_path(self, name: str, sha256: str) -> Path:
        return self.root / LOADS / f"{self.path(name).name}@{sha256}"

    @property
    def cache_root(self) -> Path:
        return self.root / PARSER_CACHE

    @property
    def cache_dir(self) -> Path:
        return self.cache_root / self.cache_key

    def prune_loads(self, keep: Iterable[Path]) -> None:
        """Delete load files and cache entries other than `keep`'s, and caches of other keys."""
        kept = {p.name for p in keep}
        loads = self.root / LOADS
        if loads.is_dir():
            for path in loads.iterdir():
                if "@" in path.name and path.name not in kept:
                    path.unlink(missing_ok=True)
        if self.cache_root.is_dir():
            for other in self.cache_root.iterdir():
                if other.is_dir() and other != self.cache_dir:
                    shutil.rmtree(other, ignore_errors=True)
        if self.cache_dir.is_dir():
            for features in self.cache_dir.iterdir():
                if features.is_dir():
                    for entry in features.iterdir():
                        if "@" in entry.name and entry.name not in kept:
                            entry.unlink(missing_ok=True)

    def forget_version(self, name: str, sha256: str) -> None:
        """Delete one version's load file and cache entries (when another replaced it)."""
        load = self.load_path(name, sha256)
        for path in [load, *self.cache_dir.glob(f"*/{load.name}")]:
            path.unlink(missing_ok=True)


# -- the profile dir ---------------------------------------------------------------------
PROFILE_DIR_WRITABLE = "ProfileDirWritable"
_DISK_REASONS = {
    errno.ENOSPC: "NoSpace",
    errno.EDQUOT: "NoSpace",
    errno.EROFS: "ReadOnly",
    errno.EACCES: "PermissionDenied",
    errno.EPERM: "PermissionDenied",
}
# What a program (the parser, writing its cache) says when a write was refused -> reason.
DISK_TEXTS = {
    "No space left on device": "NoSpace",
    "Disk quota exceeded": "NoSpace",
    "Read-only file system": "ReadOnly",
}


def disk_error(text: str) -> bool:
    return any(marker in text for marker in DISK_TEXTS)


def disk_reason(error: OSError | str) -> str:
    """A condition reason for a failed write: an OSError, or a parser's message about one."""
    if isinstance(error, OSError):
        return _DISK_REASONS.get(error.errno or 0, "WriteFailed")
    return next((reason for text, reason in DISK_TEXTS.items() if text in error), "WriteFailed")


@dataclass
class DiskHealth:
    """Whether the profile dir takes writes, as the agent's last writes found: unwritable
    from a failed write until every write that failed since (keyed by what it was for: a
    profile name, or the node-local include) succeeded. The ArmorNode condition appears at
    the first failure and then stays, True once writes work again (with the time)."""

    root: str
    pending: dict[str, str] = field(default_factory=dict)  # key -> what the failed write said
    condition: JSON | None = None

    @property
    def writable(self) -> bool:
        return not self.pending

    def failed(self, key: str, error: OSError | str, now: str) -> None:
        detail = (error.strerror or str(error)) if isinstance(error, OSError) else error
        self.pending[key] = detail
        message = (
            f"writing to the profile directory {self.root} failed ({detail}); profiles that need a write "
            "wait in failures and are retried by the agent until writes work again"
        )
        self._set("False", disk_reason(error), message, now)

    def succeeded(self, key: str, now: str) -> None:
        if self.pending.pop(key, None) is not None and not self.pending:
            self._set("True", "Writable", f"writes to the profile directory {self.root} work again", now)

    def _set(self, status: str, reason: str, message: str, now: str) -> None:
        before = self.condition or {}
        since = before.get("lastTransitionTime") if before.get("status") == status else now
        self.condition = {
            "type": PROFILE_DIR_WRITABLE,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": since or now,
        }


class Writes:
    """Profile-dir writes from the event loop, each in a thread. An OSError is recorded in
    `health` (keyed by what the write was for: whoever wrote it writes it again) and
    returned as False, and `tidy_due` is set: whatever a refused write left behind (a
    stale file, an old version) is tidied once writes work again. `changed` is called
    whenever `health` changes."""

    def __init__(self, files: ProfileDir, clock: Clock, changed: Callable[[], None], backoff: Backoff) -> None:
        self.files = files
        self.clock = clock
        self.changed = changed
        self.backoff = backoff  # between tidies while they fail
        self.health = DiskHealth(str(files.root))
        self.tidy_due = False
        self._due = asyncio.Event()

    def _refused(self) -> None:
        self.tidy_due = True
        self._due.set()

    async def pause(self, resync: float) -> None:
        """Until the next refresh (which tidies when due): `resync` seconds, but once a write
        was refused, the backoff from that moment on."""
        if not self.tidy_due:
            self.backoff.reset()
            self._due.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), resync)
        if self.tidy_due:
            await asyncio.sleep(self.backoff.next())

    async def run(self, key: str, action: Callable[..., object], *args: Any) -> bool:
        """Whether the write went through."""
        try:
            await asyncio.to_thread(action, *args)
        except OSError as exc:
            log.warning("cannot write %s in profile dir %s: %s", key, self.files.root, exc)
            self.health.failed(key, exc, rfc3339(self.clock()))
            self._refused()
            self.changed()
            return False
        if key in self.health.pending:
            self.health.succeeded(key, rfc3339(self.clock()))
            self.changed()
        return True

    async def best_effort(self, action: Callable[..., object], *args: Any) -> bool:
        """A write nothing waits for (a failed load's clean-up, the parser cache's
        directory): if it is refused, what it leaves behind goes with the next tidy."""
        try:
            await asyncio.to_thread(action, *args)
        except OSError as exc:
            log.info("deferred a write in profile dir %s: %s", self.files.root, exc)
            self._refused()
            return False
        return True

    async def node_local(self, partitions: Path) -> str | None:
        """Write the node-local include; its text, or None when the write was refused."""
        text: list[str] = []
        ok = await self.run("node-local include", lambda: text.append(self.files.write_node_local(partitions)))
        return text[0] if ok else None

    async def tidy(self, desired: Mapping[str, str], loaded: Mapping[str, str]) -> None:
        """Delete profile files of names not `desired`, and load files and cache entries of
        versions (name -> sha256) neither desired nor loaded. Safe beside running syncs:
        a name is desired before its file is staged, and loaded until its file goes."""
        stale = await asyncio.to_thread(self.files.stale, desired)
        keep = [self.files.load_path(n, sha) for versions in (desired, loaded) for n, sha in versions.items()]
        done = await self.run("stale files", self.files.remove_all, stale)
        self.tidy_due = not (done and await self.run("old versions", self.files.prune_loads, keep))
