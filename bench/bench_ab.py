"""A/B in one run: this checkout against other commits, on the two figures a change to
the structure must not move (the webhook's throughput relative to a bare aiohttp handler,
and the leader's all-Ready time for a 100-node burst).

    git worktree add /tmp/base COMMIT
    (cd /tmp/base && python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]')
    .venv/bin/python bench/bench_ab.py --side base=/tmp/base [--side other=DIR ...] [--rounds 3]

Each side runs its own copy of `bench/bench_webhook.py --part server` and
`bench/bench_leader.py` with its own venv; the sides take turns within every round (the
order rotates each round), so all see the same machine load. Prints each run, the medians
and each side's median relative to the first side.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
READY = re.compile(r"all (\d+) Ready after ([0-9.]+)s")


def run(side: Path, script: str, *args: str) -> str:
    env = {**os.environ, "PATH": f"{side / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(side / ".venv" / "bin" / "python"), str(side / "bench" / script), *args]
    done = subprocess.run(cmd, cwd=side, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def webhook_ratio(side: Path, seconds: float) -> tuple[float, float]:
    """varmor /mutate throughput over the faster bare aiohttp ceiling (what `varmor run`
    serves), and varmor's CPU microseconds per request on that loop (steadier than the
    ratio: the bare ceiling swings with where the scheduler puts the load generator)."""
    out = run(side, "bench_webhook.py", "--part", "server", "--rounds", "1", "--seconds", str(seconds))
    server = json.loads(out.strip().splitlines()[-1])["server"]
    return float(server["product_vs_best_bare"]), float(server["uvloop"]["varmor"]["max"]["cpu_us_per_request"])


def leader_all_ready(side: Path, nodes: int, policies: int) -> float:
    out = run(side, "bench_leader.py", "--nodes", str(nodes), "--policies", str(policies), "--single", "0")
    found = READY.search(out)
    if found is None:
        raise SystemExit(f"no all-Ready figure in:\n{out}")
    return float(found.group(2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--side", action="append", default=[], required=True, help="NAME=DIR: a checkout to compare (repeatable)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="per webhook load-generator run")
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--policies", type=int, default=200)
    parser.add_argument("--only", choices=("webhook", "leader"), default=None, help="measure one figure only")
    args = parser.parse_args()
    sides = {name: Path(path).resolve() for name, path in (item.split("=", 1) for item in args.side)}
    sides["current"] = ROOT
    for name, side in sides.items():
        if not (side / ".venv" / "bin" / "python").exists():
            raise SystemExit(f"{name}: {side}/.venv is missing (see this script's docstring)")
    webhook: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    leader: dict[str, list[float]] = {name: [] for name in sides}
    for i in range(args.rounds):
        names = list(sides)
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order if args.only != "leader" else ():
            ratio, us = webhook_ratio(sides[name], args.seconds)
            webhook[name].append(ratio)
            cpu[name].append(us)
            print(f"round {i + 1} {name:8s} webhook/bare {ratio:.1%}, {us:.0f} us CPU/request", flush=True)
        for name in order if args.only != "webhook" else ():
            leader[name].append(leader_all_ready(sides[name], args.nodes, args.policies))
            print(f"round {i + 1} {name:8s} all {args.policies} Ready after {leader[name][-1]:.2f}s", flush=True)
    result: dict[str, dict[str, object]] = {}
    first = next(iter(sides))
    figures = (("webhook_vs_bare", webhook), ("webhook_cpu_us_per_request", cpu), ("leader_all_ready_s", leader))
    for figure, runs in ((f, r) for f, r in figures if all(r.values())):
        medians = {name: statistics.median(values) for name, values in runs.items()}
        result[figure] = {"median": medians, "runs": runs}
        shown = ", ".join(f"{name} {m:.3f} ({m / medians[first]:.3f}x of {first})" for name, m in medians.items())
        print(f"{figure} medians: {shown}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
