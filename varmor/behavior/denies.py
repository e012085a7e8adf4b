"""What a catalog rule's AppArmor lines deny, asked of one recorded behaviour rule.

Each catalog line (a deny-rule body: `/etc/** wl`, `capability sys_admin`, `network tcp`,
`mount options in (bind,rbind,move) /proc** -> /**`, `ptrace read`) is parsed once into a
`Deny`; `Deny.denies(rule)` says whether AppArmor would refuse what the behaviour rule
records. Where the record leaves something out (no socket type, no mount flags) or AppArmor
is coarser than the record, the answer is "denies": a rule wrongly left out costs a little
protection, a rule wrongly proposed breaks the workload. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from varmor.behavior.globs import GlobError, intersects
from varmor.behavior.model import (
    BehaviorRule,
    CapabilityRule,
    ExecRule,
    FileRule,
    MountRule,
    NetworkRule,
    PtraceRule,
)
from varmor.behavior.profile import OWN_PEER
from varmor.profile.templates import NETWORK_FAMILIES

EXEC_DENY_PERMS = "rx"  # what the builder writes after an exec rule's path under deny
_PERM_CHARS = frozenset("rwaklmx")
_TYPES = frozenset({"stream", "dgram", "seqpacket", "rdm", "raw", "packet"})
_PROTOCOLS = {"tcp": "6", "udp": "17", "icmp": "1", "icmpv6": "58", "ipv6-icmp": "58"}
_INET = frozenset({"inet", "inet6"})
_FAMILIES = frozenset({*NETWORK_FAMILIES, "unix", "local"})
# Mount flag words (as rules and audit records spell them) and the MS_* bits they stand for.
_REC = "rec"
_FLAG_BITS = {
    "bind": {"bind"},
    "B": {"bind"},
    "rbind": {"bind", _REC},
    "R": {"bind", _REC},
    "move": {"move"},
    "M": {"move"},
    "remount": {"remount"},
    "ro": {"ro"},
    "r": {"ro"},
    "read-only": {"ro"},
    "rw": set(),  # the absence of MS_RDONLY
    "w": set(),
    **{p: {p} for p in ("private", "slave", "shared", "unbindable")},
    **{"r" + p: {p, _REC} for p in ("private", "slave", "shared", "unbindable")},
    **{"make-" + p: {p} for p in ("private", "slave", "shared", "unbindable")},
    **{"make-r" + p: {p, _REC} for p in ("private", "slave", "shared", "unbindable")},
}
_PROPAGATION = frozenset({"private", "slave", "shared", "unbindable"})
_MOUNT_KINDS = frozenset({"remount", "bind", "move", "change_type", "new"})
_TOKEN = re.compile(r"\([^()]*\)|\S+")


class DenyError(ValueError):
    """A catalog line this evaluator cannot read: its rule is never proposed."""


def _paths_meet(pattern: str | None, value: str) -> bool:
    """A rule's path condition against a recorded value; an unknown value may be anything,
    and a value AppArmor would not parse as a pattern is taken to overlap."""
    if pattern is None or not value:
        return True
    try:
        return intersects(pattern, value)
    except GlobError:
        return True


@dataclass(frozen=True)
class FileDeny:
    judges: ClassVar[tuple[type, ...]] = (FileRule, ExecRule)  # the behaviour rules it may deny
    path: str
    perms: frozenset[str]  # as written, `w` implying `a`

    def denies(self, rule: BehaviorRule) -> bool:
        if isinstance(rule, ExecRule):
            return "x" in self.perms and _paths_meet(self.path, rule.path)
        if not isinstance(rule, FileRule):
            return False
        needed = set(rule.perms)
        if "w" in needed or "a" in needed:
            needed |= {"w", "a"}  # an append may be recorded as a write, and `w` covers `a`
        return bool(needed & self.perms) and _paths_meet(self.path, rule.path)


@dataclass(frozen=True)
class CapabilityDeny:
    judges: ClassVar[tuple[type, ...]] = (CapabilityRule,)
    names: frozenset[str]  # empty: every capability

    def denies(self, rule: BehaviorRule) -> bool:
        return isinstance(rule, CapabilityRule) and (not self.names or rule.name in self.names)


@dataclass(frozen=True)
class NetworkDeny:
    """`network [FAMILY] [TYPE | PROTOCOL]`. The parser maps `tcp`/`udp` to the stream/dgram
    sockets of inet and inet6 and `icmp` to inet raw sockets, and mainline kernels match
    family and type only; so `udp` also denies ICMP ping sockets, and any protocol of the
    recorded family and type counts."""

    judges: ClassVar[tuple[type, ...]] = (NetworkRule,)
    family: str | None
    kind: str | None

    def denies(self, rule: BehaviorRule) -> bool:
        if not isinstance(rule, NetworkRule):
            return False
        family, sock_type = rule.family, rule.sock_type
        protocol = _PROTOCOLS.get(rule.protocol, rule.protocol)
        if self.family and family and family != self.family:
            return False
        if self.kind is None:
            return True
        if self.kind in _TYPES:
            return not sock_type or sock_type == self.kind
        if family and family not in _INET:
            return False
        if self.kind == "tcp":
            return sock_type in ("", "stream") or protocol == "6"
        if self.kind == "udp":
            return sock_type in ("", "dgram") or protocol == "17"
        return sock_type in ("", "raw") or protocol in ("1", "58")  # icmp


@dataclass(frozen=True)
class MountDeny:
    """`mount`/`remount`/`umount`/`pivot_root` with AppArmor's encoding (parser mount.cc):
    a rule with no options covers new mounts, and also bind and move unless it names a
    fstype, and remount and propagation changes unless it names a fstype or a source;
    `options in (...)` narrows each of those to mounts whose flags it lists."""

    judges: ClassVar[tuple[type, ...]] = (MountRule,)
    operation: str
    fstype: str | None = None
    options: frozenset[str] | None = None  # MS_* bit names; None: any
    source: str | None = None
    mountpoint: str | None = None

    def kinds(self) -> frozenset[str]:
        """The kernel checks (see `_mount_kinds`) this rule takes part in."""
        if self.operation in ("umount", "pivot_root", "remount"):
            return frozenset({self.operation})
        kinds = {"new"}
        if self.fstype is None:
            kinds |= {"bind", "move"}
            if self.source is None:
                kinds |= {"remount", "change_type"}
        return frozenset(kinds)

    def denies(self, rule: BehaviorRule) -> bool:
        if not isinstance(rule, MountRule):
            return False
        kinds, flags = _mount_kinds(rule)
        return any(self._covers(kind, flags, rule) for kind in kinds & self.kinds())

    def _covers(self, kind: str, flags: frozenset[str] | None, rule: MountRule) -> bool:
        if kind in ("umount", "pivot_root"):
            return _paths_meet(self.mountpoint, rule.mountpoint)
        if self.options is not None and flags is not None:
            relevant = {
                "remount": flags,
                "bind": flags & {"bind", _REC},
                "move": flags & {"move"},
                "change_type": flags & (_PROPAGATION | {_REC}),
                "new": flags,
            }[kind]
            if not relevant <= self.options:
                return False
        if kind == "remount":
            return _paths_meet(self.mountpoint or self.source, rule.mountpoint)
        if kind == "change_type":
            return _paths_meet(self.mountpoint, rule.mountpoint)
        if kind == "new" and not _paths_meet(self.fstype, rule.fstype):
            return False
        return _paths_meet(self.source, rule.source) and _paths_meet(self.mountpoint, rule.mountpoint)


def _mount_kinds(rule: MountRule) -> tuple[frozenset[str], frozenset[str] | None]:
    """Which of the kernel's mount checks a record went through, and its flags as MS_* bit
    names (None when the record has no flags: then every kind it could be)."""
    if rule.operation in ("umount", "pivot_root"):
        return frozenset({rule.operation}), None
    words = [w for w in re.split(r"[\s,]+", rule.flags) if w]
    if rule.operation == "remount":
        words.append("remount")
    if not words:
        return (frozenset({"new"}) if rule.fstype else _MOUNT_KINDS), None
    flags = frozenset(bit for w in words for bit in _FLAG_BITS.get(w, {w}))
    if "remount" in flags:
        return frozenset({"remount"}), flags
    if "bind" in flags:
        return frozenset({"bind"}), flags
    if "move" in flags:
        return frozenset({"move"}), flags
    if flags & _PROPAGATION:
        return frozenset({"change_type"}), flags
    return frozenset({"new"}), flags


@dataclass(frozen=True)
class PtraceDeny:
    """`ptrace [ACCESS] [peer=LABEL]`. AppArmor does not check a process against its own
    label, so access to a peer recorded as the profile itself is never denied; `trace` is
    taken to need `read` too."""

    judges: ClassVar[tuple[type, ...]] = (PtraceRule,)
    access: frozenset[str]  # empty: every access
    peer: str | None

    def denies(self, rule: BehaviorRule) -> bool:
        if not isinstance(rule, PtraceRule) or rule.peer == OWN_PEER:
            return False
        needed = {rule.access, "read"} if rule.access == "trace" else {rule.access}
        if self.access and not (needed & self.access):
            return False
        return _paths_meet(self.peer, rule.peer)


Deny = FileDeny | CapabilityDeny | NetworkDeny | MountDeny | PtraceDeny


def _items(token: str) -> list[str]:
    return [i for i in re.split(r"[\s,]+", token.strip("()")) if i]


def _capability(words: list[str]) -> Deny:
    return CapabilityDeny(frozenset(words[1:]))


def _network(words: list[str]) -> Deny:
    """A first word is a family when it names one (`packet` is AF_PACKET, as in the
    parser), else a type or protocol."""
    rest = words[1:]
    family = rest.pop(0) if rest and rest[0] in _FAMILIES else None
    kind = rest.pop(0) if rest else None
    if rest or (kind is not None and kind not in _TYPES and kind not in ("tcp", "udp", "icmp")):
        raise DenyError(f"unsupported network rule {' '.join(words)!r}")
    return NetworkDeny(family, kind)


def _ptrace(words: list[str]) -> Deny:
    access: set[str] = set()
    peer = None
    for word in words[1:]:
        if word.startswith("peer="):
            peer = word.removeprefix("peer=")
        else:
            access.update(_items(word))
    return PtraceDeny(frozenset(access), peer)


def _mount(words: list[str]) -> Deny:
    operation = {"pivotroot": "pivot_root", "unmount": "umount"}.get(words[0], words[0])
    fields: dict[str, str | None] = {"fstype": None, "source": None, "mountpoint": None}
    options: set[str] | None = None
    rest = words[1:]
    while rest:
        word = rest.pop(0)
        key, eq, value = word.partition("=")
        if key in ("fstype", "vfstype", "options", "option") and (eq or (rest and rest[0] == "in")):
            if not eq:
                rest.pop(0)
                value = rest.pop(0) if rest else ""
            if key.startswith("option"):
                options = (options or set()) | {bit for w in _items(value) for bit in _FLAG_BITS.get(w, {w})}
            elif len(_items(value)) == 1:
                fields["fstype"] = _items(value)[0]
            else:
                fields["fstype"] = "{" + ",".join(_items(value)) + "}"
        elif word == "->":
            fields["mountpoint"] = rest.pop(0) if rest else None
        elif operation == "mount" and fields["source"] is None:
            fields["source"] = word
        elif fields["mountpoint"] is None:
            fields["mountpoint"] = word
        else:
            raise DenyError(f"unsupported mount rule {' '.join(words)!r}")
    frozen = frozenset(options) if options is not None else None
    return MountDeny(operation, fields["fstype"], frozen, fields["source"], fields["mountpoint"])


_KEYWORDS: dict[str, Callable[[list[str]], Deny]] = {
    "capability": _capability,
    "network": _network,
    "ptrace": _ptrace,
    "mount": _mount,
    "remount": _mount,
    "umount": _mount,
    "unmount": _mount,
    "pivot_root": _mount,
    "pivotroot": _mount,
}


def parse_deny(line: str, *, exec_rule: bool = False) -> Deny:
    """One catalog line as a Deny; exec lines are paths denied `rx` (see the builder)."""
    words = _TOKEN.findall(line)
    if not words:
        raise DenyError("empty rule")
    if exec_rule:
        if len(words) != 1:
            raise DenyError(f"an exec line is one path, not {line!r}")
        return FileDeny(words[0], frozenset(EXEC_DENY_PERMS))
    if words[0] in _KEYWORDS:
        return _KEYWORDS[words[0]](words)
    if len(words) == 2 and set(words[1]) <= _PERM_CHARS:
        perms = set(words[1]) | ({"a"} if "w" in words[1] else set())
        return FileDeny(words[0], frozenset(perms))
    raise DenyError(f"unsupported rule {line!r}")
