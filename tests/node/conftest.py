"""The node layer: one VM per test session that is a real node of the session's control
plane (tests/node/nodevm.py), with varmor's manager (webhook + leader, the chart's split
topology) as host processes and varmor's agent inside the VM, with the chart's agent
arguments and the chart's agent ServiceAccount token."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from tests.helpers import wait_for
from tests.node import nodevm
from tests.product import Install, container_args, installed
from varmor.dev.cluster import ControlPlaneState
from varmor.dev.paths import K8S_VERSION
from varmor.kube.client import new_api_client

NODE = "varmor-node-1"
#: The node's clock against the control plane's: minutes behind, as an unsynchronised node
#: may be (the certificates are valid from 5 minutes before they are issued).
NODE_CLOCK_OFFSET = dt.timedelta(minutes=-4)
IMAGE = nodevm.IMAGES[0]
#: The chart's hostPath for each /host mount of the agent (values.yaml agent.*).
HOST_PATHS = {"/host/apparmor.d": "/etc/apparmor.d", "/host/securityfs": "/sys/kernel/security",
              "/host/audit": "/var/log/audit", "/host/proc": "/proc"}  # fmt: skip


_NODES: list[nodevm.NodeVM] = []
_TIMINGS: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """What the node layer costs under TCG (bench/RESULTS.md quotes these)."""
    if _TIMINGS:
        terminalreporter.section("node layer timings")
        for what, seconds in _TIMINGS.items():
            terminalreporter.write_line(f"{what}: {seconds:.1f} s")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Show the node's logs on a failed node test."""
    report = yield
    if report.failed and _NODES and item.get_closest_marker("node"):  # type: ignore[attr-defined]
        vm = _NODES[0]
        for log in ("kubelet", "containerd", "varmor-agent"):
            with contextlib.suppress(Exception):
                report.sections.append((f"node {log}.log", vm.run(f"tail -n 40 /var/log/{log}.log", 20)[1]))  # type: ignore[attr-defined]
        report.sections.append(("node console", vm.console_tail(30)))  # type: ignore[attr-defined]
    return report


@dataclass
class Node:
    """The running node: its VM, the manager's install, and boot figures."""

    name: str
    vm: nodevm.NodeVM
    install: Install
    timings: dict[str, float] = field(default_factory=lambda: _TIMINGS)

    def run(self, command: str, timeout: float = 60.0) -> str:
        """Run `command` in the guest; fails the test on a non-zero exit."""
        rc, out = self.vm.run(command, timeout)
        assert rc == 0, f"{command!r} exited {rc} in the node:\n{out}"
        return out

    def loaded_profiles(self) -> dict[str, str]:
        """What the node's kernel has loaded: profile name -> mode."""
        out = self.run("cat /sys/kernel/security/apparmor/profiles")
        found: dict[str, str] = {}
        for line in out.splitlines():
            name, _, mode = line.rpartition(" (")
            found[name] = mode.rstrip(")")
        return found


def agent_args(install: Install) -> list[str]:
    """The chart's agent arguments (split topology's DaemonSet), its /host mounts mapped to
    the node's own paths (a process in the VM instead of the DaemonSet's pod)."""
    args = container_args(install.rendered("DaemonSet"), NODE)
    for mount, host in HOST_PATHS.items():
        args = [a.replace(mount, host) for a in args]
    # Behaviour shares every 2 s instead of 30: a modelling test waits on them.
    return [
        *args,
        "--kubeconfig=/run/varmor/agent.kubeconfig",
        "--violation-log=/var/log/varmor-violations.log",
        "--behavior-flush=2",
    ]


async def agent_token(api_client: Any, install: Install) -> str:
    """A token of the chart's agent ServiceAccount bound to an agent Pod on the node (what
    the DaemonSet's pod mounts); the Pod runs there as a placeholder."""
    core = client.CoreV1Api(api_client)
    account = f"{install.release}-agent"
    pod = {
        "metadata": {"name": "varmor-agent-placeholder"},
        "spec": {
            "nodeName": NODE,
            "serviceAccountName": account,
            "automountServiceAccountToken": False,
            "containers": [{"name": "agent", "image": nodevm.IMAGES[1], "imagePullPolicy": "Never"}],
        },
    }
    await core.create_namespaced_pod(install.namespace, pod)
    spec = {
        "expirationSeconds": 7200,
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod["metadata"]["name"]},
    }
    token = await core.create_namespaced_service_account_token(account, install.namespace, {"spec": spec})
    return str(token.status.token)


def kubelet_files(plane: ControlPlaneState, node: str) -> dict[str, bytes]:
    """The cluster CA and the kubelet's client certificate and kubeconfig (system:node:NAME),
    for the node's config disk."""
    kubelet = plane.issue_client(f"system:node:{node}", ("system:nodes",))
    return {
        "ca.crt": plane.ca_cert.read_bytes(),
        "kubelet.crt": kubelet.cert_pem,
        "kubelet.key": kubelet.key_pem,
        "kubelet.kubeconfig": nodevm.kubeconfig(
            {"client-certificate": "/run/varmor/kubelet.crt", "client-key": "/run/varmor/kubelet.key"}
        ),
    }


@contextlib.asynccontextmanager
async def running_node(
    api_client: Any, plane: ControlPlaneState, kubeconfig: str, tmp: Path, *, kube_version: str = K8S_VERSION
) -> AsyncIterator[Node]:
    """varmor's manager on the host (the chart rendered for `kube_version`, split topology)
    and a node VM with that release's kubelet, Ready, until the block ends."""
    core = client.CoreV1Api(api_client)
    install_ns = "varmor-node-system"
    await core.create_namespace({"metadata": {"name": install_ns}})
    try:
        async with installed(
            api_client, kubeconfig, install_ns, tmp, topology="split", nodes=(), kube_version=kube_version
        ) as install:
            token = await agent_token(api_client, install)
            files = {**kubelet_files(plane, NODE), "agent.kubeconfig": nodevm.kubeconfig({"token": token})}
            config = nodevm.NodeConfig(NODE, plane.api_port, files=files, agent_args=agent_args(install))
            vm = nodevm.NodeVM(tmp / "vm", config, kube_version=kube_version, clock_offset=NODE_CLOCK_OFFSET)
            _NODES.append(vm)
            started = time.monotonic()
            try:
                await asyncio.to_thread(vm.start)
                node = Node(NODE, vm, install)
                await asyncio.to_thread(vm.wait_line, "READY", 300)
                await wait_for(lambda: node_ready(core), timeout=300, interval=1.0, what=f"node {NODE} Ready")
                node.timings[f"boot to node Ready ({kube_version})"] = time.monotonic() - started
                yield node
            finally:
                _NODES.remove(vm)
                vm.stop()
                with contextlib.suppress(ApiException):
                    await core.delete_node(NODE)
    finally:
        with contextlib.suppress(ApiException):
            await core.delete_namespace(install_ns)


@pytest.fixture(scope="session")
async def node(control_plane: ControlPlaneState, kubeconfig: str, crds: list[str]) -> AsyncIterator[Node]:
    api_client = await new_api_client(kubeconfig)
    tmp = Path(tempfile.mkdtemp(prefix="varmor-node-"))
    try:
        async with running_node(api_client, control_plane, kubeconfig, tmp) as found:
            yield found
    finally:
        await api_client.close()
        shutil.rmtree(tmp, ignore_errors=True)


async def node_ready(core: Any, name: str = NODE) -> bool:
    try:
        found = await core.read_node(name)
    except ApiException:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in found.status.conditions or [])
