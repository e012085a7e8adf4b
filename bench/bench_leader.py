"""Leader benchmark: simulated node agents, many policies, one real leader process, the
real kube-apiserver + etcd.

Commands (without --kubeconfig each starts its own control plane in a temporary
directory; `K8S_VERSION` picks its release, default the newest):

    # the classic figures: 100 nodes, 200 policies, 20 single creates, 20 changes
    .venv/bin/python bench/bench_leader.py [--nodes 100] [--policies 200] [--single 20] [--changes 20]
    # 5,000 nodes x 1,000 policies created at once, then 20 changes one at a time, the
    # per-write calibration, then 2 rounds of watch fan-out; --json keeps the figures
    .venv/bin/python bench/bench_leader.py --scale-run --json /tmp/scale.json
    # watch fan-out alone: K real ArmorProfile watches, the API server's cost per event per watcher
    .venv/bin/python bench/bench_leader.py --fanout-only [--fanout 500,1000] [--fanout-profiles 50] --json /tmp/fan.json
    # before/after in one run: the earlier status format and leader (a checkout of the commit
    # before the load report) against this tree, taking turns, at each scale
    git worktree add --detach /tmp/varmor-base efd32a9
    .venv/bin/python bench/bench_leader.py --ab /tmp/varmor-base --ab-scales 300x200,1000x200 --rounds 2 --changes 10
    # the projection to 10,000 and 50,000 nodes from a scale run's figures (and a fan-out run's)
    .venv/bin/python bench/bench_leader.py --project /tmp/scale.json,/tmp/fan.json

Options of note: `--load-delay S --groups G` settles each profile after a random 0-S s per
group of nodes (G ledgers) instead of at once; `--heartbeat S` turns the agents'
heartbeats on; `--connections` sizes the simulated agents' connection pool; `--tick` is
how often at most the simulated writers are marked.

What it measures, per phase (burst: every policy created at once, 20 requests in flight;
changes: one policy changed at a time, each until Ready at its new generation):
* create/change -> Ready latency, p50 / p95, and all-Ready time of the burst;
* the agents' ArmorNode writes and their request bodies' bytes, counted where the
  simulated writers send them (`leader_fleet.CountingKube`), per node and per change;
* CPU seconds of kube-apiserver, etcd, the controller-manager, the leader (and its parser
  children), the simulator, and the rest of the machine (other work), from /proc; the
  leader's peak RSS sampled through the phase;
* calibration, the leader still running: one small ArmorNode write per node, for the API
  server's CPU per write and the leader's CPU per ArmorNode event;
* watch fan-out (`leader_fanout`): what one ArmorProfile watch per agent would add.

The simulated agents (`leader_fleet`) write with the agent's own StatusWriter and build
the agent's own status (nodes with the same events and instant loads share one Ledger:
the output says so); `--format old` simulates the earlier map-of-every-profile status
(run it with `--repo` pointing at a checkout of that tree: its StatusWriter and leader).
Setup (Nodes, ArmorNodes, the agents' first writes) is not measured. The API server's
figures (kube-apiserver and etcd CPU, RSS) need the control plane this benchmark starts:
with --kubeconfig they are left out.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _repo() -> Path:
    """The tree whose varmor is measured (`--repo DIR`; default this one), before any import of it."""
    argv = sys.argv[1:]
    for i, arg in enumerate(argv):
        if arg == "--repo" and i + 1 < len(argv):
            return Path(argv[i + 1]).resolve()
        if arg.startswith("--repo="):
            return Path(arg.split("=", 1)[1]).resolve()
    return Path(__file__).resolve().parents[1]


REPO = _repo()
sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from leader_figures import Figures, leader_metrics  # noqa: E402
from leader_fleet import Fleet, endpoint, setup_nodes  # noqa: E402
from procstat import Meter  # noqa: E402

from tests import helpers  # noqa: E402
from varmor import api  # noqa: E402
from varmor.dev.cluster import ControlPlane, free_port  # noqa: E402
from varmor.dev.install import install_crds  # noqa: E402
from varmor.kube import paths  # noqa: E402
from varmor.kube.client import ApiException, new_api_client  # noqa: E402
from varmor.kube.informer import Informer  # noqa: E402
from varmor.kube.kube import MERGE_PATCH, Kube  # noqa: E402

INSTALL_NS = "varmor-bench"
POLICY_NS = "bench"
RULES = ["disallow-write-core-pattern", "disallow-mount"]


def policy(name: str, rules: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": "VarmorPolicy",
        "metadata": {"name": name},
        "spec": {
            "target": {"kind": "Deployment", "selector": {"matchLabels": {"app": name}}},
            "policy": {"enforcer": "AppArmor", "mode": "EnhanceProtect", "enhanceProtect": {"hardeningRules": rules}},
        },
    }


def start_leader(kubeconfig: str, metrics_port: int, extra: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
    log = Path(tempfile.mkstemp(prefix="bench-leader-", suffix=".log")[1])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [
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
        *extra,
    ]
    proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=REPO, env=env)
    return proc, log


async def until(check: Any, timeout: float, what: str, every: float = 0.1) -> None:
    """Poll `check()` until true: the tests' one `wait_for`, with this benchmark's argument order."""
    await helpers.wait_for(check, timeout, every, what=what)


async def quiet(fleet: Fleet, gap: float = 1.0, limit: float = 20.0) -> None:
    """Until the simulated agents sent nothing for `gap` seconds (stragglers counted)."""
    deadline = time.monotonic() + limit
    last, since = fleet.kube.sent, time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        if fleet.kube.sent != last:
            last, since = fleet.kube.sent, time.monotonic()
        elif time.monotonic() - since >= gap:
            return


async def bench(args: argparse.Namespace, kubeconfig: str, pids: dict[str, int]) -> dict[str, Any]:
    api_client = await new_api_client(kubeconfig)
    kube = Kube(api_client)
    await install_crds(api_client)
    for ns in (INSTALL_NS, POLICY_NS):
        with contextlib.suppress(ApiException):
            await kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": ns}})
    fig = Figures(args)
    t0 = time.monotonic()
    names = await setup_nodes(kube, args.nodes)
    fleet = Fleet(
        api_client,
        names,
        endpoint(kubeconfig),
        connections=args.connections,
        format=args.format,
        pace=args.pace,
        heartbeat=args.heartbeat,
        tick=args.tick,
        load_delay=args.load_delay,
        groups=args.groups,
        timing={k: v for k, v in (("max_delay", args.max_delay), ("max_pause", args.max_pause)) if v is not None},
    )
    tasks = [asyncio.create_task(fleet.run())]
    await fleet.profiles.wait_synced()
    fleet.mark_all()
    await until(lambda: fleet.unwritten() == 0, 600, "every simulated agent's first status write")
    took = time.monotonic() - t0
    fig.line(f"setup (not measured): {args.nodes} Nodes + ArmorNodes and first status writes in {took:.1f} s")
    fig.line(f"fleet: {fleet.describe()}; {args.connections} connections; marks every {args.tick} s")
    metrics_port = free_port()
    leader, log = start_leader(kubeconfig, metrics_port, args.leader_arg)
    meter = Meter({**pids, "leader": leader.pid, "simulator": os.getpid()})
    tasks.append(asyncio.create_task(meter.sample()))
    policies = Informer(api_client, api.VARMOR_POLICY, namespace=POLICY_NS, resync_seconds=3600)
    created: dict[str, float] = {}
    ready_at: dict[str, float] = {}

    async def on_policy(_event: str, obj: Any) -> None:
        name = obj["metadata"]["name"]
        if (obj.get("status") or {}).get("ready") and name in created and name not in ready_at:
            ready_at[name] = time.monotonic()

    policies.add_handler(on_policy)
    tasks.append(asyncio.create_task(policies.run()))
    try:
        await until(
            lambda: leader_metrics(metrics_port).get("nodes", 0) >= args.nodes,
            300,
            "the leader to count every node",
            1.0,
        )
        sem = asyncio.Semaphore(20)

        async def create(name: str) -> None:
            async with sem:
                await kube.request("POST", paths.custom_path(api.VARMOR_POLICY, POLICY_NS), body=policy(name, RULES))
                created[name] = time.monotonic()

        # -- burst -----------------------------------------------------------------------------
        burst = [f"p{i:05d}" for i in range(args.policies)]
        mark = fig.start(meter, fleet, metrics_port)
        start = time.monotonic()
        await asyncio.gather(*(create(n) for n in burst))
        await until(
            lambda: all(n in ready_at for n in burst), args.timeout, f"all {args.policies} policies Ready; see {log}"
        )
        all_ready = time.monotonic() - start
        fig.burst(
            mark, fig.start(meter, fleet, metrics_port), fleet, all_ready, [ready_at[n] - created[n] for n in burst]
        )
        whole = mark

        # -- idle --------------------------------------------------------------------------------
        await quiet(fleet)
        idle = fig.start(meter, fleet, metrics_port)
        await asyncio.sleep(5)
        fig.idle(idle, fig.start(meter, fleet, metrics_port), fleet)

        # -- single creates ---------------------------------------------------------------------
        if args.single:
            single = []
            for i in range(args.single):
                name = f"s{i:05d}"
                await create(name)
                await until(lambda name=name: name in ready_at, 120, f"{name} Ready", 0.02)
                single.append(ready_at[name] - created[name])
            fig.single(single)
            await quiet(fleet)

        # -- one policy changed at a time -------------------------------------------------------
        mark = fig.start(meter, fleet, metrics_port)
        latencies = []
        for i in range(args.changes):
            name = burst[i % len(burst)]
            rules = [*RULES, "disallow-umount"] if (i // len(burst)) % 2 == 0 else RULES
            path = paths.custom_path(api.VARMOR_POLICY, POLICY_NS, name)
            changed = time.monotonic()
            done = await kube.request(
                "PATCH",
                path,
                body={"spec": {"policy": {"enhanceProtect": {"hardeningRules": rules}}}},
                content_type=MERGE_PATCH,
            )
            generation = done["metadata"]["generation"]

            def is_ready(name: str = name, generation: int = generation) -> bool:
                st = ((policies.get(POLICY_NS, name) or {}).get("status")) or {}
                return bool(st.get("observedGeneration") == generation and st.get("ready"))

            await until(is_ready, 120, f"{name} Ready at generation {generation}", 0.02)
            latencies.append(time.monotonic() - changed)
            await quiet(fleet)
        if args.changes:
            fig.changes(mark, fig.start(meter, fleet, metrics_port), fleet, latencies)
        fig.whole(whole, fig.start(meter, fleet, metrics_port))

        # -- calibration: one small write per node, nothing else changing -----------------------
        if args.calibrate:
            await fig.calibrate(meter, fleet, metrics_port, kube)
        if args.fanout_rounds and args.fanout:
            for task in tasks:
                task.cancel()
            leader.send_signal(signal.SIGTERM)
            leader.wait(timeout=30)
            try:
                await fanout(args, kube, kubeconfig, Meter({**pids, "simulator": os.getpid()}), fig)
            except Exception as exc:  # the figures before it stand
                fig.line(f"watch fan-out failed: {exc!r}")
        fig.line(f"leader log: {log}")
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if leader.poll() is None:
            leader.send_signal(signal.SIGTERM)
            leader.wait(timeout=30)
        await fleet.kube.close()
        await api_client.close()
    return fig.result


async def fanout(args: argparse.Namespace, kube: Kube, kubeconfig: str, meter: Meter, fig: Figures) -> None:
    from leader_fanout import measure

    text = policy_text()
    counts = [int(k) for k in args.fanout.split(",") if k]
    fig.line(
        f"watch fan-out: {args.fanout_profiles} ArmorProfiles x 4 writes (create, status, spec, status), "
        f"{counts} raw HTTP/1.1 watches, {args.fanout_rounds} rounds"
    )
    got = await measure(kube, kubeconfig, meter, counts, args.fanout_profiles, args.fanout_rounds, text)
    fig.fanout(got)


def policy_text() -> str:
    """A profile text of the benchmark's policies (what one ArmorProfile carries)."""
    from varmor.pipeline import compile_policy

    obj = policy("p00000", RULES) | {"metadata": {"name": "p00000", "namespace": POLICY_NS, "uid": "u"}}
    return compile_policy(obj, INSTALL_NS).profile.text


