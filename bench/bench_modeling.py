"""Benchmark: behaviour modelling on the agent, model size, and model -> profile compile.

A synthetic busy workload in the kernel's own record format (audit.log lines): a service
whose worker processes come and go (a new pid per request, so /proc/<pid>/ paths), read
their config and libraries, write request files with random temporary names, open
sockets, and now and then run a helper program. Measured in one run:

- **agent**: the agent's own path for every line (parse, loss measurement, behaviour
  collection: `ViolationReporter.behavior` with a `BehaviorCollector`), as records per
  second of CPU time; against the baseline of the same lines through the violation path
  alone (parse, no collection), and the process's peak RSS growth;
- **model size** against records collected: rules, JSON bytes, stored bytes (compressed
  above 512 KiB);
- **compile**: the DefenseInDepth profile built from the model and compiled by
  apparmor_parser (`compile_check`), against the demo EnhanceProtect policy's compile.

Usage: .venv/bin/python bench/bench_modeling.py [--records N] [--compile-runs N]
"""

from __future__ import annotations

import argparse
import platform
import random
import resource
import statistics
import time
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import yaml

from varmor.behavior.profile import model_rules
from varmor.nodeexec.collector import BehaviorCollector
from varmor.nodeexec.state import Desired
from varmor.nodeexec.violations import ViolationReporter
from varmor.parser import compile_check
from varmor.pipeline import compile_policy
from varmor.policy import parse_policy
from varmor.profile import build_profile
from varmor.profile.deny_default import BehaviorInputs

PROFILE = "varmor-demo-web"
ROOT = Path(__file__).resolve().parents[1]


def workload(n: int, seed: int = 7) -> list[str]:
    """n ALLOWED records (with a SYSCALL record every 8th event, as auditd writes them)."""
    rng = random.Random(seed)
    lines: list[str] = []
    serial = 1000
    libs = [f"/usr/lib/x86_64-linux-gnu/lib{name}.so.{v}" for name in ("ssl", "crypto", "z", "pcre2-8") for v in (1, 3)]
    for i in range(n):
        serial += 1
        pid = 2000 + rng.randrange(30000)
        kind = i % 10
        if kind < 3:
            body = f'operation="open" name="/proc/{pid}/status" requested_mask="r" denied_mask="r" fsuid=0 ouid=0'
        elif kind < 5:
            body = (
                f'operation="file_mmap" name="{rng.choice(libs)}" requested_mask="rm" denied_mask="rm" fsuid=0 ouid=0'
            )
        elif kind < 7:
            name = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789_") for _ in range(8))
            body = f'operation="open" name="/tmp/tmp{name}" requested_mask="wc" denied_mask="wc" fsuid=1000 ouid=1000'
        elif kind == 7:
            body = 'operation="create" family="inet" sock_type="stream" protocol=6 requested_mask="create"'
        elif kind == 8:
            body = f'operation="open" name="/srv/app/static/{rng.randrange(200)}.css" requested_mask="r" fsuid=0 ouid=0'
        else:
            body = 'operation="exec" name="/usr/bin/helper" requested_mask="x" denied_mask="x" fsuid=0 ouid=0'
        lines.append(
            f'type=AVC msg=audit(1700000000.{i % 1000:03d}:{serial}): apparmor="ALLOWED" {body} '
            f'profile="{PROFILE}" pid={pid} comm="worker"'
        )
        if i % 8 == 0:
            lines.append(
                f"type=SYSCALL msg=audit(1700000000.{i % 1000:03d}:{serial}): arch=c000003e syscall=257 success=yes "
                f"exit=3 a0=0 a1=0 a2=0 a3=0 items=1 ppid=1 pid={pid} auid=4294967295 uid=0 gid=0 euid=0 suid=0 "
                "fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=4294967295 "
                'comm="worker" exe="/usr/bin/worker" key=(null)'
            )
    return lines


def owner(name: str) -> Desired | None:
    return Desired(name, "demo", "", "", "complain", uid="u", modeling=True) if name == PROFILE else None


def reporter(collect: bool) -> ViolationReporter:
    collector = BehaviorCollector(None, "bench-node", owner) if collect else None
    return ViolationReporter(None, "bench-node", Path("/dev/null"), owner, json_out="", collector=collector)


