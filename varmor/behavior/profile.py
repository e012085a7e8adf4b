"""A behaviour model -> the rule lines of a deny-by-default (DefenseInDepth) profile.

A model is untrusted: it is built from a workload's audit records and merged from what
every node's agent reported, so one hostile node could write any model. `check_rule`
therefore checks every field against an allow-list grammar before a rule becomes a
line, and then puts the line through `varmor.profile.raw.check_raw_rules`, the one
validator of tenant-written rules, as a second, independent check. A refused rule is
left out of the profile (`refused_rules` says which and why), never repaired.

The grammar is narrower than AppArmor's and than raw.py's where a model never needs
more: paths use only the globs generalisation writes (`*` inside a segment, `?`,
`[0-9]`, @{pid}, @{tid}, @{profile_name}), never `**`; words come from raw.py's tables
of the pinned ABI, minus the few the parser itself refuses (a model must compile).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from varmor.behavior.model import (
    Behavior,
    BehaviorRule,
    CapabilityRule,
    ExecRule,
    FileRule,
    MountRule,
    NetworkRule,
    PtraceRule,
    SignalRule,
    canonical_perms,
)
from varmor.profile import templates
from varmor.profile.deny_default import BASELINE
from varmor.profile.raw import RawRuleError, check_raw_rules
from varmor.profile.raw_words import CAPS, MOUNT_OPTIONS, NETWORK, SIGNALS, SOCKET_TYPES, is_profile_keyword

OWN_PEER = "@{profile_name}"
MAX_PATH = 4096
MAX_PEER = 255
PATH_VARIABLES = ("@{pid}", "@{tid}", OWN_PEER)
_PATH = re.compile(r"/[A-Za-z0-9._+\-*?\[\]:~%=@{}/]*")
_CLASS = "[0-9]"
_PEER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+\-]*")
_FSTYPE = re.compile(r"[a-z0-9_.]{1,64}")
_DEVICE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.:/\-]{0,254}")
_PROTOCOL = re.compile(r"[0-9]{1,3}")
_BARE_AT = re.compile(r"@(?!\{)")
# The pinned ABI's address families (the builder's table lacks unix, which it may deny,
# and unspec, which no socket has); raw.py's network words mix them with socket types.
FAMILIES = (frozenset(templates.NETWORK_FAMILIES) | {"unix"}) & NETWORK
# In raw.py's tables but refused by the pinned parser ("unknown signal", "unsupported
# mount options"): one such rule would fail the whole profile's compile.
SIGNAL_NAMES = SIGNALS - {"lost"}
MOUNT_FLAGS = MOUNT_OPTIONS - {"lazytime", "nolazytime", "nostrictatime"}
SIGNAL_ACCESS = frozenset({"send", "receive"})
PTRACE_ACCESS = frozenset({"read", "trace", "readby", "tracedby"})
MOUNT_OPERATIONS = frozenset({"mount", "remount", "umount", "pivot_root"})
RULE_ORDER: tuple[type, ...] = (ExecRule, FileRule, CapabilityRule, NetworkRule, SignalRule, PtraceRule, MountRule)


def check_path(path: str) -> str | None:
    """Why `path` cannot be a model path, or None. Braces only in the three variables,
    brackets only as `[0-9]`, no `**` (generalisation never writes one: it crosses
    directories)."""
    if not isinstance(path, str) or not _PATH.fullmatch(path):
        return f"{path!r} is not an absolute path of letters, digits, ._+-:~%=@ and globs"
    if len(path) > MAX_PATH:
        return f"path longer than {MAX_PATH} characters"
    bare = path
    for variable in PATH_VARIABLES:
        bare = bare.replace(variable, "/")
    if "{" in bare or "}" in bare:
        return f"{path!r}: braces only in {', '.join(PATH_VARIABLES)}"
    if "[" in bare.replace(_CLASS, "") or "]" in bare.replace(_CLASS, ""):
        return f"{path!r}: brackets only as {_CLASS}"
    if "**" in path:
        return f"{path!r}: '**' matches across directories"
    return None


def check_peer(peer: str) -> str | None:
    """A peer is this profile (`@{profile_name}`) or a plain profile name: no globs or
    variables (they match other tenants' profiles), not another policy's `varmor-*`."""
    if peer == OWN_PEER:
        return None
    if not isinstance(peer, str) or len(peer) > MAX_PEER or not _PEER.fullmatch(peer):
        return f"peer {peer!r} is not a plain profile name"
    if peer.startswith("varmor-"):
        return f"peer {peer!r} is another varmor policy's profile"
    return None


def _check_mount(rule: MountRule) -> str | None:
    if rule.operation not in MOUNT_OPERATIONS:
        return f"unknown mount operation {rule.operation!r}"
    flags = rule.flags.split(",") if rule.flags else []
    if any(f not in MOUNT_FLAGS for f in flags) or len(set(flags)) != len(flags):
        return f"mount flags {rule.flags!r} are not the parser's known options, each once"
    if rule.operation in ("umount", "pivot_root") and (flags or rule.fstype):
        return f"{rule.operation} takes no flags or fstype"
    if rule.operation in ("remount", "umount") and rule.source:
        return f"{rule.operation} takes no source"
    if rule.fstype and not _FSTYPE.fullmatch(rule.fstype):
        return f"fstype {rule.fstype!r} is not a filesystem type name"
    if rule.source.startswith("/") or rule.operation == "pivot_root":
        why = check_path(rule.source) if rule.source else None
        if why:
            return why
    elif rule.source and (not _DEVICE.fullmatch(rule.source) or is_profile_keyword(rule.source)):
        return f"mount source {rule.source!r} is not a path or a device name"
    return check_path(rule.mountpoint)


def _check_fields(rule: BehaviorRule) -> str | None:
    if isinstance(rule, FileRule):
        if not rule.perms or rule.perms != canonical_perms(rule.perms) or not isinstance(rule.owner, bool):
            return f"file permissions {rule.perms!r} are not canonical ones of rwalkm"
        return check_path(rule.path)
    if isinstance(rule, ExecRule):
        return check_path(rule.path)
    if isinstance(rule, CapabilityRule):
        return None if rule.name in CAPS else f"unknown capability {rule.name!r}"
    if isinstance(rule, NetworkRule):
        if rule.family not in FAMILIES:
            return f"unknown network family {rule.family!r}"
        if rule.sock_type and rule.sock_type not in SOCKET_TYPES:
            return f"unknown socket type {rule.sock_type!r}"
        return None if not rule.protocol or _PROTOCOL.fullmatch(rule.protocol) else "protocol is not a number"
    if isinstance(rule, SignalRule):
        if rule.access not in SIGNAL_ACCESS or rule.signal not in SIGNAL_NAMES:
            return f"signal access {rule.access!r} or signal {rule.signal!r} unknown"
        return check_peer(rule.peer)
    if isinstance(rule, PtraceRule):
        return check_peer(rule.peer) if rule.access in PTRACE_ACCESS else f"ptrace access {rule.access!r} unknown"
    if isinstance(rule, MountRule):
        return _check_mount(rule)
    return f"not a behaviour rule: {type(rule).__name__}"


def _same(path: str) -> str:
    return path


def _lines(rule: BehaviorRule, path: Callable[[str], str] = _same) -> list[str]:
    """The rule's lines, unchecked (`check_rule` checks before `model_rules` uses them);
    `path` maps each path as it is written."""
    if isinstance(rule, ExecRule):
        # ix: the program runs in this profile; mr: the loader maps it (no record says so
        # under complain mode, where exec moves to a learning child).
        return [f"{path(rule.path)} ix,", f"{path(rule.path)} mr,"]
    if isinstance(rule, FileRule):
        return [f"{'owner ' if rule.owner else ''}{path(rule.path)} {rule.perms},"]
    if isinstance(rule, CapabilityRule):
        return [f"capability {rule.name},"]
    if isinstance(rule, NetworkRule):
        return [f"network {rule.family}{' ' + rule.sock_type if rule.sock_type else ''},"]
    if isinstance(rule, SignalRule):
        return [f"signal ({rule.access}) set=({rule.signal}) peer={rule.peer},"]
    if isinstance(rule, PtraceRule):
        return [f"ptrace ({rule.access}) peer={rule.peer},"]
    return [_mount_line(rule, path)]


def _mount_line(rule: MountRule, path: Callable[[str], str]) -> str:
    point = path(rule.mountpoint)
    source = path(rule.source) if rule.source.startswith("/") else rule.source
    if rule.operation == "umount":
        return f"umount {point},"
    if rule.operation == "pivot_root":
        return f"pivot_root {'oldroot=' + source + ' ' if source else ''}{point},"
    conds = [f"fstype={rule.fstype}"] if rule.fstype else []
    conds += [f"options=({rule.flags})"] if rule.flags else []
    if rule.operation == "remount":
        return " ".join(["remount", *conds, point]) + ","
    return " ".join(["mount", *conds, *([source] if source else []), "->", point]) + ","


def _raw_path(path: str) -> str:
    """A path as raw.py's grammar is to read it. Raw rules may not hold a bare `@` or an
    `=` in a path (there they would start variable syntax); a model path may, literally
    (check_path has refused every brace outside the three variables, so neither can
    start anything), so for this second check only they are read as an ordinary
    character."""
    return _BARE_AT.sub("_", path).replace("=", "_")


@functools.lru_cache(maxsize=16384)
def check_rule(rule: BehaviorRule) -> str | None:
    """Why `rule` may not go into a profile, or None: its fields against the model
    grammar, then its lines against raw.py's validator (which also refuses a ptrace rule
    whose peer is not this profile itself). Cached: rules are immutable, a workload
    repeats the same few (once generalised), and the raw check is most of a record's cost."""
    why = _check_fields(rule)
    if why is not None:
        return why
    try:
        check_raw_rules("\n".join(_lines(rule, _raw_path)))
    except RawRuleError as err:
        return str(err)
    return None


