"""Leader benchmark: 100 simulated node agents, 200 policies, one real leader process.

What it measures (against the project's real kube-apiserver + etcd on loopback):
* policy create -> Ready latency, p50 / p95 (the bench creates all policies at once);
* the leader process's CPU time and RSS (from /proc) while that happens, and idle;
* the write cost of one policy change, per node: after everything is Ready, one policy's
  rules change; count the agents' ArmorNode writes and the leader's writes (from its
  `varmor_api_writes_total` metric) until that policy is Ready again.

The simulated agents write their ArmorNodes with the agent's own StatusWriter (its
debounce, coalescing and pacing): each watches ArmorProfiles (one shared watch here, to
spare the 2-core machine 100 watches) and reports every profile loaded at its current
hash; only the parser is left out.

Run: .venv/bin/python bench/bench_leader.py [--kubeconfig K] [--nodes 100] [--policies 200]
Without --kubeconfig it starts its own control plane in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from varmor import api  # noqa: E402
from varmor.dev.cluster import ControlPlane, free_port  # noqa: E402
from varmor.dev.install import install_crds  # noqa: E402
from varmor.kube import paths  # noqa: E402
from varmor.kube.client import ApiException, new_api_client  # noqa: E402
from varmor.kube.informer import Informer  # noqa: E402
from varmor.kube.kube import JSON_PATCH, Kube  # noqa: E402
from varmor.nodeexec.status import StatusWriter  # noqa: E402

INSTALL_NS = "varmor-bench"
POLICY_NS = "bench"
DEBOUNCE = 0.5


def proc_stats(pid: int) -> tuple[float, int, int]:
    """(cpu seconds, rss kB, peak rss kB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    hwm = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return cpu, rss, hwm


def leader_writes(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    m = re.search(r'varmor_api_writes_total\{component="reconcile"\} ([0-9.e+]+)', text)
    return float(m.group(1)) if m else 0.0


class Agents:
    """N simulated agents sharing one ArmorProfile watch; each writes its own ArmorNode."""

    def __init__(self, api_client: Any, names: list[str], pace: float) -> None:
        self.kube = Kube(api_client)
        self.names = names
        self.profiles = Informer(api_client, api.ARMOR_PROFILE, resync_seconds=3600)
        # The agent's own status writer (coalescing, pacing), minus heartbeats (not measured).
        self.writers = [StatusWriter(self.kube, n, self.status, heartbeat=0, pace=pace) for n in names]
        self.seen: dict[tuple[str, str], str | None] = {}
        self.profiles.add_handler(self._changed)

    @property
    def writes(self) -> int:
        return sum(w.writes for w in self.writers)

    async def _changed(self, event: str, obj: Any) -> None:
        """Only content changes matter to an agent (status writes by the leader do not)."""
        key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        sha = None if event == "DELETED" else obj["spec"]["profile"]["sha256"]
        if self.seen.get(key) == sha:
            return
        self.seen[key] = sha
        for writer in self.writers:
            writer.mark()

    def status(self) -> dict[str, Any]:
        loaded = {
            ap["metadata"]["name"]: {
                "namespace": ap["metadata"]["namespace"],
                "sha256": ap["spec"]["profile"]["sha256"],
                "mode": ap["spec"]["profile"]["mode"],
            }
            for ap in self.profiles.list()
            if not ap["metadata"].get("deletionTimestamp")
        }
        return {
            "phase": "Supported",
            "ready": True,
            "parserVersion": "3.0.8",
            "agentVersion": "bench",
            "profiles": loaded,
            "failures": {},
        }

    async def run(self) -> None:
        await asyncio.gather(self.profiles.run(), *(w.run() for w in self.writers))


async def setup_nodes(kube: Kube, count: int) -> list[str]:
    names = []
    for i in range(count):
        name = f"bench-node-{i:03d}"
        try:
            node = await kube.request("POST", "/api/v1/nodes", body={"metadata": {"name": name}})
        except ApiException as exc:
            if exc.status != 409:
                raise
            node = await kube.request("GET", f"/api/v1/nodes/{name}")
        body = {
            "apiVersion": api.API_VERSION,
            "kind": "ArmorNode",
            "metadata": {
                "name": name,
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}],
            },
        }
        with contextlib.suppress(ApiException):
            await kube.request("POST", paths.custom_path(api.ARMOR_NODE), body=body)
        status = {
            "phase": "Supported",
            "ready": True,
            "parserVersion": "3.0.8",
            "agentVersion": "bench",
            "profiles": {},
            "failures": {},
        }
        await kube.request(
            "PATCH",
            paths.custom_path(api.ARMOR_NODE, None, name) + "/status",
            body=[{"op": "add", "path": "/status", "value": status}],
            content_type=JSON_PATCH,
        )
        names.append(name)
    return names


