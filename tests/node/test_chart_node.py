"""What a user installs, on a real node: `helm install` of the chart, varmor running from its
own image as the chart's pods in the node's containerd, and `helm uninstall` with its
pre-delete hook Job, in each topology.

The node is its own VM (no agent process: the chart's DaemonSet is the agent), with the
image attached as a disk and imported into containerd at boot, as a registry pull would
leave it. The API server on the host reaches the webhook through the chart's own values
for clusters whose API server cannot reach the pod network (`hostNetwork`, `webhook.url`),
and varmor's pods reach the API server through `apiServer.host` (no kube-proxy runs here).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helm_python import Config
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from tests import helpers
from tests.helpers import wait_for
from tests.node import nodevm
from tests.node.conftest import _TIMINGS, kubelet_files, node_ready
from varmor import api
from varmor.dev import image
from varmor.dev.cluster import ControlPlaneState, free_port
from varmor.dev.paths import REPO_ROOT
from varmor.kube.client import new_api_client

pytestmark = pytest.mark.node
NODE = "varmor-chart-node"
WEBHOOK_PORT = 8443  # the chart's default, bound in the node's network namespace
G, V = api.GROUP, api.VERSION


@dataclass
class ChartNode:
    vm: nodevm.NodeVM
    image: image.ImageBuild
    webhook_port: int  # on the host's loopback, forwarded to the node's WEBHOOK_PORT
    kubeconfig: str
    plane: ControlPlaneState
    timings: dict[str, float] = field(default_factory=lambda: _TIMINGS)

    def run(self, command: str) -> str:
        rc, out = self.vm.run(command, 60.0)
        assert rc == 0, f"{command!r} exited {rc} in the node:\n{out}"
        return out

    def varmor_profiles(self) -> list[str]:
        out = self.run("cat /sys/kernel/security/apparmor/profiles")
        return sorted(line.rpartition(" (")[0] for line in out.splitlines() if line.startswith("varmor-"))

    def label_of(self, cid: str) -> str:
        pid = self.run(f"ctr -n k8s.io tasks ls | awk '$1 == \"{cid}\" {{print $2}}'").strip()
        assert pid.isdigit(), f"container {cid} has no task: {pid!r}"
        return self.run(f"cat /proc/{pid}/attr/current").strip()


@pytest.fixture(scope="module")
async def chart_node(control_plane: ControlPlaneState, kubeconfig: str, crds: list[str], scheduler: None) -> Any:
    """A node VM with varmor's image in its containerd, Ready, for this module."""
    tmp = Path(tempfile.mkdtemp(prefix="varmor-chart-node-"))
    api_client = await new_api_client(kubeconfig)
    core = client.CoreV1Api(api_client)
    started = time.monotonic()
    build = await asyncio.to_thread(image.build_image, tmp / "varmor.oci.tar", log=lambda _: None)
    _TIMINGS["image build (cache hit: copy)" if build.cached else "image build"] = time.monotonic() - started
    files = kubelet_files(control_plane, NODE)
    port = free_port()
    config = nodevm.NodeConfig(
        NODE, control_plane.api_port, files=files, images=[build.path], host_ports={port: WEBHOOK_PORT}
    )
    vm = nodevm.NodeVM(tmp / "vm", config)
    started = time.monotonic()
    try:
        await asyncio.to_thread(vm.start)
        await asyncio.to_thread(vm.wait_line, "READY", 300)
        await wait_for(lambda: node_ready(core, NODE), timeout=300, interval=1.0, what=f"node {NODE} Ready")
        _TIMINGS["boot with varmor's image to node Ready"] = time.monotonic() - started
        # What the node-lifecycle controller does for a Ready node: lift the not-ready taint
        # the kubelet registers with, so the scheduler places the uninstall hook's Job. The
        # suite's control plane does not run that controller: it would taint and evict the
        # pods of the kubelet-less Nodes the other layers create.
        await core.patch_node(NODE, {"spec": {"taints": None}})
        yield ChartNode(vm, build, port, kubeconfig, control_plane)
    finally:
        vm.stop()
        with contextlib.suppress(ApiException):
            await core.delete_node(NODE)
        await api_client.close()
        shutil.rmtree(tmp, ignore_errors=True)


