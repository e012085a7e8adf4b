"""The ArmorNode load report with a real agent (stand-in securityfs), the real leader and
the real API server: an agent upgraded where one of the earlier format ran, and what a
change to one of 200 loaded profiles costs the API server."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from tests.cluster.conftest import LEGACY, quiet
from tests.cluster.test_nodeexec_agent import (
    Host,
    armor_node,
    armor_profile,
    mine,
    node_status_when,
    put,
    running,
    status_settled,
)
from tests.helpers import BAD_TEXT, Api, condition, vpol, wait_for
from varmor import api
from varmor.kube import paths
from varmor.kube.kube import JSON_PATCH, MERGE_PATCH, Kube
from varmor.loadreport import MAX_CHANGE_BYTES
from varmor.nodeexec.agent import Agent
from varmor.nodeexec.standin import StandInSecurityfs, write_enabled_file

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("crds")]
G, V = api.GROUP, api.VERSION
SMALL = "abi <abi/3.0>,\nprofile {name} {{\n  file,\n}}\n"  # quick to compile: 200 of them load fast
SMALL_TOO = "abi <abi/3.0>,\nprofile {name} {{\n  file,\n  deny /etc/shadow r,\n}}\n"


@dataclass(frozen=True)
class Sent:
    """One ArmorNode status write as the client sent it."""

    content_type: str
    body: Any
    wire: bytes  # the request body (the client serialises it with json.dumps)


class RecordingKube(Kube):
    """The agent's status writer's client: records every status write it sends, and once
    `hold` is set keeps further ones from going out (they wait until the agent stops)."""

    def __init__(self, api_client: Any, node: str) -> None:
        super().__init__(api_client, component="agent", instance=node)
        self.sent: list[Sent] = []
        self.hold = False
        self._never = asyncio.Event()

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        request_timeout: float | None = None,
    ) -> dict[str, Any]:
        if method == "PATCH" and path.endswith("/status"):
            if self.hold:
                await self._never.wait()
            wire = json.dumps(self.api_client.sanitize_for_serialization(body)).encode()
            self.sent.append(Sent(content_type, body, wire))
        return await super().request(
            method, path, query=query, body=body, content_type=content_type, request_timeout=request_timeout
        )


@contextlib.contextmanager
def stand_in_node(root: Path, node: str) -> Iterator[Host]:
    """A simulated node named `node` (the host paths and kernel of test_nodeexec_agent's)."""
    write_enabled_file(root / "enabled")
    (root / "partitions").write_text("major minor  #blocks  name\n\n 254        0   52428800 vda\n")
    with StandInSecurityfs(root / "securityfs") as kernel:
        yield Host(node, root, kernel)


def recording(agent: Agent) -> RecordingKube:
    recorder = RecordingKube(agent.kube.api_client, agent.config.node_name)
    agent.status.kube = recorder
    return recorder


# -- upgrade -----------------------------------------------------------------------------
@pytest.mark.parametrize("nodes", [LEGACY], indirect=True)
async def test_an_agent_upgraded_in_place_keeps_its_ready_policy_ready(
    api_client: Any, namespace: str, nodes: Any, leader: Any, tmp_path: Path
) -> None:
    """Before: an agent of the earlier format reported the profile in its map, and the
    leader of that time wrote ArmorProfile statuses without a spec version. After: an
    upgraded leader, then the upgraded agent on that node. The agent's first write replaces
    the whole status (no map left behind), and its first complete report alone, with any
    later write held back, makes the policy Ready again: not Ready for no longer than the
    new agent takes to load. The leader judges the ArmorProfile without a spec version by
    the version it first saw."""
    k, kube = Api(api_client), Kube(api_client)
    node = await nodes.add("upgraded")
    old_leader = await leader()
    await k.create(namespace, vpol("web"))
    profile = f"varmor-{namespace}-web"
    ap = await wait_for(lambda: k.armor_profile(namespace, profile))
    await nodes.load(node, ap)

    async def ready(current: int) -> dict[str, Any] | None:
        pol = await k.get_policy(namespace, "web")
        status = pol.get("status") or {}
        counts = (status.get("desiredNumberLoaded"), status.get("currentNumberLoaded"))
        return pol if status.get("ready") is True and counts == (current, current) else None

    await wait_for(lambda: ready(1))
    await old_leader.stop()
    # The earlier leader wrote no spec version: take it out, as such a leader left it.
    path = paths.custom_path(api.ARMOR_PROFILE, namespace, profile) + "/status"
    body = {"status": {"observedGeneration": None, "specResourceVersion": None}}
    earlier = await kube.request("PATCH", path, body=body, content_type=MERGE_PATCH)
    assert "specResourceVersion" not in earlier["status"]
    assert earlier["status"]["currentNumberLoaded"] == 1

    upgraded = (await leader()).controller
    await wait_for(lambda: upgraded.synced and quiet(upgraded), what="the upgraded leader done")
    assert await ready(1), "the upgraded leader does not read the earlier agent's report"
    judged = await k.armor_profile(namespace, profile)
    assert judged is not None
    assert judged["status"]["specResourceVersion"] == earlier["metadata"]["resourceVersion"]  # first seen there

    with stand_in_node(tmp_path, node) as host:
        host.kernel.set_loaded({profile: "enforce"})  # an agent restart leaves the kernel as it was
        agent = Agent(host.config(), api_client)
        sent = recording(agent)
        async with running(agent):
            await wait_for(lambda: agent.ready, timeout=60, what="the upgraded agent's initial sync reported")
            sent.hold = True  # the leader gets nothing more from this node
            first = sent.sent[0]
            assert first.content_type == JSON_PATCH
            assert [(op["op"], op["path"]) for op in first.body] == [("add", "/status")]
            assert not {"profiles", "failures"} & first.body[0]["value"].keys()
            status = ((await armor_node(api_client, node)) or {}).get("status") or {}
            assert not {"profiles", "failures"} & status.keys()
            assert int(status["watermark"]) >= int(judged["status"]["specResourceVersion"])
            assert status["ready"] is True

            def counted() -> bool:
                """The leader counts this report (not a previous one, not waiting to catch up
                with it), and wrote every status it computed from it."""
                view = upgraded.loads.nodes.get(node)
                return bool(
                    view is not None
                    and view.eligible
                    and view.report is not None
                    and view.status.get("watermark") == status["watermark"]
                    and quiet(upgraded)
                )

            await wait_for(counted, what="the upgraded leader counting the new report")
            pol = await ready(1)
            assert pol is not None, "not Ready from the new agent's first complete report"
            assert condition(pol, "Ready")["reason"] == "AllNodesLoaded"
            ap_now = await k.armor_profile(namespace, profile)
            assert ap_now is not None
            assert (ap_now["status"]["desiredNumberLoaded"], ap_now["status"]["currentNumberLoaded"]) == (1, 1)
            assert ap_now["status"]["conditions"] == []
            host.kernel.settle()
            assert host.kernel.top_level()[profile] == "enforce"


# -- bounded writes --------------------------------------------------------------------------
PROFILES = 200


async def test_a_change_to_one_of_200_loaded_profiles_is_one_small_status_write(
    api_client: Any, namespace: str, tmp_path: Path
) -> None:
    """What the load report is for: with 200 profiles loaded, a changed profile and a
    profile that fails to compile each cost status writes of at most MAX_CHANGE_BYTES
    (request bodies as sent), and the whole ArmorNode status stays under a kilobyte, where
    the earlier format's map held every profile."""
    custom = client.CustomObjectsApi(api_client)
    bodies = [armor_profile(namespace, f"p{i:03d}", text=SMALL) for i in range(PROFILES)]
    for start in range(0, PROFILES, 20):
        await asyncio.gather(*(put(api_client, body) for body in bodies[start : start + 20]))
    names = {b["metadata"]["name"] for b in bodies}
    node = f"node-{namespace}"
    try:
        with stand_in_node(tmp_path, node) as host:
            agent = Agent(host.config(), api_client)
            sent = recording(agent)
            async with running(agent):
                await node_status_when(
                    api_client, host.node, lambda s: s.get("ready") and names <= set(s["profiles"]), timeout=120
                )
                await wait_for(lambda: status_settled(agent), what="the status writer with nothing left to write")

                async def writes_for(change: dict[str, Any], reported: Any) -> list[Sent]:
                    """The status writes the agent sent from `change` until it reported it."""
                    before = len(sent.sent)
                    await put(api_client, change)
                    await node_status_when(api_client, host.node, reported, timeout=60)
                    await wait_for(lambda: status_settled(agent), what="the status writer with nothing left to write")
                    return sent.sent[before:]

                changed = armor_profile(namespace, "p100", text=SMALL_TOO)
                name, sha = changed["metadata"]["name"], changed["spec"]["profile"]["sha256"]
                updates = await writes_for(changed, lambda s: s["profiles"].get(name, {}).get("sha256") == sha)
                bad = armor_profile(namespace, "p150", text=BAD_TEXT)
                failing = bad["metadata"]["name"]
                failures = await writes_for(bad, lambda s: failing in s["failures"])
                status = ((await armor_node(api_client, host.node)) or {}).get("status") or {}
                maps = await node_status_when(api_client, host.node, lambda s: True)
    finally:  # neither may count in other tests: a ready node that never loads, 200 profiles to load
        await custom.delete_collection_namespaced_custom_object(G, V, namespace, "armorprofiles")
        with contextlib.suppress(ApiException):
            await custom.delete_cluster_custom_object(G, V, "armornodes", node)

    sizes = {"update": [len(w.wire) for w in updates], "failure": [len(w.wire) for w in failures]}
    # (Other tests' profiles reach this agent too, while their namespaces go: only ours count.)
    ours = status | {"exceptions": mine(status["exceptions"], namespace)}
    whole, earlier = len(json.dumps(ours)), len(json.dumps({"profiles": mine(maps["profiles"], namespace)}))
    print(f"status writes (bytes): {sizes}; whole status {whole} B; the earlier map of {PROFILES}: {earlier} B")
    for kind, writes in (("update", updates), ("failure", failures)):
        assert writes, f"no status write for the {kind}"
        assert all(w.content_type == MERGE_PATCH for w in writes)  # a patch of what changed, never the whole
        assert max(sizes[kind]) <= MAX_CHANGE_BYTES, [w.wire for w in writes]
    assert any(failing.encode() in w.wire and b'"Failed"' in w.wire for w in failures)
    assert status["exceptions"][failing]["state"] == "Failed"
    assert whole <= 1024, ours
