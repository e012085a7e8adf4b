"""Agent liveness in the status math: an ArmorNode whose heartbeat is older than
lost_after is AgentLost (listed, not counted, not blocking Ready); no heartbeat = alive.
Fixed clock readings only."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import SHA, loaded, node
from tests.unit.test_reconcile_status import NOW, OLD
from varmor.reconcile.nodecounts import MAX_NODE_CONDITIONS
from varmor.reconcile.status import (
    DEFAULT_LOST_AFTER,
    Liveness,
    Outcome,
    aggregate,
    armor_profile_status,
    lost_nodes,
    next_expiry,
    parse_time,
    phase,
    policy_status,
)

T0 = dt.datetime(2026, 11, 28, 13, 0, 0, tzinfo=dt.UTC)
PROFILE = "varmor-demo-web"


def beat(seconds_ago: float) -> str:
    return (T0 - dt.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def at(lost_after: float = 180.0, now: dt.datetime = T0) -> Liveness:
    return Liveness(now, lost_after)


def ready_condition(ps: Any) -> dict[str, Any]:
    status = policy_status(Outcome(1, PROFILE, profile_created=True, profile=ps), None, NOW)
    return dict(next(c for c in status["conditions"] if c["type"] == "Ready"))


def test_defaults_are_three_heartbeats() -> None:
    assert DEFAULT_LOST_AFTER == 180.0
    assert Liveness(T0).lost_after == 180.0


def test_recent_heartbeat_is_alive_and_counted() -> None:
    nodes = [node("n1", profiles=loaded(), heartbeatTime=beat(30))]
    ps = aggregate(PROFILE, "demo", SHA, nodes, at())
    assert (ps.desired, ps.current, ps.conditions, ps.ready) == (1, 1, (), True)


def test_heartbeat_exactly_at_the_limit_is_still_alive() -> None:
    assert not at().lost(node("n1", heartbeatTime=beat(180)))
    assert at().lost(node("n1", heartbeatTime=beat(181)))


def test_lost_node_is_listed_not_counted_and_does_not_block_ready() -> None:
    nodes = [
        node("n1", profiles=loaded(), heartbeatTime=beat(10)),
        node("n2", heartbeatTime=beat(600)),  # never loaded it: would block as pending
    ]
    ps = aggregate(PROFILE, "demo", SHA, nodes, at())
    assert (ps.desired, ps.current, ps.ready, ps.pending) == (1, 1, True, ())
    assert ps.nodes("AgentLost") == ["n2"]
    assert beat(600) in ps.conditions[0].message
    body = armor_profile_status(ps, None, NOW)
    assert body["desiredNumberLoaded"] == 1
    assert [(c["reason"], c["nodeName"], c["status"]) for c in body["conditions"]] == [("AgentLost", "n2", "False")]
    ready = ready_condition(ps)
    assert (ready["status"], ready["reason"]) == ("True", "AllNodesLoaded")
    assert "AgentLost" in ready["message"]
    assert "n2" in ready["message"]


def test_no_heartbeat_field_is_alive_forever() -> None:
    """Agents before heartbeats: backwards compatible, counted as before."""
    nodes = [node("n1", profiles=loaded()), node("n2")]
    ps = aggregate(PROFILE, "demo", SHA, nodes, at(now=T0 + dt.timedelta(days=365)))
    assert (ps.desired, ps.current, ps.ready, ps.pending) == (2, 1, False, ("n2",))
    assert ps.nodes("AgentLost") == []
    assert lost_nodes(nodes, at()) == frozenset()
    assert next_expiry(nodes, at()) is None


def test_without_liveness_nothing_is_lost() -> None:
    nodes = [node("n1", profiles=loaded(), heartbeatTime=beat(10_000))]
    assert aggregate(PROFILE, "demo", SHA, nodes).ready


def test_lost_after_zero_disables_detection() -> None:
    nodes = [node("n1", profiles=loaded(), heartbeatTime=beat(10_000))]
    assert aggregate(PROFILE, "demo", SHA, nodes, at(lost_after=0)).ready
    assert next_expiry(nodes, at(lost_after=0)) is None


def test_heartbeat_ahead_of_the_leader_clock_is_alive() -> None:
    assert not at().lost(node("n1", heartbeatTime=beat(-30)))  # agent clock 30 s ahead


def test_malformed_heartbeat_is_treated_as_missing() -> None:
    assert parse_time("yesterday") is None
    assert parse_time(None) is None
    assert parse_time("2026-11-28T13:00:00Z") == T0
    assert not at().lost(node("n1", heartbeatTime="yesterday"))


def test_lost_takes_precedence_over_failed_stale_and_unsupported() -> None:
    """The last report of a gone agent says nothing about now: none of it may block."""
    failed = {PROFILE: {"namespace": "demo", "sha256": SHA, "message": "apparmor_parser: boom"}}
    nodes = [
        node("n1", profiles=loaded(), heartbeatTime=beat(5)),
        node("n2", failures=failed, heartbeatTime=beat(500)),
        node("n3", profiles=loaded(OLD), heartbeatTime=beat(500)),
        node("n4", phase="Unsupported", reason="AppArmor is not enabled", heartbeatTime=beat(500)),
        node("n5", phase="Unsupported", reason="AppArmor is not enabled", heartbeatTime=beat(5)),
        node("n6", ready=False, heartbeatTime=beat(500)),  # died during its initial sync
    ]
    ps = aggregate(PROFILE, "demo", SHA, nodes, at())
    assert (ps.desired, ps.current, ps.ready, ps.failed) == (1, 1, True, [])
    assert ps.nodes("AgentLost") == ["n2", "n3", "n4", "n6"]
    assert ps.nodes("Unsupported") == ["n5"]
    o = Outcome(1, PROFILE, profile_created=True, profile=ps)
    assert phase(o) == "Protecting"
    message = ready_condition(ps)["message"]
    assert "1 node(s) without AppArmor: n5" in message
    assert "4 node(s) whose agent stopped reporting (AgentLost): n2, n3, n4, n6" in message


def test_alive_nodes_still_fail_and_go_stale_next_to_lost_ones() -> None:
    failed = {PROFILE: {"namespace": "demo", "sha256": SHA, "message": "apparmor_parser: boom"}}
    nodes = [
        node("n1", failures=failed, heartbeatTime=beat(5)),
        node("n2", profiles=loaded(OLD)),
        node("n3", heartbeatTime=beat(400)),
    ]
    ps = aggregate(PROFILE, "demo", SHA, nodes, at())
    assert [(c.node, c.reason) for c in ps.conditions] == [("n1", "LoadFailed"), ("n2", "Stale"), ("n3", "AgentLost")]
    assert (ps.desired, ps.ready) == (2, False)
    ready = ready_condition(ps)
    assert ready["reason"] == "LoadFailed"
    assert "n3" in ready["message"]


def test_only_lost_nodes_means_no_supported_nodes_naming_them() -> None:
    ps = aggregate(PROFILE, "demo", SHA, [node("n1", profiles=loaded(), heartbeatTime=beat(900))], at())
    assert (ps.desired, ps.ready) == (0, False)
    ready = ready_condition(ps)
    assert ready["reason"] == "NoSupportedNodes"
    assert "n1" in ready["message"]


def test_lost_condition_is_stable_while_the_node_stays_lost() -> None:
    """Re-evaluating later must not rewrite the ArmorProfile (no age in the message)."""
    nodes = [node("n1", profiles=loaded()), node("n2", heartbeatTime=beat(300))]
    first = armor_profile_status(aggregate(PROFILE, "demo", SHA, nodes, at()), None, NOW)
    later = at(now=T0 + dt.timedelta(hours=2))
    assert armor_profile_status(aggregate(PROFILE, "demo", SHA, nodes, later), first, "2026-11-28T15:00:00Z") == first


def test_next_expiry_is_the_earliest_alive_heartbeat() -> None:
    nodes = [
        node("n1", heartbeatTime=beat(100)),  # 80 s left
        node("n2", heartbeatTime=beat(20)),  # 160 s left
        node("n3", heartbeatTime=beat(500)),  # lost already: nothing to wait for
        node("n4"),  # no heartbeat: never expires
    ]
    assert next_expiry(nodes, at()) == 80.0
    assert lost_nodes(nodes, at()) == frozenset({"n3"})
    assert lost_nodes(nodes, at(now=T0 + dt.timedelta(seconds=81))) == frozenset({"n1", "n3"})


_states = st.sampled_from(["alive", "lost", "none", "lost-unsupported", "unsupported", "lost-failed"])


@given(st.lists(_states, max_size=12), st.integers(min_value=1, max_value=1000))
def test_lost_nodes_never_count_and_never_block(states: list[str], lost_after: int) -> None:
    nodes = []
    failed = {PROFILE: {"namespace": "demo", "sha256": SHA, "message": "x"}}
    for i, s in enumerate(states):
        name = f"n{i:02d}"
        if s == "alive":
            nodes.append(node(name, profiles=loaded(), heartbeatTime=beat(lost_after)))
        elif s == "lost":
            nodes.append(node(name, heartbeatTime=beat(lost_after + 1)))
        elif s == "none":
            nodes.append(node(name, profiles=loaded()))
        elif s == "lost-unsupported":
            nodes.append(node(name, phase="Unsupported", heartbeatTime=beat(lost_after + 5)))
        elif s == "unsupported":
            nodes.append(node(name, phase="Unsupported", heartbeatTime=beat(0)))
        else:
            nodes.append(node(name, failures=failed, heartbeatTime=beat(lost_after * 2 + 1)))
    ps = aggregate(PROFILE, "demo", SHA, nodes, at(lost_after=lost_after))
    count = states.count
    lost = count("lost") + count("lost-unsupported") + count("lost-failed")
    assert ps.desired == ps.current == count("alive") + count("none")
    assert ps.count("AgentLost") == lost
    assert len(ps.nodes("AgentLost")) == min(lost, MAX_NODE_CONDITIONS)  # a status stays small
    assert ps.failed == []
    assert ps.ready == (ps.desired > 0)
    assert len(lost_nodes(nodes, at(lost_after=lost_after))) == lost
    assert lost_nodes(nodes, at(lost_after=lost_after)) >= frozenset(ps.nodes("AgentLost"))


def test_flags_default_to_a_minute_and_three_minutes() -> None:
    from varmor.nodeexec import role as agent_role
    from varmor.reconcile import role as leader_role

    parser = argparse.ArgumentParser()
    agent_role.add_arguments(parser)
    leader_role.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.agent_heartbeat, args.agent_lost_after) == (60.0, 180.0)
    args = parser.parse_args(["--agent-heartbeat=0", "--agent-lost-after=30", "--node-name=n1"])
    assert (args.agent_heartbeat, args.agent_lost_after) == (0.0, 30.0)
    assert agent_role.config_from_args(args).heartbeat_seconds == 0.0
