"""`varmor cleanup` (the chart's pre-delete hook): it does not stall on nodes whose agent
is gone, and it leaves no webhook configuration even while a leader is still running."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from kubernetes.aio import client

from tests.cluster.conftest import LEGACY, REPORT
from varmor.kube.client import ApiException
from varmor.reconcile.cleanup import cleanup

pytestmark = pytest.mark.cluster


def holding(nodes: Any, count: int) -> dict[str, Any]:
    """Status fields saying the node's kernel holds `count` varmor profiles, in the
    simulated agents' format (the earlier one listed them)."""
    if nodes.fmt == LEGACY:
        entry = {"namespace": "x", "sha256": "0" * 64, "mode": "enforce"}
        return {"profiles": {f"varmor-x-y{i}": entry for i in range(count)}}
    return {"loaded": count}


async def test_uninstall_does_not_wait_for_nodes_whose_agent_is_gone(api_client: Any, nodes: Any) -> None:
    live = await nodes.add("live", heartbeat=True)
    gone = await nodes.add("gone", heartbeat=True)
    # the agent on `gone` stopped an hour ago with a profile loaded; `live` has unloaded
    await nodes.write(gone, {**await nodes.status(gone), **holding(nodes, 1), "heartbeatTime": "2026-01-01T00:00:00Z"})
    started = time.monotonic()
    await cleanup(api_client, "no-such-config", unload_timeout=30)
    assert time.monotonic() - started < 10, "waited for an agent that is not there"
    for name in (live, gone):
        with pytest.raises(ApiException) as missing:
            await nodes.status(name)
        assert missing.value.status == 404


@pytest.mark.parametrize("nodes", [REPORT, LEGACY], indirect=True)
async def test_cleanup_removes_configurations_a_running_leader_re_registered(
    api_client: Any, namespace: str, nodes: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The leader keeps running during the hook and re-registers when the policies go;
    the hook ends by deleting what it wrote, so nothing waits for the garbage collector.
    The hook waits for the node to unload, told by `loaded` or, from an agent not yet
    upgraded, by its map of loaded profiles."""
    from tests.helpers import policy, wait_for
    from varmor import api
    from varmor.clock import now_rfc3339
    from varmor.kube import paths
    from varmor.kube.client import raw_request

    name = f"cleanup-{namespace}"
    mutating = paths.webhook_config_path("MutatingWebhookConfiguration")
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        body = {"metadata": {"name": name}, "webhooks": []}
        await raw_request(api_client, "POST", paths.webhook_config_path(kind), body=body)
    custom = client.CustomObjectsApi(api_client)
    body = policy("p", namespace, "Pod", selector={})
    await custom.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.VARMOR_POLICY.plural, body)
    node = await nodes.add("busy", heartbeat=True)
    await nodes.write(node, {**await nodes.status(node), **holding(nodes, 1), "heartbeatTime": now_rfc3339()})

    async def still_running_leader() -> None:
        """Once the policies are gone: register again, then (as the agent) unload."""

        async def policy_gone() -> bool:
            try:
                await custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, "varmorpolicies", "p")
            except ApiException as exc:
                if exc.status == 404:
                    return True
                raise
            return False

        await wait_for(policy_gone, timeout=60, interval=0.05)
        await raw_request(api_client, "POST", mutating, body={"metadata": {"name": name}, "webhooks": []})
        await nodes.write(node, {**await nodes.status(node), **holding(nodes, 0), "heartbeatTime": now_rfc3339()})

    leader = asyncio.create_task(still_running_leader())
    deleted = await cleanup(api_client, name, unload_timeout=30)
    await leader
    assert "still loaded" not in caplog.text  # it waited for the unload, and did not give up on it
    assert deleted == [
        f"MutatingWebhookConfiguration/{name}",
        f"ValidatingWebhookConfiguration/{name}",
        f"MutatingWebhookConfiguration/{name}",  # the re-registered one, at the end
    ]
    with pytest.raises(ApiException) as missing:
        await raw_request(api_client, "GET", f"{mutating}/{name}")
    assert missing.value.status == 404


async def test_uninstall_removes_behaviour_models_unless_kept(api_client: Any, namespace: str, crds: list[str]) -> None:
    """Models outlive their policies, so the hook deletes them, unless the chart's
    cleanup.keepModels asks to keep them; behaviour shares always go."""
    from varmor import api
    from varmor.kube import paths
    from varmor.kube.kube import Kube

    kube = Kube(api_client)
    profile = f"varmor-{namespace}-web"
    model = {"apiVersion": api.API_VERSION, "kind": "ArmorProfileModel", "metadata": {"name": profile}}
    share = {
        "apiVersion": api.API_VERSION,
        "kind": "ArmorBehavior",
        "metadata": {"name": f"{profile}.n1"},
        "spec": {"nodeName": "n1", "profileName": profile},
    }
    await kube.request("POST", paths.custom_path(api.ARMOR_PROFILE_MODEL, namespace), body=model)
    await kube.request("POST", paths.custom_path(api.ARMOR_BEHAVIOR, namespace), body=share)
    await cleanup(api_client, "no-such-config", unload_timeout=30, keep_models=True)
    assert await kube.request("GET", paths.custom_path(api.ARMOR_PROFILE_MODEL, namespace, profile))
    with pytest.raises(ApiException) as gone:
        await kube.request("GET", paths.custom_path(api.ARMOR_BEHAVIOR, namespace, f"{profile}.n1"))
    assert gone.value.status == 404
    await cleanup(api_client, "no-such-config", unload_timeout=30)
    with pytest.raises(ApiException) as gone:
        await kube.request("GET", paths.custom_path(api.ARMOR_PROFILE_MODEL, namespace, profile))
    assert gone.value.status == 404
