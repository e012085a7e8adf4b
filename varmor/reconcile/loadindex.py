"""The leader's index of node load reports, so that aggregation costs O(changes).

Without it, every ArmorNode event made the leader re-read every node for every affected
profile: O(nodes x profiles) per round of changes. Here each node's report (`loadreport`)
is kept parsed, the nodes' watermarks in one sorted list and the exceptions by profile
name, so:

* one ArmorProfile's status costs O(log nodes) plus its exceptions, the lost nodes and
  any node still reporting in the earlier format (an agent not yet upgraded);
* one node's new report names exactly the profiles whose verdict it can change: those
  whose spec was first seen between its old and new watermark, and those whose exception
  changed. Only when the node's eligibility changes (ready, phase, report format) do all
  profiles need a look, because every profile's desired count changes.

A report is judged only once the leader has seen every ArmorProfile version up to its
watermark (`loadreport.verdict`); a report ahead of the leader waits (`_waiting`) while
the node's previous report keeps counting, so a node never flaps between two reports.

Pure: the controller feeds it the informers' events and asks for statuses.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from varmor.loadreport import LoadException, NodeReport, parse, resource_version, verdict
from varmor.reconcile.nodecounts import MAX_NODE_CONDITIONS, ProfileStatus, Tally, legacy_verdict

ProfileKey = tuple[str, str]  # (namespace, name)
ALL = None  # "every profile may have changed"


@dataclass(frozen=True)
class NodeView:
    """What the index keeps of one ArmorNode."""

    name: str
    eligible: bool  # Supported and ready: desired everywhere unless lost
    unsupported: str | None  # the reason, when Unsupported
    report: NodeReport | None  # None: the earlier format, judged from `status`
    status: Mapping[str, Any] = field(compare=False, repr=False)

    @property
    def watermark(self) -> int | None:
        return self.report.watermark if self.report is not None else None


def view(name: str, status: Mapping[str, Any]) -> NodeView:
    phase, ready = status.get("phase"), status.get("ready") is True
    unsupported = (
        str(status.get("reason") or "AppArmor is not available on this node") if phase == "Unsupported" else None
    )
    return NodeView(name, phase == "Supported" and ready, unsupported, parse(status), status)


@dataclass(frozen=True)
class SpecVersion:
    """An ArmorProfile's current spec and the resourceVersion it was first seen at."""

    uid: str
    generation: int
    spec_rv: int
    sha256: str


@dataclass
class Changes:
    """What may have changed since the last `LoadIndex.take_changed`: recorded per event in
    O(1) (a resourceVersion range, names), resolved to profiles once per batch."""

    everything: bool = False
    low: int | None = None  # specs first seen in (low, high]
    high: int | None = None
    names: set[str] = field(default_factory=set)
    keys: set[ProfileKey] = field(default_factory=set)

    def between(self, a: int | None, b: int | None) -> None:
        lo, hi = sorted((a or 0, b or 0))
        if lo < hi:
            self.low = lo if self.low is None else min(self.low, lo)
            self.high = hi if self.high is None else max(self.high, hi)

    def __bool__(self) -> bool:
        return self.everything or self.low is not None or bool(self.names) or bool(self.keys)