def chart_values(node: ChartNode, topology: str) -> dict[str, Any]:
    return {
        "topology": topology,
        "image": {"pullPolicy": "Never"},  # imported into the node's containerd, no registry
        "hostNetwork": True,
        # The port is on the node's network: the webhook answers only the API server's certificate.
        "webhook": {
            "url": f"https://127.0.0.1:{node.webhook_port}",
            "clientCA": node.plane.webhook_client_ca.read_text(),
        },
        "apiServer": {"host": nodevm.API_ADDRESS, "port": 443},
        "manager": {"replicas": 1},
    }


async def pods_ready(core: Any, ns: str, expected: int) -> list[Any] | None:
    pods = (await core.list_namespaced_pod(ns)).items
    ready = [
        p
        for p in pods
        if p.status.phase == "Running" and all(s.ready for s in p.status.container_statuses or [False])  # type: ignore[attr-defined]
    ]
    return ready if len(ready) >= expected else None


# Denied every few seconds: the agent pod's view of the node's audit log is what reports it.
DENIED_LOOP = "while :; do cat /proc/kallsyms > /dev/null 2>&1; sleep 3; done"


def workload(name: str) -> dict[str, Any]:
    labels = {"app": name}
    spec = {
        "nodeName": NODE,
        "terminationGracePeriodSeconds": 1,
        "containers": [
            {
                "name": "app",
                "image": nodevm.IMAGES[0],
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", DENIED_LOOP],
            }
        ],
    }
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": spec},
        },
    }


