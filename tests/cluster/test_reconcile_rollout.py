"""updateExistingWorkloads on the real API server: a Deployment rolls (new ReplicaSet) on
policy create and on delete; another namespace is never touched; bare Pods are reported,
not killed. The webhook is not running: the leader's patch alone does the job."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.aio import client

from tests.helpers import Api, condition, deployment, vpol, wait_for
from varmor import api

pytestmark = pytest.mark.cluster


async def replicasets(apps: client.AppsV1Api, ns: str) -> list[Any]:
    return list((await apps.list_namespaced_replica_set(ns, label_selector="app=web")).items)


async def template(apps: client.AppsV1Api, ns: str) -> dict[str, Any]:
    """The pod template as raw JSON (the generated models would reshape it)."""
    from varmor.kube import paths
    from varmor.kube.kube import Kube

    dep = await Kube(apps.api_client).request("GET", paths.workload_path("Deployment", ns, "web"))
    return dict(dep["spec"]["template"])


async def test_rollout_on_create_and_delete_stays_in_namespace(
    api_client: Any, namespace: str, nodes: Any, leader: Any
) -> None:
    apps = client.AppsV1Api(api_client)
    core = client.CoreV1Api(api_client)
    k = Api(api_client)
    other = f"{namespace}-other"
    await core.create_namespace({"metadata": {"name": other, "labels": {"varmor-test": "true"}}})
    try:
        await apps.create_namespaced_deployment(namespace, deployment("web", replicas=1, containers=("app", "side")))
        await apps.create_namespaced_deployment(other, deployment("web", replicas=1, containers=("app", "side")))
        await wait_for(lambda: _count(replicasets(apps, namespace), 1))
        await wait_for(lambda: _count(replicasets(apps, other), 1))
        other_before = await template(apps, other)

        n1 = await nodes.add("n1")
        await leader()
        body = vpol("web", updateExistingWorkloads=True)
        body["spec"]["target"]["containers"] = ["app"]
        await k.create(namespace, body)
        profile = f"varmor-{namespace}-web"
        ap = await wait_for(lambda: k.armor_profile(namespace, profile))
        assert "varmor.org/rollout" in ap["metadata"]["finalizers"]
        # Nothing rolls before the profile is loaded everywhere (pods could not start).
        assert len(await replicasets(apps, namespace)) == 1
        await nodes.load(n1, ap)

        rs = await wait_for(lambda: _count(replicasets(apps, namespace), 2))
        assert len(rs) == 2  # the rollout is visible as a new ReplicaSet
        tmpl = await template(apps, namespace)
        containers = {c["name"]: c for c in tmpl["spec"]["containers"]}
        assert containers["app"]["securityContext"]["appArmorProfile"] == {
            "type": "Localhost",
            "localhostProfile": profile,
        }
        assert "appArmorProfile" not in (containers["side"].get("securityContext") or {})  # not targeted
        assert api.RESTARTED_AT_ANNOTATION in tmpl["metadata"]["annotations"]

        async def rolled() -> Any:
            pol = await k.get_policy(namespace, "web")
            return pol if condition(pol, "Rollout").get("reason") == "RolledOut" else None

        pol = await wait_for(rolled)
        assert "web" in condition(pol, "Rollout")["message"]

        # Namespace isolation: the identical Deployment next door is untouched.
        assert await template(apps, other) == other_before
        assert len(await replicasets(apps, other)) == 1

        # Delete: the profile is removed from the template (another rollout) before the
        # ArmorProfile may go.
        await k.delete_policy(namespace, "web")
        await wait_for(lambda: _count(replicasets(apps, namespace), 3))
        tmpl = await template(apps, namespace)
        app = next(c for c in tmpl["spec"]["containers"] if c["name"] == "app")
        assert "appArmorProfile" not in (app.get("securityContext") or {})
        await wait_for(lambda: _none(k.armor_profile(namespace, profile)))
        assert await template(apps, other) == other_before
    finally:
        await core.delete_namespace(other)


async def test_bare_pods_are_reported_not_killed(api_client: Any, namespace: str, nodes: Any, leader: Any) -> None:
    core = client.CoreV1Api(api_client)
    k = Api(api_client)
    pod = {
        "metadata": {"name": "bare", "labels": {"app": "bare"}},
        "spec": {"containers": [{"name": "c", "image": "x"}]},
    }
    created = await core.create_namespaced_pod(namespace, pod)
    n1 = await nodes.add("n1")
    await leader()
    body = vpol("bare", updateExistingWorkloads=True)
    body["spec"]["target"] = {"kind": "Pod", "selector": {"matchLabels": {"app": "bare"}}}
    await k.create(namespace, body)
    ap = await wait_for(lambda: k.armor_profile(namespace, f"varmor-{namespace}-bare"))
    await nodes.load(n1, ap)

    async def reported() -> Any:
        pol = await k.get_policy(namespace, "bare")
        return pol if condition(pol, "Rollout") else None

    pol = await wait_for(reported)
    rollout = condition(pol, "Rollout")
    assert rollout["reason"] == "PodsNotRestarted"
    assert "bare" in rollout["message"]
    still = await core.read_namespaced_pod("bare", namespace)
    assert still.metadata.uid == created.metadata.uid
    assert still.metadata.deletion_timestamp is None


async def _count(awaitable: Any, n: int) -> Any:
    items = await awaitable
    return items if len(items) >= n else None


async def _none(awaitable: Any) -> bool:
    return (await awaitable) is None
