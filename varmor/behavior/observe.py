"""One AppArmor audit record (complain mode's `apparmor="ALLOWED"`) -> one behaviour rule.

The record's fields come from a hostile log (a workload names its files, sockets' peers
and signals' targets), so every value is checked: what `profile.check_rule` would refuse
is not observed at all (None), rather than stored and refused later. Recorded paths are
taken literally or not at all (see `generalise` for why glob characters are refused).
Generalisation is a separate step (`generalise.generalise`), so a model can be rebuilt
from the same records under other rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from varmor.behavior.generalise import is_literal_path
from varmor.behavior.model import (
    FILE_PERMS,
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
from varmor.behavior.profile import OWN_PEER, check_rule

# The kernel's file mask letters (aa_file_perm_chrs): create and delete are writes to
# AppArmor's rule language, exec is its own rule, the rest are kept.
_FILE_LETTERS = {**{p: p for p in FILE_PERMS}, "c": "w", "d": "w", "x": ""}
_UID = re.compile(r"[0-9]{1,10}")
_PROTOCOL = re.compile(r"[0-9]{1,3}")
_MODE_SUFFIX = re.compile(r" \((?:enforce|complain|kill|unconfined|prompt)\)$")
_FILE_CLASSES = ("file",)
_NET_CLASSES = ("net", "unix")
_MOUNT_OPERATIONS = {"mount": "mount", "remount": "remount", "umount": "umount", "pivotroot": "pivot_root"}


def _base(label: str) -> str:
    return label.split("//", 1)[0]


def _peer(fields: Mapping[str, str], profile: str) -> str | None:
    """The peer label; this workload's own profile family (the profile or a child of
    it, such as complain mode's `//null-<exe>` learning children) is `@{profile_name}`:
    under the enforced profile every program of the workload runs in that profile."""
    peer = fields.get("peer")
    if not peer:
        return None
    peer = _MODE_SUFFIX.sub("", peer)
    return OWN_PEER if profile and _base(peer) == _base(profile) else peer


def _file(operation: str, fields: Mapping[str, str]) -> BehaviorRule | None:
    name = fields.get("name", "")
    mask = fields.get("requested_mask", "")
    if not is_literal_path(name) or not mask or any(ch not in _FILE_LETTERS for ch in mask):
        return None
    if operation == "exec" and "x" in mask:
        return ExecRule(name)
    perms = canonical_perms(_FILE_LETTERS[ch] for ch in mask)
    if not perms:
        return None
    fsuid, ouid = fields.get("fsuid", ""), fields.get("ouid", "")
    owner = bool(_UID.fullmatch(fsuid)) and fsuid == ouid
    return FileRule(name, perms, owner)


def _network(klass: str, fields: Mapping[str, str]) -> BehaviorRule | None:
    family = fields.get("family") or ("unix" if klass == "unix" else "")
    protocol = fields.get("protocol", "")
    if not family or (protocol and not _PROTOCOL.fullmatch(protocol)):
        return None
    return NetworkRule(family, fields.get("sock_type", ""), protocol)


def _mount_flags(text: str) -> list[str] | None:
    """The kernel's `flags="rw, nosuid, nodev"` as words (checked by check_rule)."""
    words = [w.strip() for w in text.split(",")] if text else []
    return None if any(not w for w in words) else words


def _mount(operation: str, fields: Mapping[str, str]) -> BehaviorRule | None:
    """mount, remount (the kernel logs it as a `mount` with the `remount` flag), umount
    and pivot_root (`name` the new root, `srcname` the old one)."""
    kind = _MOUNT_OPERATIONS.get(operation)
    flags = _mount_flags(fields.get("flags", ""))
    name = fields.get("name", "")
    if kind is None or flags is None or not is_literal_path(name):
        return None
    source = fields.get("srcname", "")
    if kind == "mount" and "remount" in flags:
        kind = "remount"
    if kind == "remount":
        return MountRule("remount", mountpoint=name, flags=",".join(f for f in flags if f != "remount"))
    if kind == "umount":
        return MountRule("umount", mountpoint=name)
    if source.startswith("/") and not is_literal_path(source):
        return None
    if kind == "pivot_root":
        return MountRule("pivot_root", source=source, mountpoint=name)
    return MountRule("mount", fields.get("fstype", ""), source, name, ",".join(flags))


def _build(operation: str, klass: str, fields: Mapping[str, str], profile: str) -> BehaviorRule | None:
    if klass in _FILE_CLASSES:
        return _file(operation, fields)
    if klass == "cap" or operation == "capable":
        return CapabilityRule(fields.get("capname", ""))
    if klass in _NET_CLASSES:
        return _network(klass, fields)
    if klass == "signal":
        peer = _peer(fields, profile)
        access = fields.get("requested_mask", "")
        return SignalRule(access, fields.get("signal", ""), peer) if peer else None
    if klass == "ptrace":
        peer = _peer(fields, profile)
        return PtraceRule(fields.get("requested_mask", ""), peer) if peer else None
    if klass == "mount":
        return _mount(operation, fields)
    return None  # domain changes, dbus, io_uring, ...: not modelled


def observe(
    operation: str,
    klass: str,
    fields: Mapping[str, str],
    profile: str,
    *,
    rewrite: Callable[[BehaviorRule], BehaviorRule] | None = None,
) -> BehaviorRule | None:
    """The rule an audit record shows the workload needed, or None when the record is no
    modelled kind or holds a value the profile writer would refuse. `klass` is one of
    `nodeexec.audit.CLASSES`; `profile` is the record's profile (`name` or a child
    `name//...`), to recognise the workload's own processes as peers. `rewrite` (the
    agent's `generalise`) is applied before the check, so the check sees the rule that
    is kept, and a workload's many pids cost one (cached) check."""
    rule = _build(operation, klass, fields, profile)
    if rule is not None and rewrite is not None:
        rule = rewrite(rule)
    if rule is None or check_rule(rule) is not None:
        return None
    return rule
