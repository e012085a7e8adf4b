"""The chain a user depends on, on a real node: a policy's profile loaded by varmor's agent
into the node's kernel, a pod admitted with it, started by the kubelet, created by
containerd and runc under it, and the kernel enforcing it, through updates and deletion."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from tests import helpers
from tests.helpers import wait_for
from tests.node.conftest import IMAGE, NODE, Node

pytestmark = pytest.mark.node
G, V = "crd.varmor.org", "v1beta1"
TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
# Each probe prints "<name>=allowed|denied" (the container's termination message).
PROBES = {
    "kallsyms": "cat /proc/kallsyms",  # hardening: disallow-access-kallsyms
    "hostname": "cat /etc/hostname",  # raw rule: deny /etc/hostname r
    "hosts": "cat /etc/hosts",  # nothing denies it
    "token-by-probe": f"/usr/local/bin/probe cat {TOKEN}",  # attack protection for /usr/local/bin/probe only
    "token-by-shell": f"cat {TOKEN}",
}


def probe_script(probes: dict[str, str]) -> str:
    lines = [
        f'if {cmd} >/dev/null 2>&1; then r="$r {name}=allowed"; else r="$r {name}=denied"; fi'
        for name, cmd in probes.items()
    ]
    return "r=''; " + "; ".join(lines) + '; echo "$r" > /dev/termination-log'


def pod_spec(command: str) -> dict[str, Any]:
    return {
        "nodeName": NODE,
        "terminationGracePeriodSeconds": 1,
        "containers": [
            {"name": "app", "image": IMAGE, "imagePullPolicy": "Never", "command": ["/bin/sh", "-c", command]}
        ],
    }


def workload(name: str, command: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec(command)},
        },
    }


@pytest.fixture
async def ns(api_client: Any, node: Node) -> AsyncIterator[str]:
    core = client.CoreV1Api(api_client)
    name = f"n-{uuid.uuid4().hex[:8]}"
    await core.create_namespace({"metadata": {"name": name}})
    await wait_for(lambda: _default_sa(core, name), timeout=30)
    try:
        yield name
    finally:
        custom = client.CustomObjectsApi(api_client)
        for item in (await custom.list_namespaced_custom_object(G, V, name, "varmorpolicies"))["items"]:
            with contextlib.suppress(ApiException):
                await custom.delete_namespaced_custom_object(G, V, name, "varmorpolicies", item["metadata"]["name"])
        await core.delete_namespace(name)


async def _default_sa(core: Any, ns: str) -> bool:
    return any(sa.metadata.name == "default" for sa in (await core.list_namespaced_service_account(ns)).items)


async def running_pod(core: Any, ns: str, app: str, *, not_in: set[str] = frozenset()) -> Any:  # type: ignore[assignment]
    """The Running pod of `app` (not one of `not_in`)."""

    async def find() -> Any:
        for pod in (await core.list_namespaced_pod(ns, label_selector=f"app={app}")).items:
            if (
                pod.metadata.name not in not_in
                and pod.status.phase == "Running"
                and pod.metadata.deletion_timestamp is None
            ):
                return pod
        return None

    return await wait_for(find, timeout=180, interval=0.5, what=f"a Running pod of {app} in {ns}")


def container_id(pod: Any) -> str:
    statuses = pod.status.container_statuses or []
    assert statuses, f"{pod.metadata.name} has no container status"
    assert statuses[0].container_id, f"{pod.metadata.name} has no running container"
    return str(statuses[0].container_id).removeprefix("containerd://")


def label_of(node: Node, cid: str) -> str:
    """The AppArmor label of container `cid`'s main process, read in the node's /proc."""
    pid = node.run(f"ctr -n k8s.io tasks ls | awk '$1 == \"{cid}\" {{print $2}}'").strip()
    assert pid.isdigit(), f"container {cid} has no task: {pid!r}"
    return node.run(f"cat /proc/{pid}/attr/current").strip()


async def policy_ready(custom: Any, ns: str, name: str) -> dict[str, Any]:
    async def ready() -> dict[str, Any] | None:
        got: dict[str, Any] = await custom.get_namespaced_custom_object(G, V, ns, "varmorpolicies", name)
        status = got.get("status") or {}
        if status.get("ready") and status.get("observedGeneration") == got["metadata"]["generation"]:
            return got
        return None

    result: dict[str, Any] = await wait_for(ready, timeout=180, interval=0.5, what=f"policy {ns}/{name} Ready")
    return result


async def test_an_existing_workload_is_rolled_and_runs_confined_then_rolls_back(
    api_client: Any, node: Node, ns: str
) -> None:
    """Tests 1, 2, 3 and 7 of the chain: Ready only once loaded; an existing Deployment
    rolled by updateExistingWorkloads runs under the profile, in enforce mode; deleting the
    policy rolls it back to the runtime's default profile and unloads varmor's."""
    core, apps, custom = client.CoreV1Api(api_client), client.AppsV1Api(api_client), client.CustomObjectsApi(api_client)
    await apps.create_namespaced_deployment(ns, workload("web", "exec sleep 3600"))
    before = await running_pod(core, ns, "web")
    assert label_of(node, container_id(before)) == "cri-containerd.apparmor.d (enforce)"

    profile = f"varmor-{ns}-web"
    started = time.monotonic()
    policy = helpers.policy(
        "web", enhance={"hardeningRules": ["disallow-access-kallsyms"]}, updateExistingWorkloads=True
    )
    await custom.create_namespaced_custom_object(G, V, ns, "varmorpolicies", policy)
    await policy_ready(custom, ns, "web")
    assert node.loaded_profiles().get(profile) == "enforce", "Ready before the node's kernel had the profile"
    node.timings["policy -> Ready"] = time.monotonic() - started

    started = time.monotonic()
    after = await running_pod(core, ns, "web", not_in={before.metadata.name})
    node.timings["rolled pod -> Running"] = time.monotonic() - started
    spec = api_client.sanitize_for_serialization(after.spec)
    assert spec["containers"][0]["securityContext"]["appArmorProfile"] == {
        "type": "Localhost",
        "localhostProfile": profile,
    }
    assert label_of(node, container_id(after)) == f"{profile} (enforce)"

    await custom.delete_namespaced_custom_object(G, V, ns, "varmorpolicies", "web")
    back = await running_pod(core, ns, "web", not_in={before.metadata.name, after.metadata.name})
    back_spec = api_client.sanitize_for_serialization(back.spec)
    assert "appArmorProfile" not in (back_spec["containers"][0].get("securityContext") or {})
    assert label_of(node, container_id(back)) == "cri-containerd.apparmor.d (enforce)"

    async def unloaded() -> bool:
        return profile not in node.loaded_profiles()

    await wait_for(unloaded, timeout=120, interval=1.0)
