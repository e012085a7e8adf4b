"""Agent liveness independent of the nodes' clocks: the leader judges a heartbeat by when
it saw it change, on its own clock, and dates a node it has just met by the API server's
timestamp of the agent's last status write. Fixed clock readings only."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import SHA, loaded, node
from varmor.clock import rfc3339
from varmor.reconcile.liveness import Heartbeats, Liveness, Offset, agent_written, lost_nodes, next_expiry
from varmor.reconcile.status import aggregate

T0 = dt.datetime(2026, 11, 28, 13, 0, 0, tzinfo=dt.UTC)  # the leader's clock
LOST_AFTER = 180.0
PROFILE = "varmor-demo-web"


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def armor_node(name: str, stamp: dt.datetime, written: dt.datetime | None = None, **status: Any) -> dict[str, Any]:
    """An ArmorNode whose agent stamped `stamp` (its own clock) and whose last status write
    the API server took at `written` (the server's clock, in managedFields)."""
    obj = node(name, heartbeatTime=rfc3339(stamp), **status)
    if written is not None:
        obj["metadata"]["managedFields"] = [
            {"manager": "kubectl", "operation": "Update", "time": rfc3339(written - dt.timedelta(hours=1))},
            {"manager": "OpenAPI-Generator", "operation": "Update", "subresource": "status", "time": rfc3339(written)},
        ]
    return obj


def judge(heartbeats: Heartbeats, nodes: list[dict[str, Any]], now: dt.datetime) -> Liveness:
    return Liveness(now, LOST_AFTER, heartbeats.observe(nodes, now))


def test_node_clock_ten_minutes_off_either_way_changes_nothing() -> None:
    """A node ahead and a node behind heartbeat alike; silent, each is lost lost_after
    after the leader last saw its heartbeat change, whatever the stamps say."""
    hb = Heartbeats()
    ahead, behind = dt.timedelta(minutes=10), -dt.timedelta(minutes=10)
    for t in range(0, 600, 60):  # both agents beat every minute for ten minutes
        nodes = [armor_node("ahead", at(t) + ahead), armor_node("behind", at(t) + behind)]
        assert lost_nodes(nodes, judge(hb, nodes, at(t))) == frozenset()
    # both stop after the beat at 540 s: alive up to 540 + 180 s, lost just after
    assert lost_nodes(nodes, judge(hb, nodes, at(540 + LOST_AFTER))) == frozenset()
    assert next_expiry(nodes, judge(hb, nodes, at(600))) == 120.0
    assert lost_nodes(nodes, judge(hb, nodes, at(540 + LOST_AFTER + 1))) == frozenset({"ahead", "behind"})


def test_stamps_alone_are_the_old_judgement_and_are_fooled_by_skew() -> None:
    """Why: read as times, a stamp 10 minutes ahead keeps a dead agent alive for 10
    minutes, and a stamp 10 minutes behind makes a live one lost at once."""
    stamps_only = Liveness(at(600), LOST_AFTER)
    dead_ahead = armor_node("ahead", at(0) + dt.timedelta(minutes=10))  # silent for 600 s
    live_behind = armor_node("behind", at(600) - dt.timedelta(minutes=10))  # beat just now
    assert not stamps_only.lost(dead_ahead)
    assert stamps_only.lost(live_behind)
    hb = Heartbeats()
    judge(hb, [dead_ahead, live_behind], at(0))
    live_behind = armor_node("behind", at(600) - dt.timedelta(minutes=9, seconds=59))
    seen = judge(hb, [dead_ahead, live_behind], at(600))
    assert seen.lost(dead_ahead)
    assert not seen.lost(live_behind)


def test_a_status_write_in_the_same_second_still_counts_as_heard() -> None:
    """The server's write time is part of the heartbeat: a full status write whose stamp
    repeats (same second, or a node clock set back onto an old value) still proves life."""
    hb = Heartbeats()
    judge(hb, [armor_node("n1", at(0), written=at(0))], at(0))
    again = armor_node("n1", at(0), written=at(100))
    assert judge(hb, [again], at(100)).heard == {"n1": at(100)}
    assert judge(hb, [again], at(250)).heard == {"n1": at(100)}  # nothing new: unchanged


def test_new_leader_sees_a_long_dead_agent_lost_at_once_and_a_live_one_alive() -> None:
    """Failover: the first sight of each node is dated by the server's timestamp of its
    agent's last status write, on the leader's clock through the measured offset; here the
    leader's own clock is 7 minutes behind the server's and the nodes' stamps are junk."""
    skew = dt.timedelta(minutes=7)  # server minus leader
    hb = Heartbeats(offset=Offset(server=at(0) + skew, after=at(0)))
    dead = armor_node("dead", at(3600), written=at(-3600) + skew, profiles=loaded())  # stamp an hour ahead
    live = armor_node("live", at(-3600), written=at(-5) + skew, profiles=loaded())  # stamp an hour behind
    liveness = judge(hb, [dead, live], at(0))
    assert lost_nodes([dead, live], liveness) == frozenset({"dead"})
    ps = aggregate(PROFILE, "demo", SHA, [dead, live], liveness)
    assert (ps.desired, ps.current, ps.nodes("AgentLost")) == (1, 1, ["dead"])
    # the live one was written 5 s ago (+1 s for the server's rounding): 174 s left
    assert next_expiry([dead, live], liveness) == LOST_AFTER - 4


def test_without_the_server_clock_first_sight_is_now() -> None:
    """The measurement failed: the grace period of the lifecycle controller (a dead agent
    turns lost lost_after after the leader started, never a live one earlier)."""
    hb = Heartbeats()
    dead = armor_node("dead", at(-3600), written=at(-3600))
    assert judge(hb, [dead], at(0)).heard == {"dead": at(0)}
    assert not judge(hb, [dead], at(LOST_AFTER)).lost(dead)
    assert judge(hb, [dead], at(LOST_AFTER + 1)).lost(dead)


def test_first_sight_is_never_in_the_future_and_deleted_nodes_are_forgotten() -> None:
    hb = Heartbeats(offset=Offset(server=at(0), after=at(0)))
    fresh = armor_node("n1", at(0), written=at(30))  # written "after now": a late clock reading
    assert judge(hb, [fresh], at(0)).heard == {"n1": at(0)}
    assert judge(hb, [], at(10)).heard == {}
    met_again = armor_node("n1", at(0), written=at(-500))
    assert judge(hb, [met_again], at(20)).lost(met_again)  # dated again, by its write 500 s ago


def test_no_heartbeat_is_alive_and_not_tracked() -> None:
    hb = Heartbeats()
    old = node("n1", profiles=loaded())
    assert judge(hb, [old], at(0)).heard == {}
    assert not judge(hb, [old], at(10**6)).lost(old)
    assert agent_written(old) is None


def test_a_node_the_leader_has_not_observed_yet_counts_as_just_heard() -> None:
    liveness = Liveness(at(0), LOST_AFTER, heard={})
    assert not liveness.lost(armor_node("n1", at(-(10**6))))
    assert liveness.expires_in(armor_node("n1", at(-(10**6)))) == LOST_AFTER


@given(
    true_age=st.floats(min_value=0, max_value=3600),
    skew=st.floats(min_value=-3600, max_value=3600),
    latency=st.floats(min_value=0, max_value=2),
)
def test_seeded_first_sight_never_makes_an_agent_older_than_it_is(true_age: float, skew: float, latency: float) -> None:
    """Both server timestamps are truncated to the second, and the review's answer takes
    `latency` to come back: the estimate of the agent's last write on the leader's clock
    is never earlier than the truth, and at most 2 s + latency later."""
    now, server_skew = at(0), dt.timedelta(seconds=skew)
    review = now - dt.timedelta(seconds=latency) + server_skew  # stamped by the server before we read `now`
    truth = now - dt.timedelta(seconds=true_age)  # the agent's last write, on the leader's clock
    hb = Heartbeats(offset=Offset(server=review.replace(microsecond=0), after=now))
    seeded = hb.first_sight(armor_node("n1", at(0), written=truth + server_skew), now)  # rfc3339 truncates
    assert seeded >= truth - dt.timedelta(microseconds=1)
    assert (seeded - truth).total_seconds() <= 2 + latency + 1e-6
