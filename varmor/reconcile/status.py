"""Pure status math: ArmorNodes + ArmorProfile -> counts, per-node conditions, readiness,
and the policy status the leader writes.

Everything is recomputed from the ArmorNode objects on every pass; nothing is kept in
memory between passes, so a new leader after failover computes exactly what the old one
would have (vArmor rebuilt its in-memory counters optimistically). Rules:

* desired = nodes whose agent is ready and whose phase is Supported;
* current = those reporting this profile (same namespace) loaded at spec.profile.sha256;
* a failure recorded at the current hash is LoadFailed; a profile loaded at another hash
  is Stale (visible, never counted as current);
* Unsupported nodes are listed with their reason but are not desired, so they do not
  block readiness on the others;
* Lost nodes (the leader saw no heartbeat from the agent for `lost_after`, on its own
  clock: `varmor.reconcile.liveness`; the DaemonSet no longer runs there, the agent
  crash-loops, the node is NotReady) are listed as AgentLost and are not desired either:
  a report nobody renews says nothing about the node now. Nodes without a heartbeat
  (agents before heartbeats) count as alive;
* ready = at least one desired node, all desired nodes current, none failed.

Liveness is the only input that changes with time alone; the caller passes it (a clock
reading and when each heartbeat was last seen), so this module stays pure and tests use
fixed times.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

# Liveness moved to its own module; its names stay importable from here with the rest of the status math.
from varmor.api import DEFAULT_LOST_AFTER as DEFAULT_LOST_AFTER
from varmor.clock import parse_time as parse_time
from varmor.reconcile.findings import AUDIT_CONDITIONS, Findings, audit_conditions
from varmor.reconcile.liveness import Liveness as Liveness
from varmor.reconcile.liveness import lost_nodes as lost_nodes
from varmor.reconcile.liveness import next_expiry as next_expiry
from varmor.reconcile.liveness import node_name

JSON = dict[str, Any]
NodeReason = Literal["LoadFailed", "Unsupported", "Stale", "AgentLost"]
Phase = Literal["Pending", "Protecting", "Modeling", "Completed", "Error"]

MAX_NAMES_IN_MESSAGE = 10


@dataclass(frozen=True)
class NodeCondition:
    node: str
    reason: NodeReason
    message: str


@dataclass(frozen=True)
class ProfileStatus:
    desired: int
    current: int
    conditions: tuple[NodeCondition, ...] = ()
    pending: tuple[str, ...] = ()  # desired nodes that have not reported this hash yet
    sha256: str = ""  # the profile content these counts are about

    def nodes(self, reason: NodeReason) -> list[str]:
        return [c.node for c in self.conditions if c.reason == reason]

    @property
    def failed(self) -> list[str]:
        return self.nodes("LoadFailed")

    @property
    def ready(self) -> bool:
        return self.desired > 0 and self.current == self.desired and not self.failed


def _entry(entries: Any, profile: str, namespace: str) -> Mapping[str, Any] | None:
    if not isinstance(entries, Mapping):
        return None
    entry = entries.get(profile)
    if isinstance(entry, Mapping) and entry.get("namespace", namespace) == namespace:
        return entry
    return None


def _lost_message(status: Mapping[str, Any], liveness: Liveness) -> str:
    # Stable while the node stays lost, and the same for every leader (no "N seconds ago",
    # no leader clock), so re-evaluating writes nothing. The stamp is the node's clock.
    return (
        f"no heartbeat from the varmor agent for over {liveness.lost_after:g}s (the last one stamped "
        f"{status.get('heartbeatTime')} by the node's clock): is the agent running on this node?"
    )


NodeState = Literal["Ready", "Syncing", "Unsupported", "AgentLost"]
NODE_STATES: tuple[NodeState, ...] = ("Ready", "Syncing", "Unsupported", "AgentLost")


def node_state(node: Mapping[str, Any], liveness: Liveness | None = None) -> NodeState:
    """One ArmorNode's state, judged in `aggregate`'s order: a lost agent first (a report
    nobody renews says nothing about the node now), then no AppArmor, then ready or not."""
    status = node.get("status") or {}
    if liveness is not None and liveness.lost(node):
        return "AgentLost"
    if status.get("phase") == "Unsupported":
        return "Unsupported"
    return "Ready" if status.get("phase") == "Supported" and status.get("ready") is True else "Syncing"


def aggregate(
    profile: str,
    namespace: str,
    sha256: str,
    nodes: Iterable[Mapping[str, Any]],
    liveness: Liveness | None = None,
) -> ProfileStatus:
    """The status of one ArmorProfile (name, namespace, content hash) across ArmorNodes.
    Without `liveness` every node counts as alive."""
    desired = current = 0
    conditions: list[NodeCondition] = []
    pending: list[str] = []
    for node in sorted(nodes, key=node_name):
        name = node_name(node)
        status = node.get("status") or {}
        if liveness is not None and liveness.lost(node):
            # Before Unsupported: a report nobody renews says nothing about the node now.
            conditions.append(NodeCondition(name, "AgentLost", _lost_message(status, liveness)))
            continue
        if status.get("phase") == "Unsupported":
            reason = status.get("reason") or "AppArmor is not available on this node"
            conditions.append(NodeCondition(name, "Unsupported", str(reason)))
            continue
        if status.get("phase") != "Supported" or status.get("ready") is not True:
            continue  # agent missing or still syncing: neither desired nor listed
        desired += 1
        loaded = _entry(status.get("profiles"), profile, namespace)
        failure = _entry(status.get("failures"), profile, namespace)
        if failure is not None and failure.get("sha256") == sha256:
            conditions.append(NodeCondition(name, "LoadFailed", str(failure.get("message") or "load failed")))
        elif loaded is not None and loaded.get("sha256") == sha256:
            current += 1
        elif loaded is not None:
            got = str(loaded.get("sha256") or "?")[:12]
            conditions.append(NodeCondition(name, "Stale", f"loaded at sha256 {got}…, want {sha256[:12]}…"))
        else:
            pending.append(name)
    return ProfileStatus(desired, current, tuple(conditions), tuple(pending), sha256)


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES_IN_MESSAGE])
    more = len(names) - MAX_NAMES_IN_MESSAGE
    return shown + (f" and {more} more" if more > 0 else "")


def _keep_time(previous: Mapping[str, Any] | None, status: str, now: str) -> str:
    """lastTransitionTime moves only when the status changes."""
    if previous and previous.get("status") == status and previous.get("lastTransitionTime"):
        return str(previous["lastTransitionTime"])
    return now


def armor_profile_status(ps: ProfileStatus, previous: Mapping[str, Any] | None, now: str) -> JSON:
    """The ArmorProfile `.status` body: counts plus one Ready=False condition per listed node."""
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
    }


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
    unsupported = ps.nodes("Unsupported")
    lost = ps.nodes("AgentLost")
    note = f"; {len(unsupported)} node(s) without AppArmor: {_names(unsupported)}" if unsupported else ""
    if lost:
        note += f"; {len(lost)} node(s) whose agent stopped reporting (AgentLost): {_names(lost)}"
    if ps.failed:
        msgs = [c for c in ps.conditions if c.reason == "LoadFailed"]
        first = msgs[0]
        return (
            "False",
            "LoadFailed",
            f"{len(msgs)} node(s) failed to load the profile ({_names(ps.failed)}); {first.node}: "
            f"{first.message[:512]}{note}",
        )
    if ps.desired == 0:
        return "False", "NoSupportedNodes", f"no node with a ready varmor agent and AppArmor{note}"
    stale = ps.nodes("Stale")
    if ps.ready:
        return "True", "AllNodesLoaded", f"{ps.current}/{ps.desired} nodes loaded the current profile{note}"
    if stale:
        return (
            "False",
            "Stale",
            f"{ps.current}/{ps.desired} nodes loaded the current profile; stale on {_names(stale)}{note}",
        )
    return (
        "False",
        "Loading",
        f"{ps.current}/{ps.desired} nodes loaded the current profile; waiting for {_names(ps.pending)}{note}",
    )


def phase(o: Outcome) -> Phase:
    if o.error_reason or (o.profile is not None and o.profile.failed):
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
