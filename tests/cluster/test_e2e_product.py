"""The whole product on the real API server, installed from the chart's rendered
manifests (tests/product.py): a policy protects existing and new workloads, updates live,
and uninstalls clean, in both topologies, with three agents standing in for three nodes."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from tests import helpers
from tests.helpers import deployment, wait_for
from tests.product import Install, installed, token_kubeconfig
from varmor import api
from varmor.dev.chart import is_hook

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("crds")]
G, V = api.GROUP, api.VERSION
NODES = ("e2e-node-a", "e2e-node-b", "e2e-node-c")
DOCUMENTED_METRICS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


@pytest.fixture(params=["split", "allinone"])
async def install(
    request: pytest.FixtureRequest, api_client: Any, kubeconfig: str, namespace: str, tmp_path: Path
) -> AsyncIterator[Install]:
    """split: a manager process (webhook + leader) and three agents. allinone (the chart's
    default): three processes running every role, one of them elected leader."""
    async with installed(api_client, kubeconfig, namespace, tmp_path, topology=request.param, nodes=NODES) as inst:
        yield inst


def policy(rules: list[str]) -> dict[str, Any]:
    return helpers.policy(
        "web", selector={"matchLabels": {"app": "web"}}, enhance={"hardeningRules": rules}, updateExistingWorkloads=True
    )


def profile_of(template_spec: dict[str, Any]) -> str | None:
    profiles = {
        ((c.get("securityContext") or {}).get("appArmorProfile") or {}).get("localhostProfile")
        for c in template_spec["containers"]
    }
    assert len(profiles) == 1
    return profiles.pop()


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        return await r.text()


def documented_metrics() -> set[str]:
    return {line.split("`")[1] for line in DOCUMENTED_METRICS.read_text().splitlines() if line.startswith("| `varmor_")}


async def test_policy_protects_updates_live_and_uninstalls_clean(api_client: Any, install: Install) -> None:
    apps, custom = client.AppsV1Api(api_client), client.CustomObjectsApi(api_client)
    core = client.CoreV1Api(api_client)
    workloads = f"{install.namespace}-apps"
    await core.create_namespace({"metadata": {"name": workloads}})
    try:
        await _scenario(api_client, install, workloads, apps, custom)
    finally:
        with contextlib.suppress(ApiException):
            await core.delete_namespace(workloads)


async def _scenario(api_client: Any, install: Install, ns: str, apps: Any, custom: Any) -> None:
    profile = f"varmor-{ns}-web"
    await apps.create_namespaced_deployment(ns, deployment("web", replicas=1))

    # 1. policy -> Ready on every node -> the existing Deployment is rolled with the profile.
    await custom.create_namespaced_custom_object(G, V, ns, "varmorpolicies", policy(["disallow-write-core-pattern"]))

    async def ready() -> dict[str, Any] | None:
        got: dict[str, Any] = await custom.get_namespaced_custom_object(G, V, ns, "varmorpolicies", "web")
        return got if (got.get("status") or {}).get("ready") else None

    status = (await wait_for(ready, timeout=60))["status"]
    assert status["profileName"] == profile
    ap = await custom.get_namespaced_custom_object(G, V, ns, "armorprofiles", profile)
    assert ap["status"]["desiredNumberLoaded"] == ap["status"]["currentNumberLoaded"] >= len(NODES)
    for kernel in install.kernels.values():
        await asyncio.to_thread(kernel.settle)  # the stand-in applies writes a moment later
        assert kernel.top_level().get(profile) == "enforce"

    async def template_profile() -> str | None:
        got = await apps.read_namespaced_deployment("web", ns)
        return profile_of(api_client.sanitize_for_serialization(got.spec.template.spec))

    async def rolled_in() -> bool:
        return await template_profile() == profile

    await wait_for(rolled_in, timeout=30)

    async def replicasets() -> set[str]:
        """The ReplicaSets of Deployment `web`: a new one means its Pods were restarted."""
        items = (await apps.list_namespaced_replica_set(ns)).items
        return {rs.metadata.name for rs in items if rs.metadata.owner_references[0].name == "web"}

    await wait_for(lambda: _len_at_least(replicasets, 2), timeout=30)
    before_update = await replicasets()

    # A Deployment created now comes out of admission (the API server calling the
    # webhook over TLS) with the profile already in its template.
    fresh = deployment("web-new", replicas=1)
    fresh["metadata"]["labels"] = fresh["spec"]["template"]["metadata"]["labels"] = {"app": "web", "tier": "new"}
    fresh["spec"]["selector"]["matchLabels"] = {"app": "web", "tier": "new"}
    created = await apps.create_namespaced_deployment(ns, fresh)
    assert profile_of(api_client.sanitize_for_serialization(created.spec.template.spec)) == profile

    # The Pods the controller-manager creates from the rolled template carry the profile.
    async def protected_pod() -> bool:
        pods = (await client.CoreV1Api(api_client).list_namespaced_pod(ns, label_selector="app=web")).items
        return any(profile_of(api_client.sanitize_for_serialization(p.spec)) == profile for p in pods)

    await wait_for(protected_pod, timeout=30)

    # 2. policy update -> profile replaced in every kernel, workload not restarted.
    for kernel in install.kernels.values():
        kernel.clear_ops()
    current = await custom.get_namespaced_custom_object(G, V, ns, "varmorpolicies", "web")
    current["spec"]["policy"]["enhanceProtect"]["hardeningRules"].append("disallow-access-kallsyms")
    await custom.replace_namespaced_custom_object(G, V, ns, "varmorpolicies", "web", current)
    new_text = ""

    async def replaced_everywhere() -> bool:
        """Every node reports the new text's hash, and the policy is Ready at the new generation."""
        nonlocal new_text
        ap = await custom.get_namespaced_custom_object(G, V, ns, "armorprofiles", profile)
        new_text, sha = ap["spec"]["profile"]["appArmor"], ap["spec"]["profile"]["sha256"]
        pol = await custom.get_namespaced_custom_object(G, V, ns, "varmorpolicies", "web")
        if "kallsyms" not in new_text or not (pol.get("status") or {}).get("ready"):
            return False
        if pol["status"].get("observedGeneration") != pol["metadata"]["generation"]:
            return False
        for node in NODES:
            reported = await helpers.armor_node_maps(api_client, node)
            if reported is None or reported["profiles"].get(profile, {}).get("sha256") != sha:
                return False
        return True

    await wait_for(replaced_everywhere, timeout=60)
    for node, kernel in install.kernels.items():
        await asyncio.to_thread(kernel.settle)
        actions = {(op.action, op.name) for op in kernel.ops if op.name == profile}
        assert ("replace", profile) in actions, (node, kernel.ops)
        assert ("remove", profile) not in actions
    assert await replicasets() == before_update, "a policy update must not restart the workload"

    # 3. metrics: every documented metric is exported by the manager or an agent.
    scrapes = [await scrape(p.metrics_port) for p in install.processes]
    exported = "".join(scrapes)
    leaders = [
        p.name for p, text in zip(install.processes, scrapes, strict=True) if "varmor_leader_is_leader 1.0" in text
    ]
    assert len(leaders) == 1, f"exactly one leader expected, got {leaders}"
    missing = {m for m in documented_metrics() if m not in exported}
    assert not missing, f"documented but not exported: {sorted(missing)}"

    # 4. policy delete -> ArmorProfile gone, profile unloaded everywhere, workload rolled back.
    await custom.delete_namespaced_custom_object(G, V, ns, "varmorpolicies", "web")

    async def unloaded() -> bool:
        return all(profile not in k.top_level() for k in install.kernels.values())

    await wait_for(unloaded, timeout=60)

    async def ap_gone() -> bool:
        try:
            await custom.get_namespaced_custom_object(G, V, ns, "armorprofiles", profile)
        except ApiException as exc:
            return bool(exc.status == 404)
        return False

    await wait_for(ap_gone, timeout=30)

    async def rolled_back() -> bool:
        return await template_profile() is None

    await wait_for(rolled_back, timeout=30)

    # 5. uninstall (the chart's pre-delete hook, as its own ServiceAccount) leaves nothing.
    await custom.create_namespaced_custom_object(G, V, ns, "varmorpolicies", policy(["disallow-mount"]))
    await wait_for(ready, timeout=60)
    hook_job = next(o for o in install.objects if o["kind"] == "Job" and is_hook(o))
    cleanup_cfg = await token_kubeconfig(api_client, install, f"{install.release}-cleanup")
    args = hook_job["spec"]["template"]["spec"]["containers"][0]["args"]
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "varmor.cli", *args, f"--kubeconfig={cleanup_cfg}", "--unload-timeout=60"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    admission = client.AdmissionregistrationV1Api(api_client)

    async def no_webhook_configuration() -> bool:
        names = {c.metadata.name for c in (await admission.list_mutating_webhook_configuration()).items}
        names |= {c.metadata.name for c in (await admission.list_validating_webhook_configuration()).items}
        return install.release not in names

    # Then Helm deletes the release's objects: the processes stop and the ClusterRoles go.
    # The leader cannot re-create a deleted configuration in the meantime (no create
    # right: the chart creates them), and what it updates is owned by its ClusterRole.
    for process in install.processes:
        process.stop()
    rbac = client.RbacAuthorizationV1Api(api_client)
    for obj in install.objects:
        if obj["kind"] == "ClusterRole" and not is_hook(obj):
            await rbac.delete_cluster_role(obj["metadata"]["name"])
    await wait_for(no_webhook_configuration, timeout=30)
    for resource in ("varmorpolicies", "varmorclusterpolicies", "armorprofiles", "armornodes"):
        left = await custom.list_cluster_custom_object(G, V, resource)
        assert not left["items"], f"{resource} left after uninstall: {[i['metadata']['name'] for i in left['items']]}"
    for node, kernel in install.kernels.items():
        await asyncio.to_thread(kernel.settle)
        assert not [n for n in kernel.top_level() if n.startswith("varmor-")], node


async def _len_at_least(fn: Any, n: int) -> bool:
    return len(await fn()) >= n
