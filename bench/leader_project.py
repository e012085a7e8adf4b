"""The projection from a scale run's measured per-write costs to 10,000 and 50,000 nodes.

Every figure is a product of measured costs and counts and of the agent's StatusWriter
constants (max delay, max pause); the assumptions are printed with the table, so each can
be checked against a later measurement."""

from __future__ import annotations

import statistics
from typing import Any

SIZES = (5_000, 10_000, 50_000)
MAX_DELAY = 2.0  # the agent's StatusWriter: a changed status is written within this
MAX_PAUSE = 10.0  # ... and pacing holds a write at most this long
BURST = 60.0  # seconds: the goal for 1,000 policies


def _fmt(value: float, unit: str) -> str:
    if unit == "B":
        for div, name in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
            if value >= div:
                return f"{value / div:.1f} {name}"
        return f"{value:.0f} B"
    return f"{value:,.2f}{unit}" if value < 10 else f"{value:,.0f}{unit}"


def inputs(result: dict[str, Any]) -> dict[str, float]:
    """The measured quantities the projection multiplies."""
    n0 = result["config"]["nodes"]
    burst, change, cal = result["burst"], result["changes"], result["calibration"]
    fan = result.get("fanout") or {}
    return {
        "n0": n0,
        "policies": result["config"]["policies"],
        "burst_s": burst["all_ready_s"],
        "writes_per_node_burst": burst["writes"] / n0,
        "ap_events_burst": burst["ap_events"],
        "writes_per_node_change": change["writes_per_node_per_change"],
        "bytes_per_node_change": change["bytes_per_node_per_change"],
        "ap_events_change": change["ap_events_per_change"],
        "cpu_per_write": (cal["apiserver_ms_per_write"] + cal["etcd_ms_per_write"]) / 1000,
        "leader_per_event": cal["leader_us_per_event"] / 1e6,
        "armornode_bytes": cal["armornode_bytes"],
        "armorprofile_bytes": cal["armorprofile_bytes"],
        **_fanout(fan),
    }


def _fanout(fan: dict[str, Any]) -> dict[str, float]:
    """Per event per watcher: the median of every round; memory per watch: the median of
    the rounds with the most watches (the least GC noise)."""
    rows = fan.get("per_count") or {}
    if not rows:
        return {"fanout_per_event_watcher": 0.0, "fanout_bytes_per_event": 0.0, "kb_per_watcher": 0.0}
    cpu = [v for r in rows.values() for v in r["cpu_us_per_event_per_watcher"]]
    largest = rows[max(rows, key=int)]
    return {
        "fanout_per_event_watcher": statistics.median(cpu) / 1e6,
        "fanout_bytes_per_event": statistics.mean(r["bytes_per_event"] for r in rows.values()),
        "kb_per_watcher": statistics.median(largest["rss_kb_per_watcher"]),
    }


