"""Per-node verdicts -> one ArmorProfile's counts, node conditions and readiness.

`aggregate` is the definition, node by node; the leader keeps the same answer indexed
(`loadindex`). Rules:

* desired = nodes whose agent is ready and whose phase is Supported, and not lost;
* current = those whose report proves this profile's current content loaded: a watermark
  covering the spec and no exception for it (`varmor.loadreport`), or, from an agent not
  yet upgraded, a map entry at spec.profile.sha256;
* a failure recorded at the current hash is LoadFailed; a profile an older agent reports
  at another hash is Stale (visible, never counted as current);
* Unsupported nodes are listed with their reason but are not desired, so they do not
  block readiness on the others;
* Lost nodes (the leader saw no heartbeat from the agent for `lost_after`, on its own
  clock: `varmor.reconcile.liveness`) are listed as AgentLost and are not desired either:
  a report nobody renews says nothing about the node now;
* ready = at least one desired node, all desired nodes current, none failed.

At most MAX_NODE_CONDITIONS nodes are listed per reason, so a status stays small on a
cluster of any size; the counts stay exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from varmor.loadreport import parse as parse_report
from varmor.loadreport import verdict as report_verdict
from varmor.reconcile.liveness import Liveness, node_name

NodeReason = Literal["LoadFailed", "Unsupported", "Stale", "AgentLost"]

MAX_NODE_CONDITIONS = 10  # per reason, in an ArmorProfile's status; the counts say how many in all
REASON_ORDER: tuple[NodeReason, ...] = ("AgentLost", "LoadFailed", "Unsupported", "Stale")


@dataclass(frozen=True)
class NodeCondition:
    node: str
    reason: NodeReason
    message: str


@dataclass(frozen=True)
class ProfileStatus:
    desired: int
    current: int
    conditions: tuple[NodeCondition, ...] = ()  # at most MAX_NODE_CONDITIONS per reason
    pending: tuple[str, ...] = ()  # desired nodes that have not reported this content yet (some of them)
    sha256: str = ""  # the profile content these counts are about
    counts: Mapping[NodeReason, int] = field(default_factory=dict)  # nodes per reason, listed or not

    def nodes(self, reason: NodeReason) -> list[str]:
        return [c.node for c in self.conditions if c.reason == reason]

    def count(self, reason: NodeReason) -> int:
        return self.counts.get(reason, len(self.nodes(reason)))

    @property
    def failed(self) -> list[str]:
        return self.nodes("LoadFailed")

    @property
    def ready(self) -> bool:
        return self.desired > 0 and self.current == self.desired and not self.count("LoadFailed")


class Tally:
    """Builds a ProfileStatus node by node, listing a bounded number of nodes per reason,
    so a status stays small on a cluster of any size (the counts stay exact)."""

    def __init__(self, sha256: str) -> None:
        self.sha256 = sha256
        self.desired = self.current = 0
        self._listed: dict[NodeReason, list[NodeCondition]] = {}
        self._counts: dict[NodeReason, int] = {}
        self._pending: list[str] = []

    def note(self, node: str, reason: NodeReason, message: str) -> None:
        self._counts[reason] = self._counts.get(reason, 0) + 1
        if len(entries := self._listed.setdefault(reason, [])) < MAX_NODE_CONDITIONS:
            entries.append(NodeCondition(node, reason, message))

    def wait(self, node: str) -> None:
        self._pending.append(node)

    def result(self) -> ProfileStatus:
        conditions = tuple(sorted((c for cs in self._listed.values() for c in cs), key=_order))
        pending = tuple(sorted(self._pending)[:MAX_NODE_CONDITIONS])
        return ProfileStatus(self.desired, self.current, conditions, pending, self.sha256, dict(self._counts))


def _order(condition: NodeCondition) -> tuple[str, int]:
    return condition.node, REASON_ORDER.index(condition.reason)


def _entry(entries: Any, profile: str, namespace: str) -> Mapping[str, Any] | None:
    if not isinstance(entries, Mapping):
        return None
    entry = entries.get(profile)
    if isinstance(entry, Mapping) and entry.get("namespace", namespace) == namespace:
        return entry
    return None


LegacyVerdict = Literal["Loaded", "Loading", "LoadFailed", "Stale"]


def legacy_verdict(status: Mapping[str, Any], profile: str, namespace: str, sha256: str) -> tuple[LegacyVerdict, str]:
    """One node's verdict from a status in the earlier format (a map of every loaded
    profile), written by an agent not yet upgraded."""
    loaded = _entry(status.get("profiles"), profile, namespace)
    failure = _entry(status.get("failures"), profile, namespace)
    if failure is not None and failure.get("sha256") == sha256:
        return "LoadFailed", str(failure.get("message") or "load failed")
    if loaded is not None and loaded.get("sha256") == sha256:
        return "Loaded", ""
    if loaded is not None:
        got = str(loaded.get("sha256") or "?")[:12]
        return "Stale", f"loaded at sha256 {got}…, want {sha256[:12]}…"
    return "Loading", ""


def lost_message(status: Mapping[str, Any], lost_after: float) -> str:
    # Stable while the node stays lost, and the same for every leader (no "N seconds ago",
    # no leader clock), so re-evaluating writes nothing. The stamp is the node's clock.
    return (
        f"no heartbeat from the varmor agent for over {lost_after:g}s (the last one stamped "
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
    *,
    spec_rv: int = 0,
    leader_seen: int | None = None,
) -> ProfileStatus:
    """The status of one ArmorProfile (name, namespace, content hash, and the
    resourceVersion its spec was first seen at) across ArmorNodes, node by node. The
    leader keeps the same answer indexed (`loadindex`); this is its definition. Without
    `liveness` every node counts as alive."""
    tally = Tally(sha256)
    for node in sorted(nodes, key=node_name):
        name = node_name(node)
        status = node.get("status") or {}
        if liveness is not None and liveness.lost(node):
            # Before Unsupported: a report nobody renews says nothing about the node now.
            tally.note(name, "AgentLost", lost_message(status, liveness.lost_after))
            continue
        if status.get("phase") == "Unsupported":
            tally.note(name, "Unsupported", str(status.get("reason") or "AppArmor is not available on this node"))
            continue
        if status.get("phase") != "Supported" or status.get("ready") is not True:
            continue  # agent missing or still syncing: neither desired nor listed
        tally.desired += 1
        report = parse_report(status)
        if report is None:
            result, message = legacy_verdict(status, profile, namespace, sha256)
        else:
            found, message = report_verdict(report, profile, namespace, sha256, spec_rv, leader_seen)
            result = "LoadFailed" if found == "Failed" else found
        if result == "Loaded":
            tally.current += 1
        elif result == "Loading":
            tally.wait(name)
        else:
            tally.note(name, result, message)
    return tally.result()
