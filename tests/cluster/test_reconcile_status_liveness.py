"""Lost agents, with the real leader and API server: a simulated node that stops
heartbeating stops blocking Ready within lost_after + a few seconds, with no other object
changing, is named AgentLost, and counts again as soon as it heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.helpers import Api, condition, vpol, wait_for

pytestmark = pytest.mark.cluster

LOST_AFTER = 2.0


@pytest.fixture
def k(api_client: Any) -> Api:
    return Api(api_client)


@contextlib.asynccontextmanager
async def heartbeating(nodes: Any, name: str, interval: float = 0.4) -> AsyncIterator[None]:
    """An idle live agent: renews the heartbeat until the block ends (the agent goes)."""

    async def loop() -> None:
        while True:
            await nodes.beat(name)
            await asyncio.sleep(interval)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_node_whose_agent_stops_heartbeating_turns_agent_lost_and_back(
    k: Api, namespace: str, nodes: Any, leader: Any
) -> None:
    n1 = await nodes.add("n1")  # no heartbeat field: an agent from before heartbeats, always alive
    n2 = await nodes.add("n2", heartbeat=True)
    run = await leader(lost_after=LOST_AFTER)
    await k.create(namespace, vpol("web"))
    name = f"varmor-{namespace}-web"

    async def armor_profile() -> dict[str, Any] | None:
        return await k.armor_profile(namespace, name)

    async def ready_condition() -> dict[str, Any]:
        return condition(await k.get_policy(namespace, "web"), "Ready")

    async with heartbeating(nodes, n2):
        ap = await wait_for(armor_profile)
        await nodes.load(n1, ap)
        # n2 is alive and has not loaded the profile: it blocks Ready.
        loading = await wait_for(
            lambda: _when(ready_condition(), lambda c: c.get("reason") == "Loading" and n2 in c["message"])
        )
        assert loading["status"] == "False"
        await asyncio.sleep(LOST_AFTER + 0.5)  # heartbeats alone: never lost, and the leader writes nothing
        writes = run.controller.kube.writes
        await asyncio.sleep(1.0)
        assert run.controller.kube.writes == writes
        assert (await ready_condition())["reason"] == "Loading"

    # The agent is gone. Nothing else changes; the leader notices on its own.
    loop = asyncio.get_running_loop()
    stopped = loop.time()
    ready = await wait_for(
        lambda: _when(ready_condition(), lambda c: c.get("status") == "True"), timeout=LOST_AFTER + 6
    )
    assert loop.time() - stopped < LOST_AFTER + 4  # lost_after, 1 s heartbeat precision, 1 s margin
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
    async with heartbeating(nodes, n2):
        back = await wait_for(lambda: _when(ready_condition(), lambda c: c.get("status") == "False"), timeout=5)
        assert back["reason"] == "Loading"
        assert "AgentLost" not in back["message"]
        await nodes.load(n2, ap)
        ready = await wait_for(lambda: _when(ready_condition(), lambda c: c.get("status") == "True"), timeout=5)
        assert "AgentLost" not in ready["message"]
        ap = await armor_profile()
        assert ap is not None
        assert ap["status"]["conditions"] == []
        assert (ap["status"]["desiredNumberLoaded"], ap["status"]["currentNumberLoaded"]) == (2, 2)


async def _when(value: Any, check: Any) -> Any:
    got = await value
    return got if check(got) else None