def refused_rules(behavior: Behavior) -> list[tuple[BehaviorRule, str]]:
    """The rules `model_rules` leaves out, with the reason: for the model's status."""
    found = ((rule, check_rule(rule)) for rule in behavior)
    return [(rule, why) for rule, why in found if why is not None]


def model_rules(behavior: Behavior) -> list[str]:
    """The model's rule lines, refused rules left out, each line once, in a fixed order:
    exec, files, capabilities, network, signal, ptrace, mount (sorted within each)."""
    lines: dict[str, None] = {}
    for kind in RULE_ORDER:
        accepted = [rule for rule in behavior.of(kind) if check_rule(rule) is None]
        for rule in _merge_files(accepted) if kind is FileRule else accepted:
            lines.update(dict.fromkeys(_lines(rule)))
    return list(lines)


def _merge_files(rules: list[FileRule]) -> list[FileRule]:
    """One rule per path and owner qualifier, with the union of the permissions (a file
    read by one record and written by another is one `rw` line)."""
    perms: dict[tuple[str, bool], str] = {}
    for rule in rules:
        key = (rule.path, rule.owner)
        perms[key] = canonical_perms(perms.get(key, "") + rule.perms)
    return [FileRule(path, p, owner) for (path, owner), p in perms.items()]


def model_profile_body(behavior: Behavior) -> list[str]:
    """The body of a deny-by-default profile for `behavior`: the baseline every such
    profile carries (`varmor.profile.deny_default.BASELINE`), then the model."""
    return [*BASELINE, "", "# The behaviour model", *model_rules(behavior)]
