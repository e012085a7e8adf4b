"""Which built-in rules a workload can take, judged from what it was seen to do (pure).

`advise` checks every catalog rule's AppArmor lines against a behaviour model (or the
behaviour read back from a violations log, `observe_violations`): a rule that would deny
a recorded behaviour is left out, citing that behaviour and how many records showed it;
every other enforceable rule is proposed. `policy_document` turns the proposal into an
EnhanceProtect VarmorPolicy and `render_report` explains it to a person.

Decisions:
- Rules AppArmor cannot enforce are never proposed (listed, so nobody wonders).
- Privileged-only rules are proposed when nothing contradicts them: they cost nothing in a
  container that is not privileged (its capabilities and the RuntimeDefault base already
  stop what they block) and protect it if it is, with `privileged: true`.
- A rule with default `targets` is judged as if container-wide: the model does not say
  which program did what, so a behaviour of any program counts against it.
- A catalog line the evaluator cannot read leaves its rule out, saying so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from varmor import api
from varmor.behavior.denies import Deny, DenyError, parse_deny
from varmor.behavior.model import (
    Behavior,
    BehaviorRule,
    CapabilityRule,
    ExecRule,
    FileRule,
    MountRule,
    NetworkRule,
    PtraceRule,
)
from varmor.behavior.observe import observe
from varmor.events import printable
from varmor.models import CATEGORY_FIELDS
from varmor.rules import Catalog, Rule

SHOWN_CITATIONS = 5  # per left-out rule in the report; the Advice keeps them all
_CATEGORY_TITLES = {
    "hardening": "hardening",
    "attack-protection": "attack protection",
    "vul-mitigation": "vulnerability mitigation",
}


@dataclass(frozen=True)
class Citation:
    """A recorded behaviour a rule's `line` would deny; `example` is a record showing it
    (violations-log input only)."""

    rule: BehaviorRule
    count: int
    line: str
    example: str | None = None


@dataclass(frozen=True)
class LeftOut:
    """A rule not proposed, and why: what it would deny, or the line it could not judge."""

    rule: Rule
    citations: tuple[Citation, ...] = ()
    reason: str | None = None  # a line the evaluator could not read


@dataclass(frozen=True)
class Advice:
    """Every catalog rule in one of three lists, in catalog order, and what was judged."""

    proposed: tuple[Rule, ...]
    left_out: tuple[LeftOut, ...]
    unenforceable: tuple[Rule, ...]
    notes: tuple[str, ...] = ()
    rules: int = 0  # behaviour rules judged
    records: int = 0
    lost: int = 0
    excluded: int = 0

    @property
    def proposed_ids(self) -> tuple[str, ...]:
        return tuple(rule.id for rule in self.proposed)

    @property
    def left_out_ids(self) -> tuple[str, ...]:
        return tuple(item.rule.id for item in self.left_out)


@dataclass
class Observed:
    """Behaviour read back from violation records, with one record per rule to cite."""

    behavior: Behavior = field(default_factory=Behavior)
    examples: dict[BehaviorRule, str] = field(default_factory=dict)
    skipped: int = 0  # records of no modelled kind (or malformed)
    other_profiles: int = 0  # records of other profiles, left out
    profiles: set[str] = field(default_factory=set)  # the (top-level) profiles judged


@lru_cache(maxsize=1024)
def _deny(line: str, exec_rule: bool) -> Deny:
    return parse_deny(line, exec_rule=exec_rule)


def _by_type(behavior: Behavior) -> dict[type, list[tuple[BehaviorRule, int]]]:
    grouped: dict[type, list[tuple[BehaviorRule, int]]] = {}
    for rule, count in behavior.rules.items():
        grouped.setdefault(type(rule), []).append((rule, count))
    return grouped


def _citations(
    rule: Rule, grouped: Mapping[type, list[tuple[BehaviorRule, int]]], examples: Mapping[BehaviorRule, str]
) -> list[Citation]:
    """Every recorded behaviour `rule` would deny, most-recorded first. DenyError when a
    line cannot be evaluated."""
    found: dict[BehaviorRule, Citation] = {}
    for line in rule.apparmor:
        deny = _deny(line, rule.exec)
        for kind in deny.judges:
            for recorded, count in grouped.get(kind, ()):
                if deny.denies(recorded) and recorded not in found:
                    found[recorded] = Citation(recorded, count, line, examples.get(recorded))
    return sorted(found.values(), key=lambda c: (-c.count, describe(c.rule)))


def _notes(behavior: Behavior, proposed: Sequence[Rule]) -> list[str]:
    notes = []
    if behavior.lost:
        notes.append(
            f"{behavior.lost} records were lost before they could be read: behaviour they showed "
            "is not in the model, so a proposed rule may still deny it"
        )
    if any(rule.privileged_only for rule in proposed):
        notes.append(
            "rules marked * matter only for a privileged container (set `privileged: true` for "
            "one); elsewhere its capabilities and the RuntimeDefault base already stop what they block"
        )
    targeted = [rule.id for rule in proposed if rule.targets]
    if targeted:
        notes.append("rules with default targets were judged as if container-wide: " + ", ".join(targeted))
    mounts = [r for r in behavior.of(MountRule) if r.operation in ("mount", "remount", "pivot_root")]
    if mounts:
        notes.append(
            "the workload mounts (" + "; ".join(describe(r) for r in mounts[:3]) + "): the RuntimeDefault "
            "base of a policy without `privileged: true` denies that, whatever rules are chosen"
        )
    return notes


def advise(behavior: Behavior, catalog: Catalog, *, examples: Mapping[BehaviorRule, str] | None = None) -> Advice:
    """Judge every catalog rule (each once, aliases included) against `behavior`."""
    proposed: list[Rule] = []
    left_out: list[LeftOut] = []
    unenforceable: list[Rule] = []
    grouped = _by_type(behavior)
    for rule in catalog:
        if not rule.enforceable:
            unenforceable.append(rule)
            continue
        try:
            cited = _citations(rule, grouped, examples or {})
        except DenyError as exc:
            left_out.append(LeftOut(rule, reason=f"cannot be checked against behaviour: {exc}"))
            continue
        if cited:
            left_out.append(LeftOut(rule, tuple(cited)))
        else:
            proposed.append(rule)
    return Advice(
        tuple(proposed),
        tuple(left_out),
        tuple(unenforceable),
        tuple(_notes(behavior, proposed)),
        rules=len(behavior),
        records=behavior.records,
        lost=behavior.lost,
        excluded=behavior.excluded,
    )


# -- the violations log ---------------------------------------------------------------------


def _record_text(entry: Mapping[str, Any]) -> str:
    fields = entry.get("fields")
    comm = fields.get("comm") if isinstance(fields, Mapping) else None
    text = " ".join(str(entry.get(k) or "") for k in ("action", "operation", "target")).strip()
    text = " ".join(text.split())
    return printable(f"{text}{f' by {comm}' if comm else ''} ({entry.get('profile')})")


def observe_violations(entries: Iterable[Any], *, profile: str | None = None) -> Observed:
    """Behaviour from the agent's violation log entries (`Violation.as_json`): each
    record, whatever its action, is something the workload did or tried. `profile`
    keeps only that profile's records (and its children's)."""
    observed = Observed()
    for entry in entries:
        fields = entry.get("fields") if isinstance(entry, Mapping) else None
        names = [entry.get(k) for k in ("operation", "class", "profile")] if isinstance(entry, Mapping) else []
        if not isinstance(fields, Mapping) or not all(isinstance(n, str) for n in names):
            observed.skipped += 1
            continue
        operation, klass, label = (str(n) for n in names)
        if profile is not None and label.split("//", 1)[0] != profile:
            observed.other_profiles += 1
            continue
        observed.profiles.add(label.split("//", 1)[0])
        text_fields = {str(k): str(v) for k, v in fields.items() if isinstance(v, str | int)}
        rule = observe(operation, klass, text_fields, label)
        if rule is None:
            observed.skipped += 1
            continue
        observed.behavior.add(rule)
        observed.examples.setdefault(rule, _record_text(entry))
    return observed


# -- output -----------------------------------------------------------------------------


def policy_document(
    advice: Advice, name: str, namespace: str, target: Mapping[str, Any], *, privileged: bool = False
) -> dict[str, Any]:
    """An EnhanceProtect VarmorPolicy holding every proposed rule, in catalog order."""
    enhance: dict[str, Any] = {}
    for category, field_name in CATEGORY_FIELDS.items():
        ids = [rule.id for rule in advice.proposed if rule.category == category]
        if ids:  # attack protection rules come in groups (with optional targets)
            enhance[field_name] = [{"rules": ids}] if category == "attack-protection" else ids
    if privileged:
        enhance["privileged"] = True
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.VARMOR_POLICY.kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "target": dict(target),
            "policy": {"enforcer": "AppArmor", "mode": "EnhanceProtect", "enhanceProtect": enhance},
        },
    }


def describe(rule: BehaviorRule) -> str:
    """A behaviour rule in AppArmor's words (protocol included), for a terminal: what a
    workload named is escaped."""
    if isinstance(rule, FileRule):
        text = f"{'owner ' if rule.owner else ''}{rule.path} {rule.perms}"
    elif isinstance(rule, ExecRule):
        text = f"exec {rule.path}"
    elif isinstance(rule, CapabilityRule):
        text = f"capability {rule.name}"
    elif isinstance(rule, NetworkRule):
        text = " ".join(["network", rule.family or "(any family)", rule.sock_type])
        text += f" protocol={rule.protocol}" if rule.protocol else ""
    elif isinstance(rule, PtraceRule):
        text = f"ptrace ({rule.access}) peer={rule.peer}"
    elif isinstance(rule, MountRule):
        conds = [f"fstype={rule.fstype}"] if rule.fstype else []
        conds += [f"options=({rule.flags})"] if rule.flags else []
        ends = [rule.source, "->", rule.mountpoint] if rule.operation == "mount" else [rule.mountpoint]
        text = " ".join(w for w in [rule.operation, *conds, *ends] if w)
    else:
        text = f"signal ({rule.access}) set=({rule.signal}) peer={rule.peer}"
    return printable(" ".join(text.split()))


def _times(count: int) -> str:
    return f"{count} record{'s' if count != 1 else ''}"


def _left_out_lines(item: LeftOut) -> list[str]:
    rule = item.rule
    marks = f" [{_CATEGORY_TITLES[rule.category]}{', privileged only' if rule.privileged_only else ''}]"
    lines = [f"  {rule.id}{marks}"]
    if item.reason:
        lines.append(f"    {item.reason}")
    for cited in item.citations[:SHOWN_CITATIONS]:
        lines.append(f"    would deny {describe(cited.rule)}  ({_times(cited.count)}; by `{cited.line}`)")
        if cited.example:
            lines.append(f"      e.g. {cited.example}")
    if len(item.citations) > SHOWN_CITATIONS:
        more = item.citations[SHOWN_CITATIONS:]
        lines.append(f"    ... and {len(more)} more ({_times(sum(c.count for c in more))})")
    lines.append(f"    may break: {rule.may_break}")
    return lines


def render_report(advice: Advice) -> str:
    """The advice for a person: what is proposed, what is left out and why."""
    counts = [f"{n} {what}" for n, what in ((advice.lost, "lost"), (advice.excluded, "excluded")) if n]
    extra = f" ({', '.join(counts)})" if counts else ""
    out = [
        f"Behaviour: {advice.rules} rules from {_times(advice.records)}{extra}",
        "",
        f"Proposed: {len(advice.proposed)} rules that no recorded behaviour contradicts"
        + (" (* = matters only with privileged: true)" if any(r.privileged_only for r in advice.proposed) else ""),
    ]
    for category, title in _CATEGORY_TITLES.items():
        ids = [r.id + ("*" if r.privileged_only else "") for r in advice.proposed if r.category == category]
        if ids:
            out.append(f"  {title}: {', '.join(ids)}")
    out += ["", f"Left out: {len(advice.left_out)} rules that would deny recorded behaviour"]
    for item in advice.left_out:
        out += _left_out_lines(item)
    if advice.unenforceable:
        out += ["", "Never proposed (AppArmor cannot enforce them): " + ", ".join(r.id for r in advice.unenforceable)]
    if advice.notes:
        out += ["", "Notes:", *(f"  - {note}" for note in advice.notes)]
    return "\n".join(out) + "\n"
