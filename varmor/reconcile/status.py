"""Pure status math the leader writes: the ArmorProfile status body from one profile's
counts (`nodecounts`), and the policy status.

Everything the policy status says is recomputed from its inputs on every pass, so a new
leader after failover computes exactly what the old one would have (vArmor rebuilt its
in-memory counters optimistically).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

# Liveness moved to its own module; its names stay importable from here with the rest of the status math.
from varmor.api import DEFAULT_LOST_AFTER as DEFAULT_LOST_AFTER
from varmor.clock import parse_time as parse_time
from varmor.reconcile.findings import AUDIT_CONDITIONS, Findings, audit_conditions
from varmor.reconcile.liveness import Liveness as Liveness
from varmor.reconcile.liveness import lost_nodes as lost_nodes
from varmor.reconcile.liveness import next_expiry as next_expiry
from varmor.reconcile.nodecounts import NODE_STATES as NODE_STATES
from varmor.reconcile.nodecounts import NodeCondition as NodeCondition
from varmor.reconcile.nodecounts import ProfileStatus
from varmor.reconcile.nodecounts import aggregate as aggregate
from varmor.reconcile.nodecounts import node_state as node_state

JSON = dict[str, Any]
Phase = Literal["Pending", "Protecting", "Modeling", "Completed", "Error"]

MAX_NAMES_IN_MESSAGE = 10


def _names(names: Sequence[str], total: int | None = None) -> str:
    """Up to MAX_NAMES_IN_MESSAGE of `names`, and how many more of `total` there are."""
    shown = ", ".join(names[:MAX_NAMES_IN_MESSAGE])
    more = (len(names) if total is None else total) - min(len(names), MAX_NAMES_IN_MESSAGE)
    return shown + (f" and {more} more" if more > 0 else "")


def _keep_time(previous: Mapping[str, Any] | None, status: str, now: str) -> str:
    """lastTransitionTime moves only when the status changes."""
    if previous and previous.get("status") == status and previous.get("lastTransitionTime"):
        return str(previous["lastTransitionTime"])
    return now


def armor_profile_status(
    ps: ProfileStatus, previous: Mapping[str, Any] | None, now: str, spec: tuple[int, int] | None = None
) -> JSON:
    """The ArmorProfile `.status` body: counts plus one Ready=False condition per listed
    node; with `spec` (generation, the resourceVersion it was first seen at) also those,
    so that a new leader judges watermarks against the same version (`loadindex`)."""
    before = {
        (c.get("nodeName"), c.get("reason")): c for c in (previous or {}).get("conditions") or [] if isinstance(c, dict)
    }
    conditions = []
    for c in ps.conditions:
        prev = before.get((c.node, c.reason))
        conditions.append(
            {
                "type": "Ready",
                "status": "False",
                "reason": c.reason,
                "message": c.message,
                "nodeName": c.node,
                "lastTransitionTime": prev.get("lastTransitionTime", now) if prev else now,
            }
        )
    return {
        "desiredNumberLoaded": ps.desired,
        "currentNumberLoaded": ps.current,
        # Spec and status are separate writes: this says which content the counts are about,
        # so a reader never takes the previous content's counts for the new one's.
        "observedSha256": ps.sha256,
        "conditions": conditions,
    } | ({"observedGeneration": spec[0], "specResourceVersion": str(spec[1])} if spec is not None else {})


# -- policy status -----------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    """What the reconciler did with one policy generation (input to `policy_status`)."""

    generation: int
    profile_name: str | None = None  # set only when the leader accepted the policy
    error_reason: str | None = None  # Invalid, ProfileNameConflict, ...
    error_message: str = ""
    profile_created: bool = False  # the ArmorProfile exists (now or before)
    profile: ProfileStatus | None = None
    extra_conditions: tuple[JSON, ...] = field(default=())  # e.g. Rollout, from the rollout worker
    findings: Findings | None = None  # the latest audit's; None before this leader's first audit
    modeling: JSON | None = None  # status.modeling (BehaviorModeling)
    model: JSON | None = None  # status.model (the behaviour modes)
    modeling_active: bool | None = None  # BehaviorModeling: the window is open; None: another mode


def _ready_condition(o: Outcome) -> tuple[str, str, str]:
    ps = o.profile
    if ps is None:
        if o.error_reason:
            return "False", o.error_reason, o.error_message
        return "False", "Processing", "the profile is being created"
    note = ""
    if unsupported := ps.count("Unsupported"):
        note += f"; {unsupported} node(s) without AppArmor: {_names(ps.nodes('Unsupported'), unsupported)}"
    if lost := ps.count("AgentLost"):
        note += f"; {lost} node(s) whose agent stopped reporting (AgentLost): {_names(ps.nodes('AgentLost'), lost)}"
    if failed := ps.count("LoadFailed"):
        first = next(c for c in ps.conditions if c.reason == "LoadFailed")
        return (
            "False",
            "LoadFailed",
            f"{failed} node(s) failed to load the profile ({_names(ps.failed, failed)}); {first.node}: "
            f"{first.message[:512]}{note}",
        )
    if ps.desired == 0:
        return "False", "NoSupportedNodes", f"no node with a ready varmor agent and AppArmor{note}"
    if ps.ready:
        return "True", "AllNodesLoaded", f"{ps.current}/{ps.desired} nodes loaded the current profile{note}"
    if stale := ps.count("Stale"):
        return (
            "False",
            "Stale",
            f"{ps.current}/{ps.desired} nodes loaded the current profile; stale on "
            f"{_names(ps.nodes('Stale'), stale)}{note}",
        )
    waiting = ps.desired - ps.current
    return (
        "False",
        "Loading",
        f"{ps.current}/{ps.desired} nodes loaded the current profile; waiting for "
        f"{_names(ps.pending, max(waiting, len(ps.pending)))}{note}",
    )


def phase(o: Outcome) -> Phase:
    if o.error_reason or (o.profile is not None and o.profile.count("LoadFailed")):
        return "Error"
    if o.modeling_active is not None:
        return "Modeling" if o.modeling_active else "Completed"
    if o.profile is not None and o.profile.ready:
        return "Protecting"
    return "Pending"


def _by_type(status: Mapping[str, Any]) -> dict[Any, JSON]:
    return {c.get("type"): c for c in status.get("conditions") or [] if isinstance(c, dict)}


def policy_status(
    o: Outcome, previous: Mapping[str, Any] | None, now: str, current: Mapping[str, Any] | None = None
) -> JSON:
    """The policy `.status`, keeping lastTransitionTime for unchanged conditions and
    and the audit's findings (Unprotected, Conflict, unprotectedWorkloads) when this leader
    has audited; before its first audit it carries them from `current`, the status as last
    read from the API, so a new leader does not clear what the previous one found."""
    previous = previous or {}
    old = _by_type(previous)
    audit = _by_type(current) if current is not None else old
    mine: dict[str, tuple[str, str, str]] = {}
    if o.profile_created:
        mine["Created"] = ("True", "ProfileCreated", f"ArmorProfile {o.profile_name} created")
    else:
        mine["Created"] = ("False", o.error_reason or "Processing", o.error_message or "creating the profile")
    if o.profile_created and o.error_reason:
        mine["Updated"] = (
            "False",
            o.error_reason,
            f"{o.error_message}; the previous profile stays in force",
        )
    elif o.profile_created:
        mine["Updated"] = ("True", "ProfileUpToDate", f"ArmorProfile matches generation {o.generation}")
    mine["Ready"] = _ready_condition(o)
    conditions: list[JSON] = []
    for ctype in ("Created", "Updated", "Ready"):
        if ctype not in mine:
            continue
        status, reason, message = mine[ctype]
        conditions.append(
            {
                "type": ctype,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": _keep_time(old.get(ctype), status, now),
                "observedGeneration": o.generation,
            }
        )
    for extra in o.extra_conditions:
        cond = dict(extra)
        cond["lastTransitionTime"] = _keep_time(old.get(cond["type"]), cond["status"], now)
        conditions.append(cond)
    written = {c["type"] for c in conditions}
    conditions.extend(
        c
        for t, c in old.items()
        if t not in written and t not in ("Created", "Updated", "Ready") and t not in AUDIT_CONDITIONS
    )
    if o.findings is not None:
        conditions.extend(audit_conditions(o.findings, audit, now))
    else:  # no audit yet under this leader: keep what the last one found
        conditions.extend(c for t, c in audit.items() if t in AUDIT_CONDITIONS)
    ps = o.profile
    out: JSON = {
        "ready": ps is not None and ps.ready,
        "phase": phase(o),
        "observedGeneration": o.generation,
        "desiredNumberLoaded": ps.desired if ps else 0,
        "currentNumberLoaded": ps.current if ps else 0,
        "conditions": conditions,
    }
    if o.profile_name:
        out["profileName"] = o.profile_name
    if o.modeling is not None:
        out["modeling"] = o.modeling
    if o.model is not None:
        out["model"] = o.model
    if o.findings is not None:
        out["unprotectedWorkloads"] = o.findings.unprotected
    elif "unprotectedWorkloads" in (read := current if current is not None else previous):
        out["unprotectedWorkloads"] = read["unprotectedWorkloads"]
    return out


# Status fields the leader writes (all of them: the audit's findings reach the status
# through the controller too); anything else in status is left alone by its patches.
LEADER_FIELDS = (
    "unprotectedWorkloads",
    "profileName",
    "ready",
    "phase",
    "observedGeneration",
    "desiredNumberLoaded",
    "currentNumberLoaded",
    "conditions",
    "modeling",
    "model",
)


def status_patch(new: Mapping[str, Any], previous: Mapping[str, Any] | None) -> JSON | None:
    """The merge patch turning `previous` into `new` on the leader's fields, or None when
    nothing changed (so an idle leader writes nothing)."""
    previous = previous or {}
    patch: JSON = {}
    for key in LEADER_FIELDS:
        if key in new:
            if previous.get(key) != new[key]:
                patch[key] = new[key]
        elif key in previous:
            patch[key] = None
    return patch or None
