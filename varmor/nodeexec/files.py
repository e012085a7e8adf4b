"""The profile directory on the host: profile files (so they survive a reboot), the
node-local include, and the host's disk devices. Blocking helpers; run them in an executor.

Only names that look like varmor's (`varmor-*`, a DNS-label-like name) are ever written or
deleted, so the agent cannot touch the host's own profiles through a crafted name.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from varmor import api
from varmor.profile import NODE_LOCAL_INCLUDE, DiskDeviceError, node_local_include

DEFAULT_PROFILE_DIR = Path("/etc/apparmor.d")
DEFAULT_PARTITIONS = Path("/proc/partitions")
FORCE_COMPLAIN = "force-complain"
LOADS = "varmor/loads"  # what the parser loads from: one file per profile version
PARSER_CACHE = "varmor/cache"  # apparmor_parser's compiled-policy cache for those files
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

    def remove(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)
        self.set_force_complain(name, False)

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
