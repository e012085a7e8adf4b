"""The whole product on a real API server, installed from the chart's rendered manifests.

The chart is rendered with Helm for the API server's release, every object is applied,
and varmor runs as local processes with exactly the arguments the rendered Deployment and
DaemonSet give it, each authenticated with a token of the chart's own ServiceAccount (so
the chart's RBAC, its webhook configurations and its node-report guard are what is
exercised). Agents stand in for nodes, each with its own stand-in securityfs that records
what reached the kernel interface, and a token bound to an agent Pod on its Node, as a
DaemonSet pod's is. Used by the default suite's end-to-end test and the compat layer.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from tests.helpers import wait_for
from varmor import api
from varmor.dev.chart import is_hook, render
from varmor.dev.cluster import free_port
from varmor.dev.paths import K8S_VERSION
from varmor.nodeexec.standin import StandInSecurityfs, write_enabled_file

G, V = api.GROUP, api.VERSION


def _creators(api_client: Any, obj: dict[str, Any]) -> dict[str, Callable[[], Awaitable[Any]]]:
    ns = obj["metadata"].get("namespace")
    core, apps, rbac = (
        client.CoreV1Api(api_client),
        client.AppsV1Api(api_client),
        client.RbacAuthorizationV1Api(api_client),
    )
    policy, batch = client.PolicyV1Api(api_client), client.BatchV1Api(api_client)
    admission, net = client.AdmissionregistrationV1Api(api_client), client.NetworkingV1Api(api_client)
    return {
        "ServiceAccount": lambda: core.create_namespaced_service_account(ns, obj),
        "Service": lambda: core.create_namespaced_service(ns, obj),
        "DaemonSet": lambda: apps.create_namespaced_daemon_set(ns, obj),
        "Deployment": lambda: apps.create_namespaced_deployment(ns, obj),
        "PodDisruptionBudget": lambda: policy.create_namespaced_pod_disruption_budget(ns, obj),
        "Job": lambda: batch.create_namespaced_job(ns, obj),
        "Role": lambda: rbac.create_namespaced_role(ns, obj),
        "RoleBinding": lambda: rbac.create_namespaced_role_binding(ns, obj),
        "ClusterRole": lambda: rbac.create_cluster_role(obj),
        "ClusterRoleBinding": lambda: rbac.create_cluster_role_binding(obj),
        "NetworkPolicy": lambda: net.create_namespaced_network_policy(ns, obj),
        "MutatingWebhookConfiguration": lambda: admission.create_mutating_webhook_configuration(obj),
        "ValidatingWebhookConfiguration": lambda: admission.create_validating_webhook_configuration(obj),
        "ValidatingAdmissionPolicy": lambda: admission.create_validating_admission_policy(obj),
        "ValidatingAdmissionPolicyBinding": lambda: admission.create_validating_admission_policy_binding(obj),
    }


async def apply(api_client: Any, obj: dict[str, Any]) -> None:
    """Create one rendered object with the typed APIs (enough kinds for the chart)."""
    await _creators(api_client, obj)[obj["kind"]]()


async def remove_cluster_scoped(api_client: Any, objects: list[dict[str, Any]]) -> None:
    """Delete what the chart created outside its namespace (the namespace fixture removes the rest)."""
    rbac, admission = client.RbacAuthorizationV1Api(api_client), client.AdmissionregistrationV1Api(api_client)
    deleters: dict[str, Callable[[str], Awaitable[Any]]] = {
        "ClusterRole": rbac.delete_cluster_role,
        "ClusterRoleBinding": rbac.delete_cluster_role_binding,
        "MutatingWebhookConfiguration": admission.delete_mutating_webhook_configuration,
        "ValidatingWebhookConfiguration": admission.delete_validating_webhook_configuration,
        "ValidatingAdmissionPolicy": admission.delete_validating_admission_policy,
        "ValidatingAdmissionPolicyBinding": admission.delete_validating_admission_policy_binding,
    }
    for obj in objects:
        if obj["kind"] in deleters:
            try:
                await deleters[obj["kind"]](obj["metadata"]["name"])
            except ApiException as exc:
                if exc.status != 404:
                    raise


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
    nodes: tuple[str, ...]
    kernels: dict[str, StandInSecurityfs] = field(default_factory=dict)
    processes: list[Process] = field(default_factory=list)
    server: str = ""  # where varmor's processes reach the API server ("": the kubeconfig's)

    def rendered(self, kind: str) -> dict[str, Any]:
        return next(o for o in self.objects if o["kind"] == kind and not is_hook(o))

    def logs(self) -> str:
        return "\n".join(f"==== {p.name}\n{p.log.read_text(errors='replace')[-3000:]}" for p in self.processes)


async def agent_pod(api_client: Any, namespace: str, service_account: str, node: str) -> str:
    """A Pod of `service_account` bound to `node`, standing for the DaemonSet's pod there
    (nothing runs it: the test's process is the agent), so tokens can be bound to it."""
    name = f"agent-{node}"
    pod = {
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "serviceAccountName": service_account,
            "automountServiceAccountToken": False,
            "containers": [{"name": "varmor", "image": "varmor:test"}],
        },
    }
    await client.CoreV1Api(api_client).create_namespaced_pod(namespace, pod)
    return name