async def refused_without_the_api_servers_certificate(node: ChartNode) -> None:
    """The webhook port listens on the node's network: a review from anyone but the API
    server (no client certificate signed by webhook.clientCA) is refused at the handshake."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "x"}}
    async with aiohttp.ClientSession() as session:
        with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
            async with session.post(f"https://127.0.0.1:{node.webhook_port}/mutate", json=review, ssl=ctx) as r:
                await r.read()


# -- root on the node versus the cluster ---------------------------------------------------
# What an attacker with root on the node tries with every ServiceAccount token mounted there
# (dry runs: authorization and admission decide, nothing is stored).
def attempts(work_ns: str, profile: str) -> dict[str, tuple[str, str, dict[str, Any]]]:
    admission = "/apis/admissionregistration.k8s.io/v1"
    return {
        "create a webhook configuration": (
            "POST",
            f"{admission}/mutatingwebhookconfigurations",
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": "stolen-token"},
                "webhooks": [],
            },
        ),
        "patch a Deployment in another namespace": (
            "PATCH",
            f"/apis/apps/v1/namespaces/{work_ns}/deployments/confined",
            {"spec": {"template": {"metadata": {"labels": {"stolen": "token"}}}}},
        ),
        "write an ArmorProfile": (
            "PATCH",
            f"/apis/{G}/{V}/namespaces/{work_ns}/armorprofiles/{profile}",
            {"spec": {"profile": {"mode": "complain"}}},
        ),
        "write another node's ArmorNode": (
            "POST",
            f"/apis/{G}/{V}/armornodes",
            {"apiVersion": f"{G}/{V}", "kind": "ArmorNode", "metadata": {"name": "another-node"}},
        ),
        "write another node's heartbeat Lease": (
            "POST",
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
            {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "another-node"}},
        ),
    }


SELF_REVIEW = "/apis/authentication.k8s.io/v1/selfsubjectreviews"
#: What a token of the manager's account (every role: webhook, leader, and in allinone the
#: agent) can do of the above; docs/security.md states the same. Every other token on a node
#: (the agent's, a workload's) gets 403 on every try.
MANAGER_CAN = {"patch a Deployment in another namespace", "write an ArmorProfile"}


async def tokens_on_node(node: ChartNode) -> dict[str, str]:
    """Every ServiceAccount token the kubelet mounted on the node, by the account it names."""
    # The files themselves, not the volume's `token` symlinks: a symlink owned by a pod's
    # user in a sticky directory is not followed by root (fs.protected_symlinks).
    found_files = "find /var/lib/kubelet/pods -path '*kubernetes.io~projected*' -name token -type f"
    paths = node.run(found_files).split()
    assert paths, "no ServiceAccount token mounted on the node"
    found: dict[str, str] = {}
    async with aiohttp.ClientSession() as session:
        for path in paths:
            token = node.run(f"cat {path}").strip()
            review = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
            status, body = await call(session, node, token, "POST", SELF_REVIEW, review)
            assert status == 201, body
            found[body["status"]["userInfo"]["username"]] = token
    return found


async def call(
    session: aiohttp.ClientSession, node: ChartNode, token: str, method: str, path: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    ctx = ssl.create_default_context(cafile=str(node.plane.ca_cert))
    content_type = "application/merge-patch+json" if method == "PATCH" else "application/json"
    async with session.request(
        method,
        f"{node.plane.server}{path}",
        params={"dryRun": "All"},
        json=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
        ssl=ctx,
    ) as response:
        return response.status, await response.json(content_type=None)


async def stolen_token_outcomes(node: ChartNode, work_ns: str, profile: str) -> dict[str, dict[str, int]]:
    """account -> try -> HTTP status, for every token on the node."""
    outcomes: dict[str, dict[str, int]] = {}
    async with aiohttp.ClientSession() as session:
        for account, token in (await tokens_on_node(node)).items():
            outcomes[account] = {}
            for what, (method, path, body) in attempts(work_ns, profile).items():
                outcomes[account][what] = (await call(session, node, token, method, path, body))[0]
    return outcomes


async def running_container(core: Any, ns: str, app: str) -> tuple[Any, str]:
    async def find() -> tuple[Any, str] | None:
        for pod in (await core.list_namespaced_pod(ns, label_selector=f"app={app}")).items:
            statuses = pod.status.container_statuses or []
            if statuses and statuses[0].state.running and statuses[0].container_id:
                return pod, str(statuses[0].container_id).removeprefix("containerd://")
        return None

    found: tuple[Any, str] = await wait_for(find, timeout=180, interval=0.5, what=f"{app} running in {ns}")
    return found


@pytest.mark.parametrize("topology", ["allinone", "split"])
async def test_the_chart_runs_varmor_from_its_image_on_the_node_from_install_to_uninstall(
    api_client: Any, chart_node: ChartNode, topology: str
) -> None:
    """`helm install` of the chart with varmor's image: its pods run on the node, a leader is
    elected, the API server calls the webhook, a policy's profile reaches the node's kernel
    and a workload's pod runs under it, and the agent's pod reports the workload's denied
    action from the node's audit log. Root on the node takes every ServiceAccount token
    mounted there: only the manager's can do anything of an attacker's list, and only what
    docs/security.md says. `helm uninstall` runs the pre-delete hook Job from
    the image on the node: afterwards no webhook configuration, no varmor object and no
    varmor profile in the kernel is left, and the workload's running container, whose
    profile went, runs unconfined (the same container, not restarted)."""
    core, apps, custom = client.CoreV1Api(api_client), client.AppsV1Api(api_client), client.CustomObjectsApi(api_client)
    coordination = client.CoordinationV1Api(api_client)
    admission = client.AdmissionregistrationV1Api(api_client)
    install_ns, work_ns, release = f"varmor-{topology}", f"w-{uuid.uuid4().hex[:8]}", "varmor"
    helm = Config(kubeconfig_path=chart_node.kubeconfig, namespace=install_ns)
    await core.create_namespace({"metadata": {"name": work_ns}})
    try:
        started = time.monotonic()
        await asyncio.to_thread(
            helm.install,
            str(REPO_ROOT / "chart"),
            release,
            chart_values(chart_node, topology),
            namespace=install_ns,
            create_namespace=True,
            timeout=600,
        )
        pods = await wait_for(
            lambda: pods_ready(core, install_ns, 2 if topology == "split" else 1),
            timeout=420,
            interval=1.0,
            what=f"varmor's pods Ready ({topology})",
        )
        chart_node.timings[f"helm install -> varmor pods Ready ({topology})"] = time.monotonic() - started
        for pod in pods:
            assert pod.spec.node_name == NODE
            assert pod.spec.containers[0].image == chart_node.image.name

        async def leader() -> str:
            lease = await coordination.read_namespaced_lease(f"{release}-leader", install_ns)
            return str(lease.spec.holder_identity or "")

        holder = await wait_for(leader, timeout=120, interval=1.0, what="a leader elected")
        assert holder in {p.metadata.name for p in pods}
        await refused_without_the_api_servers_certificate(chart_node)

        name = "confined"
        profile = f"varmor-{work_ns}-{name}"
        enhance = {"hardeningRules": ["disallow-access-kallsyms"], "auditViolations": True}
        await custom.create_namespaced_custom_object(
            G, V, work_ns, "varmorpolicies", helpers.policy(name, enhance=enhance)
        )

        async def ready() -> bool:
            got = await custom.get_namespaced_custom_object(G, V, work_ns, "varmorpolicies", name)
            return bool((got.get("status") or {}).get("ready"))

        await wait_for(ready, timeout=180, interval=1.0, what="the policy Ready")
        assert profile in chart_node.varmor_profiles()

        await apps.create_namespaced_deployment(work_ns, workload(name))
        pod, cid = await running_container(core, work_ns, name)
        assert pod.spec.containers[0].security_context.app_armor_profile.localhost_profile == profile
        assert chart_node.label_of(cid) == f"{profile} (enforce)"

        async def violation_reported() -> Any:
            found = await core.list_namespaced_event(
                work_ns, field_selector=f"involvedObject.name={name},reason=ViolationDenied"
            )
            return next((e for e in found.items if f"in pod {work_ns}/{pod.metadata.name}" in e.message), None)

        # The audit record, read by the agent's pod through the chart's mounts, attributed to
        # the workload's pod through the host's /proc.
        event = await wait_for(violation_reported, timeout=180, interval=1.0, what="a violation Event naming the pod")
        assert f"node {NODE}" in event.message
        assert "kallsyms" in event.message

        outcomes = await stolen_token_outcomes(chart_node, work_ns, profile)
        manager = f"system:serviceaccount:{install_ns}:{release}-manager"
        expected_accounts = {manager, f"system:serviceaccount:{work_ns}:default"}
        if topology == "split":
            expected_accounts.add(f"system:serviceaccount:{install_ns}:{release}-agent")
        assert set(outcomes) == expected_accounts
        for account, tries in outcomes.items():
            allowed = {what for what, status in tries.items() if 200 <= status < 300}
            assert allowed == (MANAGER_CAN if account == manager else set()), (account, tries)
            assert all(status == 403 for what, status in tries.items() if what not in allowed), (account, tries)

        hook_pods: set[tuple[str, str]] = set()

        async def watch_hook() -> None:
            while True:
                for p in (
                    await core.list_namespaced_pod(install_ns, label_selector="app.kubernetes.io/component=cleanup")
                ).items:
                    if p.spec.node_name:  # a pod listed before the scheduler bound it names no node yet
                        hook_pods.add((p.spec.node_name, p.spec.containers[0].image))
                await asyncio.sleep(0.5)

        watcher = asyncio.create_task(watch_hook())
        started = time.monotonic()
        try:
            await asyncio.to_thread(helm.uninstall, release, timeout=600, wait="watcher")
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        chart_node.timings[f"helm uninstall ({topology})"] = time.monotonic() - started
        assert hook_pods == {(NODE, chart_node.image.name)}

        for kind in ("mutating", "validating"):
            listed = await getattr(admission, f"list_{kind}_webhook_configuration")()
            assert [w.metadata.name for w in listed.items if w.metadata.name.startswith(release)] == []
        for resource in (api.VARMOR_POLICY, api.VARMOR_CLUSTER_POLICY, api.ARMOR_PROFILE, api.ARMOR_NODE):
            listed = await custom.list_cluster_custom_object(G, V, resource.plural)
            assert listed["items"] == [], resource.kind
        assert chart_node.varmor_profiles() == []
        # The running container lost its profile with the unload: it runs on, unconfined.
        after = await core.read_namespaced_pod(pod.metadata.name, work_ns)
        assert str(after.status.container_statuses[0].container_id).endswith(cid)
        assert after.status.container_statuses[0].restart_count == 0
        assert chart_node.label_of(cid) == "unconfined"
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(helm.uninstall, release, timeout=300, ignore_not_found=True)
        for ns in (work_ns, install_ns):
            with contextlib.suppress(ApiException):
                await core.delete_namespace(ns)
