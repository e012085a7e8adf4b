"""A node whose clock is minutes off the control plane's: the node VM boots with its
real-time clock 4 minutes behind the host's (qemu `-rtc base=`), and nothing in it corrects
that. Every other test of this layer runs on that node, so the whole chain works under the
skew; this one shows the skew is real and that the leader counts the node's live agent as
alive (its heartbeats, read as times, are 4 minutes older than the leader's clock, past
the 3-minute `--agent-lost-after`)."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest

from tests.helpers import wait_for
from tests.node.conftest import NODE_CLOCK_OFFSET, Node

pytestmark = pytest.mark.node


async def nodes_by_state(node: Node) -> dict[str, float]:
    """The leader's `varmor_nodes{state}` gauge (the manager process leads: it is alone)."""
    manager = next(p for p in node.install.processes if p.name == "manager")
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{manager.metrics_port}/metrics") as r:
        text = await r.text()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("varmor_nodes{"):
            state = line.split('state="', 1)[1].split('"', 1)[0]
            found[state] = float(line.rsplit(" ", 1)[1])
    return found


async def test_a_node_minutes_behind_keeps_its_live_agent_alive(node: Node, api_client: Any) -> None:
    behind = time.time() - int(node.run("date +%s").strip())
    offset = -NODE_CLOCK_OFFSET.total_seconds()
    assert offset - 30 < behind < offset + 30, f"the node's clock is {behind:.0f} s behind, not {offset:.0f} s"

    stamp = (await _armor_node(api_client, node))["status"]["heartbeatTime"]
    assert stamp < time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - offset + 30))

    async def alive() -> bool:
        states = await nodes_by_state(node)
        return states.get("Ready") == 1 and states.get("AgentLost", 0) == 0

    await wait_for(alive, timeout=60, what="the leader counting the skewed node's agent Ready, not AgentLost")


async def _armor_node(api_client: Any, node: Node) -> dict[str, Any]:
    from kubernetes.aio import client

    found: dict[str, Any] = await client.CustomObjectsApi(api_client).get_cluster_custom_object(
        "crd.varmor.org", "v1beta1", "armornodes", node.name
    )
    return found
