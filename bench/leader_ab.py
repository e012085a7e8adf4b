"""Before/after in one run: the earlier status format and leader (a checkout of that tree)
against this one, each scale in turns within every round (the order rotating), so both see
the same machine load. Each run is `bench_leader.py` in its own process with its own
control plane; the earlier side runs the same benchmark file against the other tree's
varmor (`--repo`: its StatusWriter, its leader, its CRDs) with the earlier status format.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any


def run(script: Path, side: str, base: Path, nodes: int, policies: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(script), "--nodes", str(nodes), "--policies", str(policies)]
    cmd += ["--single", "0", "--changes", str(args.changes), "--timeout", str(args.timeout)]
    if side == "before":
        cmd += ["--repo", str(base), "--format", "old"]
    tag = f"[{side} {nodes}x{policies}]"
    print(f"{tag} {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    result: dict[str, Any] | None = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
        else:
            print(f"{tag} {line}", end="", flush=True)
    proc.wait()
    if proc.returncode != 0 or result is None:
        return {"failed": proc.returncode}
    return result


def row(side: str, scale: str, runs: list[dict[str, Any]]) -> str:
    ok = [r for r in runs if "failed" not in r]
    if not ok:
        return f"| {side} | {scale} | did not finish |" + " |" * 9

    def fig(get: Any, fmt: str) -> str:
        values = [get(r) for r in ok]
        med = statistics.median(values)
        spread = "" if len(values) < 2 else f" ({fmt.format(min(values))}-{fmt.format(max(values))})"
        return fmt.format(med) + spread

    return (
        f"| {side} | {scale} "
        f"| {fig(lambda r: r['burst']['all_ready_s'], '{:.1f}')} s "
        f"| {fig(lambda r: r['burst']['apiserver_cpu'], '{:.1f}')} s "
        f"| {fig(lambda r: r['burst']['bytes'] / 1e6, '{:.1f}')} MB "
        f"| {fig(lambda r: r['burst']['writes'] / r['config']['nodes'], '{:.1f}')} "
        f"| {fig(lambda r: r['changes']['p95_s'], '{:.2f}')} s "
        f"| {fig(lambda r: r['changes']['bytes_per_node_per_change'], '{:.0f}')} "
        f"| {fig(lambda r: r['changes']['apiserver_cpu'] / r['changes']['n'], '{:.2f}')} s "
        f"| {fig(lambda r: r['whole']['apiserver_cpu'], '{:.1f}')} s "
        f"| {fig(lambda r: r['burst']['cpu'].get('leader', 0), '{:.1f}')} s "
        f"| {fig(lambda r: max(r['burst']['leader_rss_peak_mb'], r['changes']['leader_rss_peak_mb']), '{:.0f}')} MB |"
    )


def ab(base: Path, script: Path, args: argparse.Namespace) -> None:
    if not (base / "varmor").is_dir():
        raise SystemExit(f"{base} is not a varmor checkout (git worktree add {base} <commit>)")
    scales = [tuple(int(v) for v in s.split("x")) for s in args.ab_scales.split(",") if s]
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for i in range(args.rounds):
        order = ["before", "after"] if i % 2 == 0 else ["after", "before"]
        for nodes, policies in scales:
            for side in order:
                got = run(script, side, base, nodes, policies, args)
                results.setdefault((side, f"{nodes} x {policies}"), []).append(got)
    print(
        "\n| side | nodes x policies | all Ready | API server CPU, burst | ArmorNode bytes, burst "
        "| ArmorNode writes per node, burst | change -> Ready p95 | bytes per node per change "
        "| API server CPU per change | API server CPU, whole run | leader CPU, burst | leader RSS peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (side, scale), runs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0] != "before")):
        print(row(side, scale, runs))
    print("(median of the rounds; the range in brackets)")
    print(f"RESULT_AB {json.dumps({f'{s}|{k}': v for (s, k), v in results.items()})}", flush=True)
