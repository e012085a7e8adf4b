"""`varmor dev up|down`: the whole product on the local control plane, in one command.

Starts the control plane, installs the CRDs, runs varmor with every role as a background
process (the agent against a securityfs stand-in when this host's kernel has no
AppArmor), applies the example Deployment and policy, waits for the policy to turn Ready
and prints what happened. Everything stays up until `varmor dev down`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from varmor import api
from varmor.dev.cluster import ControlPlane, free_port, stop_detached
from varmor.dev.paths import REPO_ROOT, demo_dir, dev_cluster_dir

INSTALL_NAMESPACE = "varmor"
NODE_NAME = "varmor-dev-node"
EXAMPLES = REPO_ROOT / "examples"


dev_dir = demo_dir
cluster_dir = dev_cluster_dir


def host_has_apparmor() -> bool:
    return Path("/sys/kernel/security/apparmor/profiles").exists()


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def spawn(name: str, argv: list[str]) -> int:
    """Start a detached background process whose log goes to dev_dir()/<name>.log."""
    log = open(dev_dir() / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return proc.pid


def wait_path(path: Path, timeout: float, pid: int) -> None:
    """Until `path` exists. The agent detects AppArmor once, at start: starting it before
    the stand-in is up would report the node Unsupported, so this fails loudly instead."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout}s (see {dev_dir()}/securityfs-standin.log)")
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                raise RuntimeError(f"the securityfs stand-in exited (see {dev_dir()}/securityfs-standin.log)")
        time.sleep(0.05)


def wait_http_ok(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout}s")


async def _apply_examples(api_client: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    from kubernetes.aio import client
    from kubernetes.aio.client.exceptions import ApiException

    core, apps, custom = client.CoreV1Api(api_client), client.AppsV1Api(api_client), client.CustomObjectsApi(api_client)
    deployment = yaml.safe_load((EXAMPLES / "demo-deployment.yaml").read_text())
    policy = yaml.safe_load((EXAMPLES / "demo-policy.yaml").read_text())
    ns = policy["metadata"]["namespace"]
    for name in (ns,):
        with contextlib.suppress(ApiException):
            await core.create_namespace({"metadata": {"name": name}})
    for _ in range(100):  # the controller-manager creates the default ServiceAccount
        if any(sa.metadata.name == "default" for sa in (await core.list_namespaced_service_account(ns)).items):
            break
        await asyncio.sleep(0.1)
    # The Deployment exists before the policy, so the policy's updateExistingWorkloads
    # rolls it; new Pods then come out of admission with the profile set.
    with contextlib.suppress(ApiException):
        await apps.create_namespaced_deployment(ns, deployment)
    with contextlib.suppress(ApiException):
        await custom.create_namespaced_custom_object(api.GROUP, api.VERSION, ns, api.VARMOR_POLICY.plural, policy)
    return deployment, policy


async def _wait_ready(api_client: Any, policy: dict[str, Any], timeout: float) -> dict[str, Any]:
    from kubernetes.aio import client

    custom = client.CustomObjectsApi(api_client)
    ns, name = policy["metadata"]["namespace"], policy["metadata"]["name"]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        current: dict[str, Any] = await custom.get_namespaced_custom_object(
            api.GROUP, api.VERSION, ns, api.VARMOR_POLICY.plural, name
        )
        status = current.get("status") or {}
        if status.get("ready"):
            return current
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"policy {ns}/{name} not Ready after {timeout}s: {json.dumps(status, indent=2)}")
        await asyncio.sleep(0.3)


async def _protected_pod(api_client: Any, ns: str, profile: str, timeout: float) -> dict[str, Any] | None:
    """A Pod of the rolled Deployment that came out of admission with the profile."""
    from kubernetes.aio import client

    core = client.CoreV1Api(api_client)
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        for pod in (await core.list_namespaced_pod(ns, label_selector="app=web")).items:
            spec = api_client.sanitize_for_serialization(pod.spec)
            if any(
                (c.get("securityContext") or {}).get("appArmorProfile", {}).get("localhostProfile") == profile
                for c in spec["containers"]
            ):
                return {"metadata": {"name": pod.metadata.name, "namespace": ns}, "spec": spec}
        await asyncio.sleep(0.3)
    return None


