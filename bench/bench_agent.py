"""Agent benchmark: cold start with 200 ArmorProfiles, and idle memory.

What it measures (real kube-apiserver + etcd on loopback, real apparmor_parser, a stand-in
securityfs served by this process because the host kernel has no AppArmor):
* time to ready of a real `varmor run --roles agent` process, from spawn until /readyz
  answers 200 (and the agent's own figure, role start -> ready, which excludes the Python
  interpreter start and imports), on a cold node: empty kernel, empty profile dir;
* against the same machine's floor for the same work: ONE batched `apparmor_parser -r`
  run over the same 200 profile files with the same flags (what the agent cannot beat
  without skipping the compile). Agent and bare runs alternate, so both see the same load;
* the agent's RSS once idle after the sync.

Profiles are real generated ones (RuntimeDefault base + 5 hardening rules, one of which uses
the node-local include), all different (each names itself).

Run: .venv/bin/python bench/bench_agent.py [--kubeconfig K] [--profiles 200] [--rounds 3]
Without --kubeconfig it starts its own control plane in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
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

from tests.helpers import policy_doc  # noqa: E402
from varmor import api  # noqa: E402
from varmor.app import EVENT_LOOPS  # noqa: E402
from varmor.dev.cluster import ControlPlane, free_port  # noqa: E402
from varmor.dev.install import install_crds  # noqa: E402
from varmor.kube import paths  # noqa: E402
from varmor.kube.client import ApiException, new_api_client  # noqa: E402
from varmor.kube.kube import Kube  # noqa: E402
from varmor.nodeexec.files import ProfileDir  # noqa: E402
from varmor.nodeexec.parser_runner import LOAD_FLAGS  # noqa: E402
from varmor.nodeexec.standin import StandInSecurityfs, write_enabled_file  # noqa: E402
from varmor.parser import features_file, find_parser  # noqa: E402
from varmor.policy import parse_policy  # noqa: E402
from varmor.profile import build_profile  # noqa: E402

NS = "bench-agent"
NODE = "bench-agent-node"
RULES = [
    "disallow-mount-disk-device",
    "disallow-write-core-pattern",
    "disallow-mount-cgroupfs",
    "disallow-access-procfs-root",
    "disable-cap-sys-admin",
]


def rss_kb(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    hwm = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return rss, hwm


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime+stime of a process, the same for the children it has waited for)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def metric(port: int, name: str) -> float | None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


async def create_profiles(api_client: Any, n: int) -> dict[str, str]:
    kube = Kube(api_client)
    try:
        await kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": NS}})
    except ApiException as exc:
        if exc.status != 409:
            raise
    texts = {}
    policy = parse_policy(policy_doc(hardeningRules=RULES))
    for i in range(n):
        built = build_profile(policy, f"varmor-{NS}-p{i:03d}")
        texts[built.name] = built.text
        body = {
            "apiVersion": api.API_VERSION,
            "kind": "ArmorProfile",
            "metadata": {"name": built.name, "namespace": NS},
            "spec": {
                "target": {"kind": "Deployment", "name": "web"},
                "profile": {
                    "name": built.name,
                    "enforcer": "AppArmor",
                    "mode": built.mode,
                    "appArmor": built.text,
                    "sha256": built.sha256,
                },
            },
        }
        try:
            await kube.request("POST", paths.custom_path(api.ARMOR_PROFILE, NS), body=body)
        except ApiException as exc:
            if exc.status != 409:
                raise
    return texts


def bare_parser(files: list[Path], include: Path, kernel: StandInSecurityfs) -> tuple[float, float]:
    cmd = [find_parser(), "--config-file", "/dev/null", *LOAD_FLAGS, "-M", str(features_file())]
    cmd += ["-I", "/etc/apparmor.d", "-I", str(include), "--subdomainfs", str(kernel.dir), "-r", *map(str, files)]
    kernel.set_loaded({})
    started, cpu = time.monotonic(), children_cpu()
    subprocess.run(cmd, check=True, capture_output=True)
    elapsed = time.monotonic() - started
    kernel.settle()
    assert len(kernel.top_level()) == len(files), "bare parser did not load everything"
    return elapsed, children_cpu() - cpu


def agent_start(
    kubeconfig: str, root: Path, kernel: StandInSecurityfs, n: int, idle: float, event_loop: str, *, cold: bool = True
) -> dict[str, float]:
    """An agent start on an empty kernel: a new node (`cold`: empty profile dir, so no
    parser cache either) or a reboot (the profile dir and its parser cache kept)."""
    profile_dir = root / "agent-apparmor.d"
    if cold:
        shutil.rmtree(profile_dir, ignore_errors=True)
    kernel.set_loaded({})
    health, metrics_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "varmor.cli", "run", "--roles=agent", f"--kubeconfig={kubeconfig}"]
    cmd += ["--bind-address=127.0.0.1", f"--health-port={health}", f"--metrics-port={metrics_port}"]
    cmd += [f"--node-name={NODE}", f"--profile-dir={profile_dir}", f"--securityfs={kernel.root}"]
    cmd += [f"--apparmor-enabled-file={root / 'enabled'}", "--log-level=warning", f"--event-loop={event_loop}"]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health}/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited with {proc.returncode}")
            time.sleep(0.05)  # a faster poll steals CPU from the agent it measures
        ready = time.monotonic() - started
        loaded = sum(1 for name in kernel.top_level() if name.startswith(f"varmor-{NS}-"))
        assert loaded == n, f"agent loaded {loaded} of {n}"
        result = {
            "ready": ready,
            "own": metric(metrics_port, "varmor_agent_initial_sync_seconds") or 0.0,
            "cpu_self": cpu_seconds(proc.pid)[0],
            "cpu": sum(cpu_seconds(proc.pid)),
        }
        if idle:
            time.sleep(idle)
            rss, hwm = rss_kb(proc.pid)
            result |= {"rss_mb": rss / 1024, "hwm_mb": hwm / 1024}
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def setup(kubeconfig: str, n: int) -> dict[str, str]:
    api_client = await new_api_client(kubeconfig)
    try:
        await install_crds(api_client)
        return await create_profiles(api_client, n)
    finally:
        await api_client.close()


def bench(kubeconfig: str, n: int, rounds: int, idle: float, event_loop: str) -> None:
    texts = asyncio.run(setup(kubeconfig, n))
    root = Path(tempfile.mkdtemp(prefix="varmor-bench-agent-"))
    write_enabled_file(root / "enabled")
    bare_dir = ProfileDir(root / "bare-apparmor.d")
    bare_dir.write_node_local(Path("/proc/partitions"))
    files = [bare_dir.write(name, text) for name, text in sorted(texts.items())]
    bare: list[tuple[float, float]] = []
    agent: list[dict[str, float]] = []
    reboot: list[dict[str, float]] = []
    with StandInSecurityfs(root / "securityfs") as kernel:
        for i in range(rounds):
            bare.append(bare_parser(files, bare_dir.root, kernel))
            agent.append(agent_start(kubeconfig, root, kernel, n, idle if i == rounds - 1 else 0, event_loop))
            reboot.append(agent_start(kubeconfig, root, kernel, n, 0, event_loop, cold=False))
            print(
                f"round {i + 1}: bare parser {bare[-1][0]:.2f}s (cpu {bare[-1][1]:.2f}s), agent ready "
                f"{agent[-1]['ready']:.2f}s (own {agent[-1]['own']:.2f}s, cpu {agent[-1]['cpu']:.2f}s), "
                f"after a reboot {reboot[-1]['ready']:.2f}s (own {reboot[-1]['own']:.2f}s), "
                f"loadavg {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    shutil.rmtree(root, ignore_errors=True)
    b = statistics.median(x[0] for x in bare)
    bc = statistics.median(x[1] for x in bare)
    r = statistics.median(a["ready"] for a in agent)
    o = statistics.median(a["own"] for a in agent)
    c = statistics.median(a["cpu"] for a in agent)
    cs = statistics.median(a["cpu_self"] for a in agent)
    pairs = sorted(a["ready"] / x[0] for a, x in zip(agent, bare, strict=True))
    print(f"\nprofiles: {n}; rounds: {rounds} (medians)")
    print(f"one batched apparmor_parser -r over the same files: {b:.2f} s")
    print(f"agent process spawn -> /readyz 200:                  {r:.2f} s  ({r / b:.2f}x)")
    print(f"agent role start -> ready (own metric):              {o:.2f} s  ({o / b:.2f}x)")
    rr = statistics.median(a["ready"] for a in reboot)
    ro = statistics.median(a["own"] for a in reboot)
    print(
        f"after a reboot (parser cache kept): spawn -> ready   {rr:.2f} s  ({rr / b:.2f}x), "
        f"role start -> ready {ro:.2f} s"
    )
    print(f"per-round ratio spawn->ready / bare: {', '.join(f'{p:.2f}' for p in pairs)}")
    print(f"CPU time (incl. parser children): agent {c:.2f} s vs bare parser {bc:.2f} s ({c / bc:.2f}x)")
    print(f"  of which the agent's own Python process (interpreter start included): {cs:.2f} s")
    print(f"idle agent RSS after the sync: {agent[-1]['rss_mb']:.1f} MB (peak {agent[-1]['hwm_mb']:.1f} MB)")
    print("command: .venv/bin/python bench/bench_agent.py " + " ".join(sys.argv[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", default=os.environ.get("VARMOR_TEST_KUBECONFIG"))
    parser.add_argument("--profiles", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds idle before reading RSS")
    parser.add_argument("--event-loop", choices=EVENT_LOOPS, default="uvloop", help="the agent's (as `varmor run`)")
    args = parser.parse_args()
    if args.kubeconfig:
        bench(args.kubeconfig, args.profiles, args.rounds, args.idle, args.event_loop)
        return
    workdir = Path(tempfile.mkdtemp(prefix="varmor-bench-cp-"))
    plane = ControlPlane(workdir)
    try:
        state = plane.start()
        bench(state.kubeconfig, args.profiles, args.rounds, args.idle, args.event_loop)
    finally:
        plane.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