def project(result: dict[str, Any]) -> list[str]:
    if "calibration" not in result or "changes" not in result or "burst" not in result:
        return ["projection: needs a run with the burst, the changes and the calibration"]
    m = inputs(result)
    rows: list[tuple[str, list[str]]] = []

    def add(label: str, unit: str, f: Any) -> None:
        rows.append((label, [_fmt(f(n), unit) for n in SIZES]))

    cw, per_policy = m["cpu_per_write"], m["ap_events_burst"] / m["policies"]
    paced = MAX_DELAY + MAX_PAUSE
    add("burst: ArmorNode writes/s the agents ask for (one per node per 2 s max delay)", "/s", lambda n: n / MAX_DELAY)
    add("burst: API server cores for that", " cores", lambda n: n / MAX_DELAY * cw)
    add("burst: writes/s at pacing's floor (one per node per 2 s + 10 s max pause)", "/s", lambda n: n / paced)
    add("burst: API server cores at that floor", " cores", lambda n: n / paced * cw)
    add("burst: writes in a 60 s burst at that floor", "", lambda n: n * BURST / paced)
    add("burst: etcd bytes written for ArmorNodes in it", "B", lambda n: n * BURST / paced * m["armornode_bytes"])
    add("burst: leader cores for the node events", " cores", lambda n: n / paced * m["leader_per_event"])
    if m["fanout_per_event_watcher"]:
        fan = m["fanout_per_event_watcher"]
        add(
            "burst: watch fan-out, one ArmorProfile watch per agent (API server CPU s per burst)",
            " s",
            lambda n: 1000 * per_policy * n * fan,
        )
        add("burst: same, as cores over a 60 s burst", " cores", lambda n: 1000 * per_policy * n * fan / BURST)
        sent = m["fanout_bytes_per_event"]
        add("burst: fan-out bytes sent to the agents", "B", lambda n: 1000 * per_policy * n * sent)
        add("API server memory for the agents' watches (heap + stacks)", "B", lambda n: n * m["kb_per_watcher"] * 1024)
    wc = m["writes_per_node_change"]
    add("one change: ArmorNode writes", "", lambda n: n * wc)
    add("one change: request bytes to the API server", "B", lambda n: n * m["bytes_per_node_change"])
    add("one change: etcd bytes written (ArmorNodes)", "B", lambda n: n * wc * m["armornode_bytes"])
    add("one change: API server CPU s for the writes", " s", lambda n: n * wc * cw)
    add("one change: API server cores to be Ready in 3 s", " cores", lambda n: n * wc * cw / 3)
    if m["fanout_per_event_watcher"]:
        add(
            "one change: API server CPU s for the watch fan-out",
            " s",
            lambda n: m["ap_events_change"] * n * m["fanout_per_event_watcher"],
        )
    add("one change: leader CPU s for the node events", " s", lambda n: n * wc * m["leader_per_event"])
    out = ["", f"projection from the {m['n0']:.0f}-node run ({m['policies']:.0f} policies):", ""]
    out.append("| figure | " + " | ".join(f"{n:,} nodes" for n in SIZES) + " |")
    out.append("|---|" + "---|" * len(SIZES))
    out += [f"| {label} | " + " | ".join(values) + " |" for label, values in rows]
    out += [
        "",
        "assumptions:",
        f"- API server (kube-apiserver + etcd) CPU per ArmorNode write: {1000 * cw:.2f} ms, as calibrated at "
        f"{m['n0']:.0f} nodes (one object per node: the cost per write does not grow with the node count); etcd "
        f"rewrites the whole stored ArmorNode ({m['armornode_bytes']:.0f} bytes, managedFields included) per write;",
        f"- while profiles keep arriving an agent writes once per max delay ({MAX_DELAY:.0f} s); pacing holds each "
        f"write up to twice the previous one's duration, at most {MAX_PAUSE:.0f} s, so the write rate falls below "
        f"nodes / {paced:.0f} s only by the writes' own latency (measured at {m['n0']:.0f} nodes: "
        f"{m['writes_per_node_burst']:.1f} writes per node in a {m['burst_s']:.0f} s burst, one per "
        f"{m['burst_s'] / m['writes_per_node_burst']:.1f} s);",
        f"- one change costs each node {wc:.2f} writes of {m['bytes_per_node_change']:.0f} request bytes and "
        f"{m['ap_events_change']:.1f} ArmorProfile events (spec, the leader's status writes), as measured;",
        f"- the leader spends {1e6 * m['leader_per_event']:.0f} us per ArmorNode event (calibrated with nothing to "
        "recount; recounts are coalesced per status delay and cost per changed profile, not per node);",
    ]
    if m["fanout_per_event_watcher"]:
        out.append(
            f"- with one ArmorProfile watch per agent every ArmorProfile event costs the API server "
            f"{1e6 * m['fanout_per_event_watcher']:.1f} us per watcher and each watch {m['kb_per_watcher']:.0f} kB "
            f"(raw HTTP/1.1 watches; agents on the kubernetes client differ in framing, not in the per-event "
            f"encode-and-send); {per_policy:.1f} ArmorProfile events per new policy, as measured in the burst "
            "(create, the leader's status writes, progress rewritten at most every 5 s);"
        )
    out.append("- cores are those of one kube-apiserver; API server replicas split the writes and the watches.")
    return out
