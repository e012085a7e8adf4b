"""The leader benchmark's figures: each phase's counts and CPU, printed with its goal and
whether it is met, and collected into one result (JSON) for the A/B table and the
projection."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from leader_fleet import Fleet
from procstat import Meter, Snapshot, Spent, spent

from varmor import api
from varmor.clock import rfc3339, utc_now
from varmor.kube import paths
from varmor.kube.kube import MERGE_PATCH, Kube

GOAL_ALL_READY = 60.0  # seconds, 5,000 nodes x 1,000 policies
GOAL_CHANGE_P95 = 3.0  # seconds
GOAL_LEADER_RSS = 300.0  # MB

_METRICS = {
    "writes": r'varmor_api_writes_total\{component="reconcile"\} ([0-9.e+]+)',
    "ap_status_writes": r'varmor_status_writes_total\{resource="armorprofile"\} ([0-9.e+]+)',
    "policy_status_writes": r'varmor_status_writes_total\{resource="policy"\} ([0-9.e+]+)',
    "reconcile_sum": r'varmor_reconcile_duration_seconds_sum\{kind="VarmorPolicy"\} ([0-9.e+]+)',
    "reconcile_count": r'varmor_reconcile_duration_seconds_count\{kind="VarmorPolicy"\} ([0-9.e+]+)',
}


def leader_metrics(port: int) -> dict[str, float]:
    """The leader's write counters and the number of ArmorNodes it counts."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    out = {k: float(m.group(1)) if (m := re.search(p, text)) else 0.0 for k, p in _METRICS.items()}
    out["nodes"] = sum(float(v) for v in re.findall(r"varmor_nodes\{state=\"[A-Za-z]+\"\} ([0-9.e+]+)", text))
    return out


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))] if values else 0.0


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


@dataclass
class Mark:
    snap: Snapshot
    sent: int
    bytes: int
    errors: int
    latencies: int
    events: int
    leader: dict[str, float]
    peaks: dict[str, int]