def policy(i: int, rules: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": "VarmorPolicy",
        "metadata": {"name": f"p{i:03d}"},
        "spec": {
            "target": {"kind": "Deployment", "selector": {"matchLabels": {"app": f"p{i:03d}"}}},
            "policy": {"enforcer": "AppArmor", "mode": "EnhanceProtect", "enhanceProtect": {"hardeningRules": rules}},
        },
    }


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def bench(kubeconfig: str, n_nodes: int, n_policies: int, n_single: int, pace: float) -> None:
    api_client = await new_api_client(kubeconfig)
    kube = Kube(api_client)
    await install_crds(api_client)
    for ns in (INSTALL_NS, POLICY_NS):
        with contextlib.suppress(ApiException):
            await kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": ns}})
    names = await setup_nodes(kube, n_nodes)
    metrics_port = free_port()
    log = Path(tempfile.mkstemp(prefix="bench-leader-", suffix=".log")[1])
    leader = subprocess.Popen(  # noqa: ASYNC220 (started once, before measuring)
        [
            sys.executable,
            "-m",
            "varmor.cli",
            "run",
            "--roles=leader",
            f"--kubeconfig={kubeconfig}",
            f"--namespace={INSTALL_NS}",
            "--bind-address=127.0.0.1",
            f"--health-port={free_port()}",
            f"--metrics-port={metrics_port}",
            "--no-leader-webhook-tasks",
            "--log-level=warning",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    agents = Agents(api_client, names, pace)
    policies = Informer(api_client, api.VARMOR_POLICY, namespace=POLICY_NS, resync_seconds=3600)
    created: dict[str, float] = {}
    ready_at: dict[str, float] = {}

    async def on_policy(_event: str, obj: Any) -> None:
        name = obj["metadata"]["name"]
        st = obj.get("status") or {}
        if st.get("ready") and name in created and name not in ready_at:
            ready_at[name] = time.monotonic()

    policies.add_handler(on_policy)
    tasks = [asyncio.create_task(agents.run()), asyncio.create_task(policies.run())]
    try:
        await asyncio.sleep(3)  # leader elected, informers synced
        cpu0, _, _ = proc_stats(leader.pid)
        t0 = time.monotonic()
        sem = asyncio.Semaphore(20)

        async def create(i: int) -> None:
            async with sem:
                body = policy(i, ["disallow-write-core-pattern", "disallow-mount"])
                await kube.request("POST", paths.custom_path(api.VARMOR_POLICY, POLICY_NS), body=body)
                created[body["metadata"]["name"]] = time.monotonic()

        await asyncio.gather(*(create(i) for i in range(n_policies)))
        while len(ready_at) < n_policies:
            if time.monotonic() - t0 > 600:
                raise RuntimeError(f"only {len(ready_at)} policies Ready after 600 s; see {log}")
            await asyncio.sleep(0.1)
        all_ready = time.monotonic() - t0
        cpu1, rss1, hwm1 = proc_stats(leader.pid)
        lat = [ready_at[n] - created[n] for n in created]

        # Idle: nothing changes; the leader only renews its lease.
        await asyncio.sleep(5)
        cpu_idle0, _, _ = proc_stats(leader.pid)
        await asyncio.sleep(10)
        cpu_idle1, rss_idle, _ = proc_stats(leader.pid)

        # Steady state: one policy at a time on top of the others.
        single: list[float] = []
        for i in range(n_policies, n_policies + n_single):
            name = f"p{i:03d}"
            await create(i)
            while name not in ready_at:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            single.append(ready_at[name] - created[name])

        # One policy change: count writes until it is Ready at the new hash.
        agent_w0, leader_w0 = agents.writes, leader_writes(metrics_port)
        target = "p000"
        obj = await kube.request("GET", paths.custom_path(api.VARMOR_POLICY, POLICY_NS, target))
        obj["spec"]["policy"]["enhanceProtect"]["hardeningRules"].append("disallow-umount")
        t_change = time.monotonic()
        await kube.request("PUT", paths.custom_path(api.VARMOR_POLICY, POLICY_NS, target), body=obj)
        while True:
            cur = policies.get(POLICY_NS, target) or {}
            st = cur.get("status") or {}
            if st.get("observedGeneration") == 2 and st.get("ready"):
                break
            await asyncio.sleep(0.05)
        change_latency = time.monotonic() - t_change
        await asyncio.sleep(3 * DEBOUNCE + 1)  # let stragglers land before counting
        agent_w = agents.writes - agent_w0
        leader_w = leader_writes(metrics_port) - leader_w0

        print(f"nodes={n_nodes} policies={n_policies}")
        print(
            f"create->Ready: p50={statistics.median(lat):.2f}s p95={pct(lat, 95):.2f}s max={max(lat):.2f}s "
            f"(all {n_policies} Ready after {all_ready:.1f}s)"
        )
        print(
            f"leader CPU during the burst: {cpu1 - cpu0:.1f}s over {all_ready:.1f}s "
            f"({100 * (cpu1 - cpu0) / all_ready:.0f}% of one core); "
            f"RSS {rss1 / 1024:.0f} MiB, peak {hwm1 / 1024:.0f} MiB"
        )
        if single:
            print(
                f"single create->Ready with {n_policies} policies in place: p50={statistics.median(single):.2f}s "
                f"p95={pct(single, 95):.2f}s (n={len(single)})"
            )
        print(f"leader idle: {100 * (cpu_idle1 - cpu_idle0) / 10:.1f}% of one core, RSS {rss_idle / 1024:.0f} MiB")
        print(
            f"one policy change: Ready again after {change_latency:.2f}s; writes: agents {agent_w} "
            f"({agent_w / n_nodes:.2f}/node), leader {leader_w:.0f} ({leader_w / n_nodes:.3f}/node); "
            f"total {(agent_w + leader_w) / n_nodes:.2f} per node"
        )
        print(f"agent writes overall: {agents.writes} ({agents.writes / n_nodes:.1f}/node)")
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        leader.send_signal(signal.SIGTERM)
        leader.wait(timeout=20)
        await api_client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", default=os.environ.get("VARMOR_TEST_KUBECONFIG"))
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--policies", type=int, default=200)
    parser.add_argument("--single", type=int, default=20, help="policies created one at a time afterwards")
    parser.add_argument("--pace", type=float, default=2.0, help="the agents' StatusWriter pace (0: no pacing)")
    args = parser.parse_args()
    if args.kubeconfig:
        asyncio.run(bench(args.kubeconfig, args.nodes, args.policies, args.single, args.pace))
        return
    workdir = Path(tempfile.mkdtemp(prefix="varmor-bench-cp-"))
    plane = ControlPlane(workdir)
    try:
        state = plane.start()
        asyncio.run(bench(state.kubeconfig, args.nodes, args.policies, args.single, args.pace))
    finally:
        plane.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