async def token_kubeconfig(api_client: Any, install: Install, service_account: str, pod: str = "") -> Path:
    """A kubeconfig that authenticates as one of the chart's ServiceAccounts; with `pod`,
    the token is bound to that Pod, as a DaemonSet pod's projected token is (from 1.30 it
    carries the pod's node claim; before, the node-report guard looks the pod up)."""
    core = client.CoreV1Api(api_client)
    spec: dict[str, Any] = {"expirationSeconds": 3600}
    if pod:
        spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Pod", "name": pod}
    token = await core.create_namespaced_service_account_token(service_account, install.namespace, {"spec": spec})
    admin = yaml.safe_load(Path(install.kubeconfig).read_text())
    admin["users"] = [{"name": service_account, "user": {"token": token.status.token}}]
    if install.server:
        admin["clusters"][0]["cluster"]["server"] = install.server
    admin["contexts"][0]["context"]["user"] = service_account
    path = install.tmp / f"{service_account}{'-' + pod if pod else ''}.kubeconfig"
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


@contextlib.asynccontextmanager
async def installed(
    api_client: Any,
    kubeconfig: str,
    namespace: str,
    tmp_path: Path,
    *,
    topology: str = "allinone",
    nodes: Sequence[str] = ("e2e-node-a", "e2e-node-b", "e2e-node-c"),
    kube_version: str = K8S_VERSION,
    extra_args: Sequence[str] = (),
    server: str = "",
) -> AsyncIterator[Install]:
    """split: a manager process (webhook + leader) and an agent per node. allinone (the
    chart's default): a process per node running every role, one of them elected leader.
    Yields once every process is ready; stops them and removes what the chart created
    outside `namespace` afterwards. `server` points varmor's processes at another address
    of the API server (a test's proxy)."""
    release = f"varmor-{namespace}"  # contains the chart name, so fullname == release
    values = {
        "topology": topology,
        "leaderElection": {"leaseDurationSeconds": 4, "renewDeadlineSeconds": 3, "retryPeriodSeconds": 1},
    }
    objects = render(values, namespace=namespace, release=release, kube_version=kube_version)
    inst = Install(namespace, release, objects, kubeconfig, tmp_path, tuple(nodes), server=server)
    core = client.CoreV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    try:
        for obj in objects:
            await apply(api_client, obj)
        for node in nodes:
            with contextlib.suppress(ApiException):
                await core.create_node({"metadata": {"name": node}})
        # split: the agent-only DaemonSet runs as the agent's account; allinone: the
        # DaemonSet runs every role as the manager's
        node_account = f"{release}-agent" if topology == "split" else f"{release}-manager"
        if topology == "split":
            manager_cfg = await token_kubeconfig(api_client, inst, f"{release}-manager")
            start(
                inst,
                "manager",
                container_args(inst.rendered("Deployment")),
                manager_cfg,
                [*webhook_args(), *extra_args],
            )
        for node in nodes:
            pod = await agent_pod(api_client, namespace, node_account, node)
            agent_cfg = await token_kubeconfig(api_client, inst, node_account, pod)
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
                 *(webhook_args() if topology == "allinone" else []), *extra_args],
            )  # fmt: skip
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
        await remove_cluster_scoped(api_client, objects)
        for node in nodes:
            with contextlib.suppress(ApiException):
                await custom.delete_cluster_custom_object(G, V, "armornodes", node)
            with contextlib.suppress(ApiException):
                await core.delete_node(node)