async def fanout_only(args: argparse.Namespace, kubeconfig: str, pids: dict[str, int]) -> dict[str, Any]:
    api_client = await new_api_client(kubeconfig)
    try:
        await install_crds(api_client)
        fig = Figures(args)
        await fanout(args, Kube(api_client), kubeconfig, Meter({**pids, "simulator": os.getpid()}), fig)
        return fig.result
    finally:
        await api_client.close()


def run_with_plane(args: argparse.Namespace) -> dict[str, Any]:
    body = fanout_only if args.fanout_only else bench
    runner: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    if args.kubeconfig:
        return runner(body(args, args.kubeconfig, {}))  # type: ignore[no-any-return]
    workdir = Path(tempfile.mkdtemp(prefix="varmor-bench-cp-"))
    plane = ControlPlane(workdir)
    try:
        state = plane.start()
        pids = {name: proc.pid for name, proc in plane.procs.items()}
        return runner(body(args, state.kubeconfig, pids))  # type: ignore[no-any-return]
    finally:
        plane.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", default=os.environ.get("VARMOR_TEST_KUBECONFIG"))
    parser.add_argument("--repo", default=None, help="the checkout whose varmor runs (leader and StatusWriter)")
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--policies", type=int, default=200)
    parser.add_argument("--single", type=int, default=20, help="policies created one at a time after the burst")
    parser.add_argument("--changes", type=int, default=20, help="policies changed one at a time after that")
    parser.add_argument("--format", choices=("new", "old"), default="new", help="the simulated agents' status format")
    parser.add_argument("--pace", type=float, default=2.0, help="the agents' StatusWriter pace (0: no pacing)")
    parser.add_argument("--heartbeat", type=float, default=0.0, help="agent heartbeat seconds (0: off)")
    parser.add_argument("--tick", type=float, default=0.25, help="seconds between marks of the simulated writers")
    parser.add_argument("--max-delay", type=float, default=None, help="what-if: the writers' max delay")
    parser.add_argument("--max-pause", type=float, default=None, help="what-if: the writers' max pacing pause")
    parser.add_argument("--load-delay", type=float, default=0.0, help="max random seconds before a load settles")
    parser.add_argument("--groups", type=int, default=10, help="ledger groups when --load-delay > 0")
    parser.add_argument("--connections", type=int, default=200, help="the simulated agents' connection pool")
    parser.add_argument(
        "--leader-arg", action="append", default=[], help="an extra flag for the leader (e.g. --reconcile-workers=16)"
    )
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds the burst may take")
    parser.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--fanout", default="500,1000", help="watcher counts for the fan-out measurement")
    parser.add_argument("--fanout-profiles", type=int, default=50)
    parser.add_argument(
        "--fanout-rounds",
        type=int,
        default=None,
        help="fan-out rounds (default: 2 with --scale-run or --fanout-only)",
    )
    parser.add_argument("--fanout-only", action="store_true", help="only the watch fan-out measurement")
    parser.add_argument("--scale-run", action="store_true", help="5,000 nodes, 1,000 policies, 20 changes, fan-out")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    parser.add_argument("--ab", default=None, help="a checkout of the earlier tree: before/after in one run")
    parser.add_argument("--ab-scales", default="300x200,1000x200")
    parser.add_argument("--rounds", type=int, default=2, help="A/B rounds")
    parser.add_argument("--project", default=None, help="print the projection from result files (comma-separated)")
    args = parser.parse_args()
    if args.fanout_rounds is None:
        args.fanout_rounds = 2 if args.scale_run or args.fanout_only else 0
    if args.scale_run:
        args.nodes, args.policies, args.single = 5000, 1000, 0
    if args.project:
        from leader_project import project

        result: dict[str, Any] = {}
        for path in args.project.split(","):  # a scale run's figures, then e.g. a fan-out run's
            data = json.loads(Path(path).read_text())
            result |= {k: v for k, v in data.items() if k != "config" or k not in result}
        print("\n".join(project(result)))
        return
    if args.ab:
        from leader_ab import ab

        ab(Path(args.ab).resolve(), Path(__file__).resolve(), args)
        return
    result = run_with_plane(args)
    text = json.dumps(result)
    if args.json:
        Path(args.json).write_text(text)
    if not args.fanout_only and args.format == "new" and args.nodes >= 1000:
        from leader_project import project

        print("\n".join(project(result)))
    print(f"RESULT {text}", flush=True)


if __name__ == "__main__":
    main()
