"""What the node's kernel offers and has loaded: AppArmor detection and the securityfs
reader. Paths are parameters, so tests and dev mode point them at a stand-in directory
while production reads /sys/kernel/security and /sys/module/apparmor.

Pure parsers (`parse_*`) are separate from the small blocking readers, which callers run
in an executor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DEFAULT_SECURITYFS = Path("/sys/kernel/security")
DEFAULT_ENABLED_FILE = Path("/sys/module/apparmor/parameters/enabled")

# One line of <securityfs>/apparmor/profiles: "name (mode)"; names may contain spaces.
_PROFILE_LINE = re.compile(r"^(?P<name>.+) \((?P<mode>[a-z_]+)\)$")


@dataclass(frozen=True)
class Detection:
    supported: bool
    reason: str = ""  # why not, when unsupported


def apparmor_dir(securityfs: Path) -> Path:
    return securityfs / "apparmor"


def detect(securityfs: Path, enabled_file: Path) -> Detection:
    """Whether AppArmor can take policy here. Checks, in order: the module parameter says
    `Y`, the securityfs directory is there, and it has the policy interface files."""
    try:
        enabled = enabled_file.read_text().strip()
    except FileNotFoundError:
        return Detection(False, f"AppArmor is not available in this kernel: {enabled_file} does not exist")
    except OSError as exc:
        return Detection(False, f"cannot read {enabled_file}: {exc.strerror}")
    if enabled != "Y":
        return Detection(False, f"AppArmor is not enabled: {enabled_file} is {enabled or 'empty'}")
    aa = apparmor_dir(securityfs)
    if not aa.is_dir():
        return Detection(False, f"AppArmor securityfs is not mounted: {aa} does not exist")
    missing = [name for name in ("profiles", ".replace", ".remove") if not (aa / name).exists()]
    if missing:
        return Detection(False, f"AppArmor securityfs at {aa} lacks {', '.join(missing)}")
    return Detection(True)


def parse_profiles(text: str) -> dict[str, str]:
    """`<securityfs>/apparmor/profiles` as {name: mode}. Child profiles (`a//b`) are kept:
    callers decide what they care about."""
    loaded: dict[str, str] = {}
    for line in text.splitlines():
        match = _PROFILE_LINE.match(line.strip())
        if match:
            loaded[match["name"]] = match["mode"]
    return loaded


def top_level(loaded: dict[str, str]) -> dict[str, str]:
    """Only top-level profiles: children go with their parent when it is replaced or removed."""
    return {name: mode for name, mode in loaded.items() if "//" not in name}


def read_loaded(securityfs: Path) -> dict[str, str]:
    """Blocking: the profiles the kernel has loaded, {name: mode}."""
    return parse_profiles((apparmor_dir(securityfs) / "profiles").read_text(errors="replace"))