def run_agent(lines: list[str], collect: bool, batch: int = 512) -> tuple[float, ViolationReporter]:
    rep = reporter(collect)
    start = time.process_time()
    for i in range(0, len(lines), batch):
        chunk = lines[i : i + batch]
        records = [r for r in map(rep.parse, chunk) if r is not None]
        rep.behavior(chunk, records, [None] * len(records))
    return time.process_time() - start, rep


def model_size(rep: ViolationReporter) -> dict[str, Any]:
    assert rep.collector is not None
    (share,) = rep.collector._shares.values()
    body = rep.collector._body(share, None)  # what the agent writes: collapsed, encoded
    storage, data = body["storageType"], body["data"]
    return {
        "rules": len(share.behavior),
        "json": len(orjson.dumps(data.get("dynamicResult") or {})),
        "stored": len(orjson.dumps(data)),
        "storage": storage,
        "excluded": share.behavior.excluded,
        "behavior": share.behavior,
    }


def compile_seconds(text: str, name: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = compile_check({name: text})[name]
        times.append(time.perf_counter() - start)
        assert result.ok, result.message
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--compile-runs", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}")

    lines = workload(args.records)
    base_cpu, _ = run_agent(lines, collect=False)
    cpu, _ = run_agent(lines, collect=True)
    tracemalloc.start()
    _, kept = run_agent(lines, collect=True)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del kept
    print(f"\nagent, {args.records} records ({len(lines)} lines with SYSCALL records):")
    print(f"  violation path only (baseline): {args.records / base_cpu:,.0f} records/s of CPU")
    print(f"  modelling (parse + loss + collect): {args.records / cpu:,.0f} records/s of CPU")
    print(f"  ratio modelling/baseline time: {cpu / base_cpu:.2f}")
    print(f"  at 5,000 records/s the agent needs {500_000 * cpu / args.records:.0f}% of a core for them")
    print(
        f"  memory the collector holds afterwards: {held / 1024:.0f} KiB (peak while collecting {peak / 1024:.0f} KiB)"
    )
    print(f"  process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (with the input)")

    print("\nmodel size against records collected:")
    print(f"  {'records':>9} {'rules':>6} {'JSON bytes':>11} {'stored bytes':>13} storage")
    size: dict[str, Any] = {}
    for n in (1_000, 10_000, 100_000, args.records):
        if n > args.records:
            continue
        _, partial = run_agent(lines[: n + n // 8], collect=True)
        size = model_size(partial)
        print(f"  {n:>9} {size['rules']:>6} {size['json']:>11} {size['stored']:>13} {size['storage']}")

    doc = {
        "apiVersion": "crd.varmor.org/v1beta1",
        "kind": "VarmorPolicy",
        "metadata": {"name": "web", "namespace": "demo"},
        "spec": {
            "target": {"kind": "Deployment", "name": "web"},
            "policy": {
                "enforcer": "AppArmor",
                "mode": "DefenseInDepth",
                "defenseInDepth": {"appArmor": {"profileType": "BehaviorModel"}},
            },
        },
    }
    rules = tuple(model_rules(size["behavior"]))
    model_profile = build_profile(parse_policy(doc), PROFILE, inputs=BehaviorInputs(model_rules=rules))
    demo = yaml.safe_load((ROOT / "examples" / "demo-policy.yaml").read_text())
    demo_profile = compile_policy(demo, "varmor").profile
    model_t = compile_seconds(model_profile.text, PROFILE, args.compile_runs)
    demo_t = compile_seconds(demo_profile.text, demo_profile.name, args.compile_runs)
    size_text = f"{len(rules)} rule lines, {len(model_profile.text)} bytes"
    print(f"\nmodel -> enforcing profile ({size_text}), median of {args.compile_runs}:")
    print(f"  compile_check of the model's profile: {model_t * 1000:.0f} ms")
    print(f"  compile_check of the demo EnhanceProtect profile (baseline): {demo_t * 1000:.0f} ms")
    print(f"  ratio: {model_t / demo_t:.2f}")


if __name__ == "__main__":
    main()