class LoadIndex:
    def __init__(self) -> None:
        self.nodes: dict[str, NodeView] = {}  # the reports being counted
        self._waiting: dict[str, NodeView] = {}  # newer reports ahead of the leader
        self._waiting_heap: list[tuple[int, str]] = []
        self._marks: list[tuple[int, str]] = []  # (watermark, node) of eligible new-format nodes
        self._exceptions: dict[str, dict[str, LoadException]] = {}  # profile name -> node -> exception
        self._legacy: set[str] = set()  # eligible nodes in the earlier format
        self._unmarked: set[str] = set()  # eligible new-format nodes without a watermark yet
        self._eligible: set[str] = set()
        self._unsupported: dict[str, str] = {}  # node -> reason
        self._keys: dict[str, set[ProfileKey]] = {}  # profile name -> ArmorProfiles of that name
        self.specs: dict[ProfileKey, SpecVersion] = {}
        self._by_rv: list[tuple[int, ProfileKey]] = []
        self.seen: int | None = None  # the highest ArmorProfile resourceVersion the leader has seen
        self.changes = Changes()

    def take_changed(self) -> set[ProfileKey] | None:
        """The profiles whose status may have changed since the last call (None: all)."""
        changes, self.changes = self.changes, Changes()
        if changes.everything:
            return ALL
        keys = changes.keys | {key for name in changes.names for key in self._keys.get(name, ())}
        if changes.low is not None and changes.high is not None:
            start = bisect.bisect_right(self._by_rv, (changes.low, ("\uffff", "\uffff")))
            end = bisect.bisect_right(self._by_rv, (changes.high, ("\uffff", "\uffff")))
            keys.update(key for _, key in self._by_rv[start:end])
        return keys

    # -- ArmorProfiles --------------------------------------------------------------
    def profile(self, key: ProfileKey, obj: Mapping[str, Any], *, deleted: bool = False, watched: bool = True) -> None:
        """Take one ArmorProfile from the watch, or from the leader's own write
        (`watched=False`: it tells the spec's resourceVersion exactly, but not that every
        earlier version was seen). Records in `changes` this profile, and what the nodes'
        waiting reports the leader caught up with change."""
        meta, status = obj.get("metadata") or {}, obj.get("status") or {}
        rv = resource_version(meta.get("resourceVersion"))
        if watched and rv is not None:
            self.seen = rv if self.seen is None else max(self.seen, rv)
        generation = int(meta.get("generation") or 0)
        known = self.specs.get(key)
        stale = known is not None and known.uid == meta.get("uid") and generation < known.generation
        if not stale:  # else: an older version than the leader's own write told
            self._forget(key)
            if not deleted and rv is not None:
                spec_rv = rv
                if known is not None and known.uid == meta.get("uid") and known.generation == generation:
                    spec_rv = known.spec_rv
                elif known is None and status.get("observedGeneration") == generation:
                    spec_rv = resource_version(status.get("specResourceVersion")) or rv
                sha = str(((obj.get("spec") or {}).get("profile") or {}).get("sha256") or "")
                spec = SpecVersion(str(meta.get("uid") or ""), generation, min(spec_rv, rv), sha)
                self.specs[key] = spec
                bisect.insort(self._by_rv, (spec.spec_rv, key))
                self._keys.setdefault(key[1], set()).add(key)
            if self.specs.get(key) != known:  # its owner is reconciled by the event anyway
                self.changes.keys.add(key)
        self._catch_up()

    def _forget(self, key: ProfileKey) -> None:
        old = self.specs.pop(key, None)
        if old is not None:
            self._by_rv.remove((old.spec_rv, key))
            keys = self._keys.get(key[1], set())
            keys.discard(key)
            if not keys:
                self._keys.pop(key[1], None)

    def _catch_up(self) -> None:
        while self._waiting_heap and self.seen is not None and self._waiting_heap[0][0] <= self.seen:
            _, name = heapq.heappop(self._waiting_heap)
            report = self._waiting.get(name)  # the newest; an older entry of the heap may name it first
            if report is not None and (report.watermark or 0) <= self.seen:
                del self._waiting[name]
                self._count(report)

    # -- ArmorNodes -----------------------------------------------------------------
    def node(self, name: str, status: Mapping[str, Any] | None) -> None:
        """Take one ArmorNode event (None: deleted); records in `changes` the profiles
        whose status it may change."""
        if status is None:
            self._waiting.pop(name, None)
            if self._remove(name) is not None:
                self.changes.everything = True  # every profile's desired count changed
            return
        new = view(name, status)
        mark = new.watermark
        if new.eligible and new.report is not None and mark is not None and (self.seen is None or mark > self.seen):
            self._waiting[name] = new  # judged once the leader saw every version it covers
            heapq.heappush(self._waiting_heap, (mark, name))
            old = self.nodes.get(name)
            if old is not None and old.eligible and old.report is not None:
                return  # the previous report keeps counting meanwhile
            # Nothing counted yet: desired, and loaded nowhere until the leader catches up.
            empty = {k: v for k, v in status.items() if k != "watermark"} | {"exceptions": {}}
            new = NodeView(name, True, None, NodeReport(None, {}), empty)
        else:
            self._waiting.pop(name, None)
        self._count(new)

    def _count(self, new: NodeView) -> None:
        old = self.nodes.get(new.name)
        self._remove(new.name)
        self.nodes[new.name] = new
        if new.unsupported is not None:
            self._unsupported[new.name] = new.unsupported
        if new.eligible:
            self._eligible.add(new.name)
            if new.report is None:
                self._legacy.add(new.name)
            else:
                if new.watermark is not None:
                    bisect.insort(self._marks, (new.watermark, new.name))
                else:
                    self._unmarked.add(new.name)
                for profile, exc in new.report.exceptions.items():
                    self._exceptions.setdefault(profile, {})[new.name] = exc
        if old is None or (old.eligible, old.unsupported, old.report is None) != (
            new.eligible,
            new.unsupported,
            new.report is None,
        ):
            self.changes.everything = True  # every profile's desired count changed
        elif new.report is None or old.report is None:
            if new.eligible:
                self.changes.names.update(_legacy_changes(old.status, new.status))
        else:
            self.changes.between(old.watermark, new.watermark)
            before, after = old.report.exceptions, new.report.exceptions
            self.changes.names.update(n for n in set(before) | set(after) if before.get(n) != after.get(n))

    def _remove(self, name: str) -> NodeView | None:
        old = self.nodes.pop(name, None)
        if old is None:
            return None
        self._eligible.discard(name)
        self._legacy.discard(name)
        self._unmarked.discard(name)
        self._unsupported.pop(name, None)
        if old.report is not None:
            if old.watermark is not None and old.eligible:
                index = bisect.bisect_left(self._marks, (old.watermark, name))
                if index < len(self._marks) and self._marks[index] == (old.watermark, name):
                    del self._marks[index]
            for profile in old.report.exceptions:
                nodes = self._exceptions.get(profile)
                if nodes is not None:
                    nodes.pop(name, None)
                    if not nodes:
                        del self._exceptions[profile]
        return old

    # -- aggregation ----------------------------------------------------------------
    def status(self, key: ProfileKey, lost: frozenset[str], lost_message: Callable[[NodeView], str]) -> ProfileStatus:
        """One ArmorProfile's counts and node conditions from the reports counted now:
        the same answer as `status.aggregate` over every node, in O(log nodes) plus the
        profile's exceptions, the lost nodes and the nodes in the earlier format."""
        namespace, name = key
        spec = self.specs.get(key)
        sha, spec_rv = (spec.sha256, spec.spec_rv) if spec is not None else ("", 0)
        tally = Tally(sha)
        for node in sorted(lost):
            if (seen := self.nodes.get(node)) is not None:
                tally.note(node, "AgentLost", lost_message(seen))
        for node, reason in sorted(self._unsupported.items()):
            if node not in lost:
                tally.note(node, "Unsupported", reason)
        tally.desired = len(self._eligible - lost)
        # New-format nodes whose watermark covers this spec: loaded unless an exception says otherwise.
        below = bisect.bisect_left(self._marks, (spec_rv, ""))
        tally.current = len(self._marks) - below - sum(1 for n in lost if self._covers(n, spec_rv))
        for node in sorted(self._exceptions.get(name, {})):
            report = self.nodes[node].report
            if node in lost or report is None or not self._covers(node, spec_rv):
                continue
            result, message = verdict(report, name, namespace, sha, spec_rv, self.seen)
            if result == "Failed":
                tally.current -= 1
                tally.note(node, "LoadFailed", message)
            elif result == "Loading":
                tally.current -= 1
                tally.wait(node)
        for node in sorted(self._legacy - lost):
            legacy, message = legacy_verdict(self.nodes[node].status, name, namespace, sha)
            if legacy == "Loaded":
                tally.current += 1
            elif legacy == "Loading":
                tally.wait(node)
            else:
                tally.note(node, legacy, message)
        waiting = [n for _, n in self._marks[:below] if n not in lost]
        for node in sorted([*waiting, *(self._unmarked - lost)])[:MAX_NODE_CONDITIONS]:
            tally.wait(node)
        return tally.result()

    def _covers(self, node: str, spec_rv: int) -> bool:
        seen = self.nodes.get(node)
        mark = seen.watermark if seen is not None and seen.eligible else None
        return mark is not None and mark >= spec_rv


def _legacy_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> set[str]:
    """Profile names whose entries differ between two statuses in the earlier format."""
    changed: set[str] = set()
    for field_name in ("profiles", "failures"):
        a, b = old.get(field_name) or {}, new.get(field_name) or {}
        changed.update(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return changed
