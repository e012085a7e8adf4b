"""The whole product on the real API server, installed from the chart's rendered manifests.

The chart is rendered with Helm, every object is applied, and varmor runs as local
processes with exactly the arguments the rendered Deployment and DaemonSet give it, each
authenticated with a token of the chart's own ServiceAccount (so the chart's RBAC, its
webhook configurations and its ValidatingAdmissionPolicy are what is exercised). Three
agents stand in for three nodes, each with its own stand-in securityfs that records what
reached the kernel interface, and a token bound to its Node, as a DaemonSet pod's is.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from tests import helpers
from tests.cluster.test_chart_rbac import apply, remove_cluster_scoped
from tests.helpers import deployment, wait_for
from varmor import api
from varmor.dev.chart import is_hook, render
from varmor.dev.cluster import free_port
from varmor.nodeexec.standin import StandInSecurityfs, write_enabled_file

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("crds")]
G, V = api.GROUP, api.VERSION
NODES = ("e2e-node-a", "e2e-node-b", "e2e-node-c")
DOCUMENTED_METRICS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    metrics_port: int
    health_port: int

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Install:
    namespace: str
    release: str
    objects: list[dict[str, Any]]
    kubeconfig: str
    tmp: Path
    kernels: dict[str, StandInSecurityfs] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)

    def rendered(self, kind: str) -> dict[str, Any]:
        return next(o for o in self.objects if o["kind"] == kind and not is_hook(o))

    def logs(self) -> str:
        return "\n".join(f"==== {p.name}\n{p.log.read_text(errors='replace')[-3000:]}" for p in self.processes)


async def token_kubeconfig(api_client: Any, install: Install, service_account: str, node: str = "") -> Path:
    """A kubeconfig that authenticates as one of the chart's ServiceAccounts; with `node`,
    the token is bound to that Node and carries its node claim (what the chart's
    ValidatingAdmissionPolicy checks an agent's ArmorNode writes against)."""
    core = client.CoreV1Api(api_client)
    spec: dict[str, Any] = {"expirationSeconds": 3600}
    if node:
        spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Node", "name": node}
    token = await core.create_namespaced_service_account_token(service_account, install.namespace, {"spec": spec})
    admin = yaml.safe_load(Path(install.kubeconfig).read_text())
    admin["users"] = [{"name": service_account, "user": {"token": token.status.token}}]
    admin["contexts"][0]["context"]["user"] = service_account
    path = install.tmp / f"{service_account}{'-' + node if node else ''}.kubeconfig"
    path.write_text(yaml.safe_dump(admin))
    return path


def container_args(obj: dict[str, Any], node: str = "") -> list[str]:
    args = obj["spec"]["template"]["spec"]["containers"][0]["args"]
    return [a.replace("$(NODE_NAME)", node) for a in args]


def start(install: Install, name: str, args: list[str], kubeconfig: Path, extra: list[str]) -> Process:
    health, metrics = free_port(), free_port()
    log = install.tmp / f"{name}.log"
    argv = [
        sys.executable, "-m", "varmor.cli", *args,
        f"--kubeconfig={kubeconfig}", "--bind-address=127.0.0.1",
        f"--health-port={health}", f"--metrics-port={metrics}", *extra,
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env={"POD_NAME": name, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        )
    process = Process(name, proc, log, metrics, health)
    install.processes.append(process)
    return process


def webhook_args() -> list[str]:
    port = free_port()
    return [f"--webhook-port={port}", f"--webhook-url=https://127.0.0.1:{port}", "--status-delay=0.2"]


@pytest.fixture(params=["split", "allinone"])
async def install(
    request: pytest.FixtureRequest, api_client: Any, kubeconfig: str, namespace: str, tmp_path: Path
) -> AsyncIterator[Install]:
    """split: a manager process (webhook + leader) and three agents. allinone (the chart's
    default): three processes running every role, one of them elected leader."""
    topology = request.param
    release = f"varmor-{namespace}"  # contains the chart name, so fullname == release
    values = {
        "topology": topology,
        "leaderElection": {"leaseDurationSeconds": 4, "renewDeadlineSeconds": 3, "retryPeriodSeconds": 1},
    }
    objects = render(values, namespace=namespace, release=release)
    inst = Install(namespace, release, objects, kubeconfig, tmp_path)
    core = client.CoreV1Api(api_client)
    for obj in objects:
        await apply(api_client, obj)
    for node in NODES:
        with contextlib.suppress(ApiException):
            await core.create_node({"metadata": {"name": node}})
    # split: the agent-only DaemonSet runs as the agent's account; allinone: the DaemonSet
    # runs every role as the manager's
    node_account = f"{release}-agent" if topology == "split" else f"{release}-manager"
    if topology == "split":
        manager_cfg = await token_kubeconfig(api_client, inst, f"{release}-manager")
        start(inst, "manager", container_args(inst.rendered("Deployment")), manager_cfg, webhook_args())
    for node in NODES:
        agent_cfg = await token_kubeconfig(api_client, inst, node_account, node)
        root = tmp_path / node
        root.mkdir()
        write_enabled_file(root / "enabled")
        (root / "partitions").write_text("major minor  #blocks  name\n\n 254        0   52428800 vda\n")
        inst.kernels[node] = StandInSecurityfs(root / "securityfs").start()
        start(
            inst, node, container_args(inst.rendered("DaemonSet"), node), agent_cfg,
            [f"--profile-dir={root / 'apparmor.d'}", f"--securityfs={root / 'securityfs'}",
             f"--apparmor-enabled-file={root / 'enabled'}", f"--proc-partitions={root / 'partitions'}",
             "--audit-log=", "--violation-log=", "--agent-status-debounce=0.2",
             *(webhook_args() if topology == "allinone" else [])],
        )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:
            for process in inst.processes:

                async def ready(p: Process = process) -> bool:
                    assert p.proc.poll() is None, f"{p.name} exited:\n{inst.logs()}"
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(f"http://127.0.0.1:{p.health_port}/readyz") as r:
                            return r.status == 200
                    return False

                await wait_for(ready, timeout=60)
        yield inst
    finally:
        for process in inst.processes:
            process.stop()
        for kernel in inst.kernels.values():
            kernel.stop()
        custom = client.CustomObjectsApi(api_client)
        await remove_cluster_scoped(api_client, objects)
        for node in NODES:
            with contextlib.suppress(ApiException):
                await custom.delete_cluster_custom_object(G, V, "armornodes", node)
            with contextlib.suppress(ApiException):
                await core.delete_node(node)


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
            reported = await custom.get_cluster_custom_object(G, V, "armornodes", node)
            if ((reported.get("status") or {}).get("profiles") or {}).get(profile, {}).get("sha256") != sha:
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
