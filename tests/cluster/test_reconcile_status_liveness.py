"""Lost agents, with the real leader and API server: a simulated node that stops
heartbeating stops blocking Ready once lost_after has passed on the leader's clock, with no
other object changing, is named AgentLost, and counts again as soon as it heartbeats."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cluster.conftest import LEGACY, REPORT
from tests.helpers import Api, ManualClock, condition, vpol, wait_for
from varmor.clock import now_rfc3339, utc_now

pytestmark = pytest.mark.cluster

LOST_AFTER = 2.0


@pytest.fixture
def k(api_client: Any) -> Api:
    return Api(api_client)


@pytest.mark.parametrize("nodes", [REPORT, LEGACY], indirect=True)
async def test_node_whose_agent_stops_heartbeating_turns_agent_lost_and_back(
    k: Api, namespace: str, nodes: Any, leader: Any
) -> None:
    """Time passing is the only input: the leader runs on a manual wall clock, and the test
    writes heartbeats on the same clock, so "no heartbeat for lost_after" is a fact of the
    clock readings, not of how busy the machine is. Both ArmorNode formats (load reports,
    and the per-profile maps of agents not yet upgraded)."""
    clock = ManualClock(wall=utc_now())
    n1 = await nodes.add("n1")  # no heartbeat field: an agent from before heartbeats, always alive
    n2 = await nodes.add("n2", heartbeat=True, at=clock.now())
    run = await leader(lost_after=LOST_AFTER, clock=clock.now)
    controller = run.controller
    await k.create(namespace, vpol("web"))
    name = f"varmor-{namespace}-web"

    async def armor_profile() -> dict[str, Any] | None:
        return await k.armor_profile(namespace, name)

    async def ready_condition() -> dict[str, Any]:
        return condition(await k.get_policy(namespace, "web"), "Ready")

    def seen_beat(stamp: str) -> bool:
        node = controller.nodes.get("", n2) or {}
        return (node.get("status") or {}).get("heartbeatTime") == stamp

    ap = await wait_for(armor_profile)
    await nodes.load(n1, ap)
    # n1 has loaded (the leader has seen it: 1/2); n2 is alive and has not: it blocks Ready.
    loading = await wait_for(
        lambda: _when(
            ready_condition(),
            lambda c: c.get("reason") == "Loading" and c["message"].startswith("1/2 nodes") and n2 in c["message"],
        )
    )
    assert loading["status"] == "False"
    # Heartbeats alone, over several lost_after: never lost, and the leader writes nothing.
    await controller.queue.wait_idle()
    writes = controller.kube.writes
    for _ in range(4):
        clock.advance(LOST_AFTER * 0.75)
        await nodes.beat(n2, at=clock.now())
        await wait_for(lambda: seen_beat(now_rfc3339(clock.now)))
        assert controller.check_liveness() is not None  # n2 is alive: there is an expiry to watch
        await controller.queue.wait_idle()
    assert controller.kube.writes == writes
    assert (await ready_condition())["reason"] == "Loading"

    # The agent is gone: time passes with no heartbeat, and nothing else changes.
    clock.advance(LOST_AFTER + 1.0)
    controller.check_liveness()
    ready = await wait_for(lambda: _when(ready_condition(), lambda c: c.get("status") == "True"))
    assert ready["reason"] == "AllNodesLoaded"
    assert f"(AgentLost): {n2}" in ready["message"]
    policy = await k.get_policy(namespace, "web")
    assert (policy["status"]["desiredNumberLoaded"], policy["status"]["currentNumberLoaded"]) == (1, 1)
    assert policy["status"]["phase"] == "Protecting"
    ap = await armor_profile()
    assert ap is not None
    assert [(c["reason"], c["nodeName"]) for c in ap["status"]["conditions"]] == [("AgentLost", n2)]
    assert "no heartbeat from the varmor agent" in ap["status"]["conditions"][0]["message"]

    # The agent comes back: n2 counts again (and blocks until it loads the profile).
    await nodes.beat(n2, at=clock.now())
    back = await wait_for(lambda: _when(ready_condition(), lambda c: c.get("status") == "False"))
    assert back["reason"] == "Loading"
    assert "AgentLost" not in back["message"]
    await nodes.load(n2, ap)
    ready = await wait_for(lambda: _when(ready_condition(), lambda c: c.get("status") == "True"))
    assert "AgentLost" not in ready["message"]
    ap = await armor_profile()
    assert ap is not None
    assert ap["status"]["conditions"] == []
    assert (ap["status"]["desiredNumberLoaded"], ap["status"]["currentNumberLoaded"]) == (2, 2)


async def _when(value: Any, check: Any) -> Any:
    got = await value
    return got if check(got) else None
