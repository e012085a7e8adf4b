"""Agent liveness on the leader's clock alone: pure.

An agent proves it is alive by renewing its ArmorNode's heartbeat. `heartbeatTime` is
stamped by the node's wall clock, which may be minutes off the leader's: read as a time,
a node 10 minutes ahead would keep its dead agent "alive" for 10 minutes, and a node
behind would make a live agent look lost. So the leader never reads the stamp as a time.
It notes *when it saw the heartbeat change*, on its own clock, as Kubernetes' node
lifecycle controller does with its probe timestamps; a changed stamp (or a new status
write of the agent) is the heartbeat, whatever time it names.

A leader that has just started saw no change yet. Counting every node from "now" (the
lifecycle controller's grace period) would make an agent dead for an hour count again for
`lost_after` after each failover, and flip readiness twice. Instead the first sight of a
node is dated by the API server's own timestamp of the agent's last status write
(`metadata.managedFields[].time`), moved onto the leader's clock by the offset between
the server's clock and the leader's, measured once per term (`Offset`). Both timestamps
are the server's, so no node clock plays a part, and the leader's own skew is measured,
not assumed. Without a measurement the first sight is "now": a dead agent then turns lost
`lost_after` after the leader started, never earlier.

The server's timestamps have 1 s precision; each is rounded the way that makes an agent
look younger, so an estimate never makes a live agent lost.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from varmor.api import DEFAULT_LOST_AFTER
from varmor.clock import parse_time

SECOND = dt.timedelta(seconds=1)
Marker = tuple[str, str]  # (heartbeatTime as written, the server's time of the agent's last status write)


def node_name(node: Mapping[str, Any]) -> str:
    return str(node.get("metadata", {}).get("name", ""))


def stamp(node: Mapping[str, Any]) -> str | None:
    """The agent's heartbeatTime, if it writes one (a well-formed one)."""
    value = (node.get("status") or {}).get("heartbeatTime")
    return value if parse_time(value) is not None else None


def agent_written(node: Mapping[str, Any]) -> dt.datetime | None:
    """When the API server last took a status write of this ArmorNode that changed it (its
    managedFields entry for the status subresource: only the node's agent writes there)."""
    times = [
        parse_time(entry.get("time"))
        for entry in node.get("metadata", {}).get("managedFields") or []
        if isinstance(entry, Mapping) and entry.get("subresource") == "status"
    ]
    known = [t for t in times if t is not None]
    return max(known) if known else None


@dataclass(frozen=True)
class Offset:
    """The API server's clock against the leader's, from one server timestamp `server` (1 s
    precision) stamped before the leader's clock read `after`. `low` (server minus leader)
    is the smallest offset consistent with that: it dates server events latest on our clock."""

    server: dt.datetime
    after: dt.datetime

    @property
    def low(self) -> dt.timedelta:
        return self.server - self.after

    def to_local(self, server_time: dt.datetime) -> dt.datetime:
        """The latest leader-clock time a server timestamp (truncated to the second) can
        stand for."""
        return server_time + SECOND - self.low


@dataclass
class Heartbeats:
    """When the leader last saw each ArmorNode's heartbeat change, on the leader's clock."""

    offset: Offset | None = None
    _seen: dict[str, tuple[Marker, dt.datetime]] = field(default_factory=dict)

    def first_sight(self, node: Mapping[str, Any], now: dt.datetime) -> dt.datetime:
        written = agent_written(node)
        if self.offset is None or written is None:
            return now
        return min(now, self.offset.to_local(written))

    def note(self, node: Mapping[str, Any], now: dt.datetime) -> dt.datetime | None:
        """Take one ArmorNode as seen at leader time `now`; returns when its heartbeat was
        last seen to change (None: it has none)."""
        name, beat = node_name(node), stamp(node)
        if beat is None:
            self._seen.pop(name, None)
            return None  # an agent from before heartbeats: alive for good
        written = agent_written(node)
        marker = (beat, written.isoformat() if written else "")
        previous = self._seen.get(name)
        if previous is None:
            previous = (marker, self.first_sight(node, now))
        elif previous[0] != marker:
            previous = (marker, now)
        self._seen[name] = previous
        return previous[1]

    def observe(self, nodes: Iterable[Mapping[str, Any]], now: dt.datetime) -> dict[str, dt.datetime]:
        """Take the current ArmorNodes (all of them: the ones missing are forgotten);
        returns node -> when its heartbeat was last seen to change."""
        heard = {node_name(n): at for n in nodes if (at := self.note(n, now)) is not None}
        self._seen = {name: entry for name, entry in self._seen.items() if name in heard}
        return heard


@dataclass(frozen=True)
class Liveness:
    """Which ArmorNodes still have a live agent, at one reading `now` of the judge's clock.

    `heard` (node -> when its heartbeat last changed, on the same clock: `Heartbeats`) is
    what the leader judges by. Without it the heartbeatTime stamps are read as times on
    `now`'s clock: only for a one-shot judge with no history (the uninstall hook), which
    then trusts the node clocks."""

    now: dt.datetime
    lost_after: float = DEFAULT_LOST_AFTER
    heard: Mapping[str, dt.datetime] | None = None

    def last_heard(self, node: Mapping[str, Any]) -> dt.datetime | None:
        """None: no heartbeat to judge by (alive)."""
        beat = stamp(node)
        if beat is None:
            return None
        if self.heard is None:
            return parse_time(beat)
        return self.heard.get(node_name(node), self.now)  # not observed yet: just now

    def lost(self, node: Mapping[str, Any]) -> bool:
        """Silent for more than lost_after = gone. No heartbeat at all (an older agent) is
        alive; a stamp ahead of `now` is alive; lost_after <= 0 turns detection off."""
        if self.lost_after <= 0:
            return False
        heard = self.last_heard(node)
        return heard is not None and (self.now - heard).total_seconds() > self.lost_after

    def expires_in(self, node: Mapping[str, Any]) -> float | None:
        """Seconds until this alive node turns lost if its agent stays silent; None when
        it has no heartbeat or is lost already."""
        heard = self.last_heard(node)
        if heard is None or self.lost_after <= 0:
            return None
        left = self.lost_after - (self.now - heard).total_seconds()
        return left if left >= 0 else None


def lost_nodes(nodes: Iterable[Mapping[str, Any]], liveness: Liveness) -> frozenset[str]:
    return frozenset(node_name(n) for n in nodes if liveness.lost(n))


def next_expiry(nodes: Iterable[Mapping[str, Any]], liveness: Liveness) -> float | None:
    """Seconds until the first alive node turns lost (when to look again), or None."""
    times = [t for t in (liveness.expires_in(n) for n in nodes) if t is not None]
    return min(times) if times else None