async def _run_demo(kubeconfig: str, timeout: float) -> int:
    from kubernetes.aio import client

    from varmor.dev.install import install_crds
    from varmor.kube.client import new_api_client

    api_client = await new_api_client(kubeconfig)
    try:
        say("installing CRDs")
        await install_crds(api_client)
        core = client.CoreV1Api(api_client)
        existing = {n.metadata.name for n in (await core.list_node()).items}
        if NODE_NAME not in existing:
            await core.create_node({"metadata": {"name": NODE_NAME, "labels": {"kubernetes.io/hostname": NODE_NAME}}})
        if INSTALL_NAMESPACE not in {n.metadata.name for n in (await core.list_namespace()).items}:
            await core.create_namespace({"metadata": {"name": INSTALL_NAMESPACE}})
        _start_varmor(kubeconfig)
        say("applying examples/demo-deployment.yaml and examples/demo-policy.yaml")
        _, policy = await _apply_examples(api_client)
        ready = await _wait_ready(api_client, policy, timeout)
        status = ready["status"]
        ns = ready["metadata"]["namespace"]
        profile = await client.CustomObjectsApi(api_client).get_namespaced_custom_object(
            api.GROUP, api.VERSION, ns, api.ARMOR_PROFILE.plural, status["profileName"]
        )
        pod = await _protected_pod(api_client, ns, status["profileName"], timeout)
    finally:
        await api_client.close()
    print()
    say(f"policy {ns}/{ready['metadata']['name']}: READY={status['ready']} phase={status.get('phase')}")
    for condition in status.get("conditions", []):
        reason, message = condition.get("reason", ""), condition.get("message", "")
        print(f"    {condition['type']:<10} {condition['status']:<6} {reason}: {message}")
    pstatus = profile.get("status") or {}
    say(
        f"ArmorProfile {ns}/{status['profileName']}: loaded on {pstatus.get('currentNumberLoaded')}"
        f"/{pstatus.get('desiredNumberLoaded')} node(s), mode {profile['spec']['profile']['mode']}"
    )
    say("the generated AppArmor profile:")
    print(profile["spec"]["profile"]["appArmor"])
    if pod is None:
        say("no protected Pod appeared (is the webhook registered? see the log)")
    else:
        say(f"Pod {pod['metadata']['name']} as admitted (containers):")
        shown = [{k: c[k] for k in ("name", "image", "securityContext") if k in c} for c in pod["spec"]["containers"]]
        print(yaml.safe_dump(shown, sort_keys=False))
    print()
    say("summary")
    print(f"    export KUBECONFIG={kubeconfig}")
    print(f"    varmor log: {dev_dir() / 'varmor.log'}")
    print("    the cluster and varmor stay up until: varmor dev down")
    return 0