class Figures:
    def __init__(self, args: argparse.Namespace) -> None:
        self.nodes = args.nodes
        self.path: str | None = args.json
        self.result: dict[str, Any] = {
            "config": {
                "nodes": args.nodes,
                "policies": args.policies,
                "format": args.format,
                "repo": args.repo or "",
                "k8s": os.environ.get("K8S_VERSION", "default"),
                "pace": args.pace,
                "tick": args.tick,
                "connections": args.connections,
                "load_delay": args.load_delay,
                "leader_args": args.leader_arg,
                "max_delay": args.max_delay,
                "max_pause": args.max_pause,
            }
        }

    def line(self, text: str) -> None:
        print(text, flush=True)

    def save(self) -> None:
        """The figures so far (a later phase failing keeps the earlier ones)."""
        if self.path:
            Path(self.path).write_text(json.dumps(self.result))

    def start(self, meter: Meter, fleet: Fleet, port: int) -> Mark:
        """A phase boundary: counters now, and the RSS peaks since the previous boundary."""
        peaks = dict(meter.peaks)
        meter.reset_peaks()
        k = fleet.kube
        return Mark(
            meter.snap(), k.sent, k.bytes, k.errors, len(k.latencies), fleet.events, leader_metrics(port), peaks
        )

    def _common(self, a: Mark, b: Mark, fleet: Fleet) -> dict[str, Any]:
        used = spent(a.snap, b.snap)
        lat = fleet.kube.latencies[a.latencies : b.latencies]
        leader = b.snap.procs.get("leader")
        return {
            "seconds": used.seconds,
            "writes": b.sent - a.sent,
            "bytes": b.bytes - a.bytes,
            "failed": b.errors - a.errors,
            "write_p50_ms": 1000 * pct(lat, 50),
            "write_p95_ms": 1000 * pct(lat, 95),
            "ap_events": b.events - a.events,
            "leader_writes": b.leader.get("writes", 0) - a.leader.get("writes", 0),
            "ap_status_writes": b.leader.get("ap_status_writes", 0) - a.leader.get("ap_status_writes", 0),
            "policy_status_writes": b.leader.get("policy_status_writes", 0) - a.leader.get("policy_status_writes", 0),
            "reconciles": b.leader.get("reconcile_count", 0) - a.leader.get("reconcile_count", 0),
            "reconcile_seconds": b.leader.get("reconcile_sum", 0) - a.leader.get("reconcile_sum", 0),
            "cpu": used.cpu,
            "children": used.children,
            "busy": used.busy,
            "capacity": used.capacity,
            "others": used.others,
            "apiserver_cpu": used.apiserver,
            "leader_rss_peak_mb": b.peaks.get("leader", 0) * 1024 / 1e6,
            "leader_hwm_mb": (leader.hwm_kb if leader else 0) * 1024 / 1e6,
            "apiserver_rss_peak_mb": b.peaks.get("kube-apiserver", 0) * 1024 / 1e6,
            "_spent": used,
        }

    def _cpu_lines(self, prefix: str, got: dict[str, Any]) -> None:
        used: Spent = got.pop("_spent")
        self.line(f"{prefix}{used.line()}")
        self.line(f"{prefix}shares of the machine: {used.shares()}")
        self.line(
            f"{prefix}API server (kube-apiserver + etcd) {got['apiserver_cpu']:.1f} CPU s; leader "
            f"{got['cpu'].get('leader', 0):.1f} s + parser children {got['children'].get('leader', 0):.1f} s"
        )
        rss = got["leader_rss_peak_mb"]
        self.line(
            f"{prefix}leader RSS peak {rss:.0f} MB "
            f"(goal <= {GOAL_LEADER_RSS:.0f} MB: {verdict(rss <= GOAL_LEADER_RSS)}); "
            f"kube-apiserver RSS peak {got['apiserver_rss_peak_mb']:.0f} MB"
        )

    def _writes_line(self, prefix: str, got: dict[str, Any], per: int) -> None:
        n = self.nodes
        each = "per node" if per == 1 else "per node per change"
        self.line(
            f"{prefix}ArmorNode writes {got['writes']} ({got['writes'] / (n * per):.2f} {each}), "
            f"request bodies {got['bytes'] / 1e6:.2f} MB ({got['bytes'] / (n * per):.0f} bytes {each}); "
            f"write latency p50 {got['write_p50_ms']:.0f} ms, "
            f"p95 {got['write_p95_ms']:.0f} ms; failed writes (timeouts, errors) {got['failed']}"
        )
        self.line(
            f"{prefix}leader writes {got['leader_writes']:.0f} (ArmorProfile status {got['ap_status_writes']:.0f}, "
            f"policy status {got['policy_status_writes']:.0f}); ArmorProfile events on the agents' watch "
            f"{got['ap_events']} ({got['ap_events'] / max(got['seconds'], 1e-9):.1f}/s); leader reconciles "
            f"{got['reconciles']:.0f}, {got['reconcile_seconds'] / max(got['reconciles'], 1):.2f} s each on average "
            "(mostly waiting for the API server)"
        )

    def burst(self, a: Mark, b: Mark, fleet: Fleet, all_ready: float, lat: list[float]) -> None:
        got = self._common(a, b, fleet)
        got |= {"all_ready_s": all_ready, "p50_s": statistics.median(lat), "p95_s": pct(lat, 95), "max_s": max(lat)}
        n, p = self.nodes, len(lat)
        self.line(f"burst: {p} policies created at once on {n} nodes")
        self.line(
            f"  all {p} Ready after {all_ready:.1f}s (goal <= {GOAL_ALL_READY:.0f} s at 5,000 x 1,000: "
            f"{verdict(all_ready <= GOAL_ALL_READY)}); per policy create->Ready p50 {got['p50_s']:.1f} s, "
            f"p95 {got['p95_s']:.1f} s, max {got['max_s']:.1f} s"
        )
        self._writes_line("  ", got, 1)
        self._cpu_lines("  ", got)
        self.result["burst"] = got
        self.save()

    def idle(self, a: Mark, b: Mark, fleet: Fleet) -> None:
        got = self._common(a, b, fleet)
        leader = 100 * got["cpu"].get("leader", 0) / got["seconds"]
        self.line(
            f"idle {got['seconds']:.0f} s: leader {leader:.1f} % of a core, "
            f"API server {100 * got['apiserver_cpu'] / got['seconds']:.1f} %, ArmorNode writes {got['writes']}"
        )
        got.pop("_spent")
        self.result["idle"] = got
        self.save()

    def single(self, lat: list[float]) -> None:
        self.line(
            f"single create->Ready with the others in place: p50 {statistics.median(lat):.2f} s, "
            f"p95 {pct(lat, 95):.2f} s (n={len(lat)})"
        )
        self.result["single"] = {"p50_s": statistics.median(lat), "p95_s": pct(lat, 95), "n": len(lat)}
        self.save()

    def changes(self, a: Mark, b: Mark, fleet: Fleet, lat: list[float]) -> None:
        got = self._common(a, b, fleet)
        c = len(lat)
        got |= {
            "n": c,
            "p50_s": statistics.median(lat),
            "p95_s": pct(lat, 95),
            "max_s": max(lat),
            "writes_per_node_per_change": got["writes"] / (self.nodes * c),
            "bytes_per_node_per_change": got["bytes"] / (self.nodes * c),
            "bytes_per_write": got["bytes"] / max(1, got["writes"]),
            "ap_events_per_change": got["ap_events"] / c,
            "latencies": lat,
        }
        self.line(f"changes: one policy changed at a time, {c} times, with the others in place")
        self.line(
            f"  change->Ready p50 {got['p50_s']:.2f} s, p95 {got['p95_s']:.2f} s, max {got['max_s']:.2f} s "
            f"(goal p95 <= {GOAL_CHANGE_P95:.0f} s: {verdict(got['p95_s'] <= GOAL_CHANGE_P95)})"
        )
        self._writes_line("  ", got, c)
        self.line(f"  bytes written to the API server per node per change: {got['bytes_per_node_per_change']:.0f}")
        self._cpu_lines("  ", got)
        self.result["changes"] = got
        self.save()

    def whole(self, a: Mark, b: Mark) -> None:
        used = spent(a.snap, b.snap)
        self.line(
            f"whole run (burst to the last change, {used.seconds:.0f} s): API server (kube-apiserver + etcd) "
            f"{used.apiserver:.1f} CPU s; {used.line()}"
        )
        self.result["whole"] = {"seconds": used.seconds, "apiserver_cpu": used.apiserver, "cpu": used.cpu}
        self.save()

    async def calibrate(self, meter: Meter, fleet: Fleet, port: int, kube: Kube) -> None:
        """One small status write per ArmorNode (lastUpdateTime only: nothing for the leader
        to recount), the leader running: the API server's CPU per write, the leader's per
        ArmorNode event, and the stored sizes etcd rewrites."""
        a = self.start(meter, fleet, port)
        sem = asyncio.Semaphore(64)
        now = rfc3339(utc_now())

        async def one(name: str) -> None:
            async with sem:
                path = paths.custom_path(api.ARMOR_NODE, None, name) + "/status"
                await fleet.kube.request(
                    "PATCH", path, body={"status": {"lastUpdateTime": now}}, content_type=MERGE_PATCH
                )

        started = time.monotonic()
        await asyncio.gather(*(one(n) for n in fleet.names))
        seconds = time.monotonic() - started
        await asyncio.sleep(3)  # the leader reads the last events
        b = self.start(meter, fleet, port)
        used = spent(a.snap, b.snap)
        w = len(fleet.names)
        node = await kube.request("GET", paths.custom_path(api.ARMOR_NODE, None, fleet.names[0]))
        aps = await kube.request("GET", paths.custom_path(api.ARMOR_PROFILE), query={"limit": 1})
        ap_bytes = len(orjson.dumps(aps["items"][0])) if aps.get("items") else 0
        got = {
            "writes": w,
            "seconds": seconds,
            "apiserver_ms_per_write": 1000 * used.cpu.get("kube-apiserver", 0) / w,
            "etcd_ms_per_write": 1000 * used.cpu.get("etcd", 0) / w,
            "leader_us_per_event": 1e6 * used.cpu.get("leader", 0) / w,
            "simulator_us_per_write": 1e6 * used.cpu.get("simulator", 0) / w,
            "armornode_bytes": len(orjson.dumps(node)),
            "armornode_status_bytes": len(orjson.dumps(node.get("status") or {})),
            "armorprofile_bytes": ap_bytes,
        }
        self.line(
            f"calibration: {w} ArmorNode status writes (lastUpdateTime only) in {seconds:.1f} s, the leader running: "
            f"kube-apiserver {got['apiserver_ms_per_write']:.2f} ms + etcd {got['etcd_ms_per_write']:.2f} ms "
            "CPU per write; "
            f"leader {got['leader_us_per_event']:.0f} us CPU per ArmorNode event; simulator "
            f"{got['simulator_us_per_write']:.0f} us per write; stored ArmorNode {got['armornode_bytes']} bytes "
            f"(status {got['armornode_status_bytes']}), ArmorProfile {ap_bytes} bytes"
        )
        self.result["calibration"] = got
        self.save()

    def fanout(self, got: dict[str, Any]) -> None:
        for k, row in got["per_count"].items():
            us = row["cpu_us_per_event_per_watcher"]
            kb = row["rss_kb_per_watcher"]
            self.line(
                f"  {k} watchers: kube-apiserver {statistics.mean(us):.1f} us CPU per event per watcher "
                f"(runs {', '.join(f'{v:.1f}' for v in us)}), heap+stacks {statistics.mean(kb):.0f} kB per watcher "
                f"(runs {', '.join(f'{v:.0f}' for v in kb)}), "
                f"of which stacks {statistics.mean(row['stack_kb_per_watcher']):.0f} kB, "
                f"{statistics.mean(row['goroutines_per_watcher']):.1f} goroutines per watcher, "
                f"{row['bytes_per_event']:.0f} bytes per event"
            )
        per = [v for row in got["per_count"].values() for v in row["cpu_us_per_event_per_watcher"]]
        largest = got["per_count"][max(got["per_count"])]  # memory: the most watches, the least GC noise
        us, mem = statistics.median(per), statistics.median(largest["rss_kb_per_watcher"])
        got["cpu_us_per_event_per_watcher"] = us
        got["rss_kb_per_watcher"] = mem
        self.line(
            f"  at 5,000 watchers: {us * 5000 / 1e6:.3f} CPU s per ArmorProfile event, "
            f"{mem * 5000 / 1024:.0f} MiB of API server memory (heap + stacks) for the watches"
        )
        burst = self.result.get("burst")
        if burst:
            rate = burst["ap_events"] / burst["seconds"]
            self.line(
                f"  at the burst's ArmorProfile event rate ({rate:.1f}/s: creates + the leader's status writes): "
                f"{us * 5000 * rate / 1e6:.2f} cores of API server for the fan-out to 5,000 agents"
            )
        self.result["fanout"] = got
        self.save()
