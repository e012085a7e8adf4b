"""A behaviour model: the set of AppArmor rules a workload was seen to need, each with
the number of audit records behind it.

One shape for an agent's per-node share and for the leader's merged model, so merging
is a sum and the wire form is the same on both objects (vArmor's `dynamicResult.appArmor`
layout, less its BPF and seccomp halves). Pure: no I/O; the codec is in `codec`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

# File permissions in the order AppArmor writes them; exec is its own rule (ExecRule).
FILE_PERMS = "rwalkm"
SignalAccess = Literal["send", "receive"]
PtraceAccess = Literal["read", "trace", "readby", "tracedby"]
MountOperation = Literal["mount", "remount", "umount", "pivot_root"]


def canonical_perms(perms: Iterable[str]) -> str:
    """A permission set in AppArmor's order, each once (`wr` -> `rw`); `a` is dropped when
    `w` is present (write implies append, and `wa` is refused by the parser)."""
    chosen = set(perms) & set(FILE_PERMS)
    if "w" in chosen:
        chosen.discard("a")
    return "".join(p for p in FILE_PERMS if p in chosen)


@dataclass(frozen=True, order=True)
class FileRule:
    """`[owner] PATH PERMS,`: `path` is an AppArmor path (globs and @{pid} allowed)."""

    path: str
    perms: str
    owner: bool = False


@dataclass(frozen=True, order=True)
class ExecRule:
    """`PATH ix,`: the program was executed (and stays in this profile)."""

    path: str


@dataclass(frozen=True, order=True)
class CapabilityRule:
    name: str


@dataclass(frozen=True, order=True)
class NetworkRule:
    """`network FAMILY [TYPE],` (the protocol is recorded for the advisor, not enforced)."""

    family: str
    sock_type: str = ""
    protocol: str = ""


@dataclass(frozen=True, order=True)
class SignalRule:
    """`signal (ACCESS) set=(SIGNAL) peer=PEER,`; PEER `@{profile_name}` is the profile itself."""

    access: str
    signal: str
    peer: str


@dataclass(frozen=True, order=True)
class PtraceRule:
    access: str
    peer: str


@dataclass(frozen=True, order=True)
class MountRule:
    operation: str
    fstype: str = ""
    source: str = ""
    mountpoint: str = ""
    flags: str = ""


BehaviorRule = FileRule | ExecRule | CapabilityRule | NetworkRule | SignalRule | PtraceRule | MountRule
RULE_TYPES: tuple[type, ...] = (FileRule, ExecRule, CapabilityRule, NetworkRule, SignalRule, PtraceRule, MountRule)


@dataclass
class Behavior:
    """Rules with their record counts. `records` counts every record folded in (a rule
    seen twice counts twice); `lost` counts records the kernel dropped before they could
    be read (see nodeexec.auditloss); `excluded` counts records deliberately left out
    (the container runtime's own start-up)."""

    rules: dict[BehaviorRule, int] = field(default_factory=dict)
    records: int = 0
    lost: int = 0
    excluded: int = 0

    def add(self, rule: BehaviorRule, count: int = 1) -> bool:
        """Count `rule`; True when it is new."""
        new = rule not in self.rules
        self.rules[rule] = self.rules.get(rule, 0) + count
        self.records += count
        return new

    def merge(self, other: Behavior) -> None:
        for rule, count in other.rules.items():
            self.rules[rule] = self.rules.get(rule, 0) + count
        self.records += other.records
        self.lost += other.lost
        self.excluded += other.excluded

    def of(self, kind: type[BehaviorRule]) -> list[Any]:
        """The rules of one type, sorted (deterministic output everywhere)."""
        return sorted(r for r in self.rules if isinstance(r, kind))

    def __iter__(self) -> Iterator[BehaviorRule]:
        return iter(sorted(self.rules, key=lambda r: (RULE_TYPES.index(type(r)), r)))

    def __len__(self) -> int:
        return len(self.rules)


# -- wire form -------------------------------------------------------------------------
# {"executions": [{"path", "count"}], "files": [{"path", "permissions", "owner", "count"}],
#  "capabilities": [...], "networks": [...], "signals": [...], "ptraces": [...], "mounts": [...]}
_WIRE_LISTS: dict[type, tuple[str, tuple[tuple[str, str], ...]]] = {
    ExecRule: ("executions", (("path", "path"),)),
    FileRule: ("files", (("path", "path"), ("perms", "permissions"), ("owner", "owner"))),
    CapabilityRule: ("capabilities", (("name", "name"),)),
    NetworkRule: ("networks", (("family", "family"), ("sock_type", "type"), ("protocol", "protocol"))),
    SignalRule: ("signals", (("access", "access"), ("signal", "signal"), ("peer", "peer"))),
    PtraceRule: ("ptraces", (("access", "access"), ("peer", "peer"))),
    MountRule: (
        "mounts",
        (
            ("operation", "operation"),
            ("fstype", "fstype"),
            ("source", "source"),
            ("mountpoint", "mountpoint"),
            ("flags", "flags"),
        ),
    ),
}


class WireError(ValueError):
    """A wire model that is not one varmor writes (hostile or corrupt)."""


def to_wire(behavior: Behavior) -> dict[str, Any]:
    """The JSON form: one sorted list per rule type, empty lists left out."""
    out: dict[str, Any] = {}
    for kind, (key, fields) in _WIRE_LISTS.items():
        items = []
        for rule in behavior.of(kind):
            item: dict[str, Any] = {}
            for attr, name in fields:
                value = getattr(rule, attr)
                if value not in ("", False):
                    item[name] = value
            item["count"] = behavior.rules[rule]
            items.append(item)
        if items:
            out[key] = items
    return out


def from_wire(data: Mapping[str, Any]) -> Behavior:
    """The inverse of `to_wire`. Field types are checked here; whether the values are
    safe to put into a profile is `profile.check_rule`'s job."""
    if not isinstance(data, Mapping):
        raise WireError("behaviour data must be an object")
    unknown = set(data) - {key for key, _ in _WIRE_LISTS.values()}
    if unknown:
        raise WireError(f"unknown behaviour list {sorted(unknown)[0]!r}")
    behavior = Behavior()
    for kind, (key, fields) in _WIRE_LISTS.items():
        items = data.get(key, [])
        if not isinstance(items, list):
            raise WireError(f"{key} must be a list")
        for i, item in enumerate(items):
            if not isinstance(item, Mapping) or set(item) - {name for _, name in fields} - {"count"}:
                raise WireError(f"{key}[{i}] has unknown fields")
            kwargs: dict[str, Any] = {}
            for attr, name in fields:
                value = item.get(name, False if attr == "owner" else "")
                if not isinstance(value, bool if attr == "owner" else str):
                    raise WireError(f"{key}[{i}].{name} has the wrong type")
                kwargs[attr] = value
            count = item.get("count", 1)
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise WireError(f"{key}[{i}].count must be a non-negative integer")
            behavior.rules[kind(**kwargs)] = behavior.rules.get(kind(**kwargs), 0) + count
            behavior.records += count
    return behavior


def digest(behavior: Behavior) -> str:
    """The rules' identity, counts left out: more records of known behaviour do not change
    a model, a new rule does (what DefenseInDepth asks the user to accept)."""
    rules = to_wire(Behavior(rules=dict.fromkeys(behavior.rules, 0)))
    return hashlib.sha256(json.dumps(rules, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