def _start_varmor(kubeconfig: str) -> None:
    state_file = dev_dir() / "state.json"
    if state_file.exists():
        say("varmor already running")
        return
    pids: dict[str, int] = {}
    securityfs = Path("/sys/kernel/security")
    agent_args = [f"--securityfs={securityfs}"]
    if not host_has_apparmor():
        securityfs = dev_dir() / "securityfs"
        say(f"this kernel has no AppArmor: the agent loads into a stand-in securityfs at {securityfs}")
        pids["securityfs-standin"] = spawn(
            "securityfs-standin", [sys.executable, "-m", "varmor.cli", "dev", "securityfs-standin", str(securityfs)]
        )
        wait_path(securityfs / "apparmor" / "profiles", 60, pids["securityfs-standin"])
        enabled = dev_dir() / "apparmor-enabled"
        enabled.write_text("Y\n")
        agent_args = [f"--securityfs={securityfs}", f"--apparmor-enabled-file={enabled}"]
    ports = {"webhook": free_port(), "health": free_port(), "metrics": free_port()}
    profile_dir = dev_dir() / "apparmor.d"
    profile_dir.mkdir(parents=True, exist_ok=True)
    say("starting varmor (roles webhook, leader, agent)")
    pids["varmor"] = spawn(
        "varmor",
        [
            sys.executable,
            "-m",
            "varmor.cli",
            "run",
            "--roles=webhook,leader,agent",
            f"--kubeconfig={kubeconfig}",
            f"--namespace={INSTALL_NAMESPACE}",
            "--bind-address=127.0.0.1",
            f"--health-port={ports['health']}",
            f"--metrics-port={ports['metrics']}",
            f"--webhook-port={ports['webhook']}",
            f"--webhook-url=https://127.0.0.1:{ports['webhook']}",
            "--webhook-config-name=varmor-dev",
            "--leader-identity=varmor-dev",
            f"--node-name={NODE_NAME}",
            f"--profile-dir={profile_dir}",
            *agent_args,
            f"--violation-log={dev_dir() / 'violations.jsonl'}",
            # The kernel's audit records: with no kubelet here, append records to it
            # (the README's "Watch, then enforce" does) as auditd would.
            f"--audit-log={dev_dir() / 'audit.log'}",
            "--behavior-flush=5",
            "--host-proc=",  # no pods run here: records name no pod (and a policy's all count)
        ],
    )
    state_file.write_text(json.dumps({"pids": pids, "ports": ports}))
    wait_http_ok(f"http://127.0.0.1:{ports['health']}/readyz", 90)
    say(f"varmor ready (metrics on http://127.0.0.1:{ports['metrics']}/metrics)")


def up(timeout: float = 120.0) -> int:
    dev_dir().mkdir(parents=True, exist_ok=True)
    kubeconfig = cluster_dir() / "admin.kubeconfig"
    if not (cluster_dir() / "state.json").exists():
        say("starting the local control plane (etcd, kube-apiserver, kube-controller-manager)")
        ControlPlane(cluster_dir()).start(detach=True)
    return asyncio.run(_run_demo(str(kubeconfig), timeout))


def down() -> int:
    state_file = dev_dir() / "state.json"
    if state_file.exists():
        kubeconfig = cluster_dir() / "admin.kubeconfig"
        say("removing varmor's webhook configurations, policies and profiles")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "varmor.cli",
                "cleanup",
                f"--kubeconfig={kubeconfig}",
                f"--namespace={INSTALL_NAMESPACE}",
                "--webhook-config-name=varmor-dev",
                "--unload-timeout=30",
            ],
            check=False,
        )
        stop_detached(dev_dir())  # SIGTERM, wait, then SIGKILL
    say("stopping the local control plane")
    stop_detached(cluster_dir())
    shutil.rmtree(cluster_dir(), ignore_errors=True)
    shutil.rmtree(dev_dir(), ignore_errors=True)
    return 0


async def _schedule(kubeconfig: str, namespace: str) -> list[str]:
    """Bind the namespace's unscheduled pods to the dev node, as a scheduler would: the
    dev cluster has none (and no kubelet, so they never run), but a pod bound to the node
    is what the leader checks before it counts the node's behaviour."""
    from varmor.kube import paths
    from varmor.kube.client import new_api_client
    from varmor.kube.kube import Kube

    api_client = await new_api_client(kubeconfig)
    bound = []
    try:
        kube = Kube(api_client, component="dev")
        for pod in (await kube.request("GET", paths.core_path("pods", namespace)))["items"]:
            name = pod["metadata"]["name"]
            if pod["spec"].get("nodeName") or pod["metadata"].get("deletionTimestamp"):
                continue
            body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}}
            body["target"] = {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME}
            await kube.request("POST", paths.core_path("pods", namespace, name) + "/binding", body=body)
            bound.append(name)
    finally:
        await api_client.close()
    return bound


def schedule(namespace: str) -> int:
    kubeconfig = cluster_dir() / "admin.kubeconfig"
    if not kubeconfig.exists():
        print("no dev cluster: run `varmor dev up` first", file=sys.stderr)
        return 1
    for name in asyncio.run(_schedule(str(kubeconfig), namespace)):
        say(f"pod {namespace}/{name} bound to {NODE_NAME}")
    return 0
