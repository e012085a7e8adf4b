"""What per-agent ArmorProfile watches cost the API server.

The leader benchmark's simulated agents share one watch; real agents hold one each, so
every ArmorProfile event is sent to every node. This opens K real watches (raw streaming
HTTP/1.1, one TLS connection each, the bytes read and discarded), writes M ArmorProfiles
the way the leader does (create; status; a new spec; status again: four events each), and
waits until every watcher received every event. The API server's CPU with K watchers
minus its CPU for the same writes with none, divided by K x events, is its cost per event
per watcher; its RSS with the watches open minus before, divided by K, its memory per
watcher. Rounds alternate the watcher counts so both see the same machine load.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
from leader_fleet import Endpoint, endpoint
from procstat import Meter, spent

from varmor import api
from varmor.kube import paths
from varmor.kube.kube import MERGE_PATCH, Kube

EVENTS_PER_PROFILE = 4


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Watchers:
    """K watches of every ArmorProfile, counting the events each received."""

    def __init__(self, ep: Endpoint, count: int, resource_version: str) -> None:
        self.ep = ep
        self.count = count
        self.rv = resource_version
        self.events = [0] * count
        self.bytes = 0
        self.open = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ssl=self.ep.ssl)
        self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None))
        self._tasks = [asyncio.create_task(self._watch(i)) for i in range(self.count)]
        deadline = time.monotonic() + 120
        while self.open < self.count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {self.open} of {self.count} watches open after 120 s")
            await asyncio.sleep(0.1)

    async def _watch(self, i: int) -> None:
        assert self._session is not None
        url = f"{self.ep.server}{paths.custom_path(api.ARMOR_PROFILE)}"
        query = {"watch": "true", "resourceVersion": self.rv, "timeoutSeconds": "3600"}
        async with self._session.get(url, params=query) as response:
            response.raise_for_status()
            self.open += 1
            async for chunk in response.content.iter_any():
                self.bytes += len(chunk)
                self.events[i] += chunk.count(b"\n")

    def least(self) -> int:
        return min(self.events) if self.events else 0

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()


def _profile(name: str, namespace: str, text: str) -> dict[str, Any]:
    """An ArmorProfile as the leader writes it (no owner: the garbage collector would
    delete one whose owner does not exist)."""
    from varmor.reconcile.profiles import desired_armor_profile

    target = {"kind": "Deployment", "selector": {"matchLabels": {"app": name}}}
    policy = {"metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())}, "spec": {"target": target}}
    body = desired_armor_profile(policy, name, namespace, text, "enforce", sha256_hex(text))
    body["metadata"].pop("ownerReferences", None)
    return body


async def write_profiles(kube: Kube, namespace: str, prefix: str, count: int, text: str) -> None:
    """Create, status, new spec, status: the leader's writes for one new and one changed policy."""
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> None:
        name = f"varmor-{prefix}-{i:04d}"
        path = paths.custom_path(api.ARMOR_PROFILE, namespace, name)
        async with sem:
            created = await kube.request(
                "POST", paths.custom_path(api.ARMOR_PROFILE, namespace), body=_profile(name, namespace, text)
            )
            status = {"desiredNumberLoaded": 5000, "currentNumberLoaded": 0, "conditions": []}
            rv = created["metadata"]["resourceVersion"]
            body = {"metadata": {"resourceVersion": rv}, "status": status}
            done = await kube.request("PATCH", path + "/status", body=body, content_type=MERGE_PATCH)
            new_text = text + f"\n# v2 {i}\n"
            spec = {"spec": {"profile": {"appArmor": new_text, "sha256": sha256_hex(new_text)}}}
            done = await kube.request("PATCH", path, body=spec, content_type=MERGE_PATCH)
            status = {**status, "currentNumberLoaded": 5000, "observedGeneration": done["metadata"]["generation"]}
            body = {"metadata": {"resourceVersion": done["metadata"]["resourceVersion"]}, "status": status}
            await kube.request("PATCH", path + "/status", body=body, content_type=MERGE_PATCH)

    await asyncio.gather(*(one(i) for i in range(count)))


async def delete_profiles(kube: Kube, namespace: str) -> None:
    await kube.request("DELETE", paths.custom_path(api.ARMOR_PROFILE, namespace))


async def go_memory(ep: Endpoint, samples: int = 5) -> tuple[float, float, float]:
    """(heap in use, goroutine stacks in use, goroutines) of kube-apiserver from its
    /metrics, the median of a few samples (the heap moves with every GC cycle; RSS says
    even less, since Go keeps freed memory for reuse)."""
    got = []
    for _ in range(samples):
        got.append(await _go_memory(ep))
        await asyncio.sleep(0.4)
    return tuple(statistics.median(g[i] for g in got) for i in range(3))  # type: ignore[return-value]


async def _go_memory(ep: Endpoint) -> tuple[float, float, float]:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ep.ssl)) as session,
        session.get(ep.server + "/metrics") as response,
    ):
        text = await response.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("go_memstats_heap_inuse_bytes", "go_memstats_stack_inuse_bytes", "go_goroutines"):
            values[name] = float(value)
    names = ("go_memstats_heap_inuse_bytes", "go_memstats_stack_inuse_bytes", "go_goroutines")
    return values.get(names[0], 0.0), values.get(names[1], 0.0), values.get(names[2], 0.0)


def _rss(meter: Meter) -> int:
    """kube-apiserver's RSS (0 against a cluster this benchmark did not start)."""
    got = meter.snap().procs.get("kube-apiserver")
    return got.rss_kb if got is not None else 0


@dataclass(frozen=True)
class Round:
    watchers: int
    events: int
    apiserver_cpu: float
    etcd_cpu: float
    client_cpu: float
    rss_delta_kb: int
    heap_delta: float
    stack_delta: float
    goroutines_delta: float
    seconds: float
    bytes: int


async def one_round(
    kube: Kube, ep: Endpoint, meter: Meter, namespace: str, watchers: int, profiles: int, text: str, tag: str
) -> Round:
    listing = await kube.request("GET", paths.custom_path(api.ARMOR_PROFILE), query={"limit": 1})
    rss0 = _rss(meter)
    heap0, stack0, goroutines0 = await go_memory(ep)
    group = Watchers(ep, watchers, listing["metadata"]["resourceVersion"])
    try:
        await group.start()
        await asyncio.sleep(2)  # the watches' setup settles
        rss1 = _rss(meter)
        heap1, stack1, goroutines1 = await go_memory(ep)
        before = meter.snap()
        started = time.monotonic()
        await write_profiles(kube, namespace, tag, profiles, text)
        expected = profiles * EVENTS_PER_PROFILE
        deadline = time.monotonic() + 300
        while watchers and group.least() < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"watchers got {group.least()} of {expected} events after 300 s")
            await asyncio.sleep(0.05)
        after = meter.snap()
        seconds = time.monotonic() - started
    finally:
        await group.stop()
    with contextlib.suppress(Exception):
        await delete_profiles(kube, namespace)
    used = spent(before, after)
    return Round(
        watchers,
        profiles * EVENTS_PER_PROFILE,
        used.cpu.get("kube-apiserver", 0.0),
        used.cpu.get("etcd", 0.0),
        used.cpu.get("simulator", 0.0),
        rss1 - rss0,
        heap1 - heap0,
        stack1 - stack0,
        goroutines1 - goroutines0,
        seconds,
        group.bytes,
    )


async def measure(
    kube: Kube, kubeconfig: str, meter: Meter, counts: list[int], profiles: int, rounds: int, text: str
) -> dict[str, Any]:
    """Rounds of [0, *counts] watchers; the slope per event per watcher against 0."""
    ep = endpoint(kubeconfig)
    namespace = "bench-fanout"
    with contextlib.suppress(Exception):
        await kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": namespace}})
    results: list[Round] = []
    for r in range(rounds):
        for k in [0, *counts]:
            got = await one_round(kube, ep, meter, namespace, k, profiles, text, f"f{r}k{k}")
            results.append(got)
            print(
                f"  fan-out round {r + 1}: {k:5d} watchers, {got.events} events: kube-apiserver "
                f"{got.apiserver_cpu:.2f} s CPU, etcd {got.etcd_cpu:.2f} s, watch client {got.client_cpu:.2f} s, "
                f"{got.bytes / 1e6:.0f} MB delivered in {got.seconds:.1f} s; with the watches open: heap "
                f"{got.heap_delta / 2**20:+.0f} MiB, stacks {got.stack_delta / 2**20:+.1f} MiB, "
                f"goroutines {got.goroutines_delta:+.0f}, "
                f"RSS +{got.rss_delta_kb / 1024:.0f} MiB",
                flush=True,
            )
    base = {r: statistics.mean(x.apiserver_cpu for x in results if x.watchers == 0) for r in [0]}[0]
    out: dict[str, Any] = {"profiles": profiles, "events": profiles * EVENTS_PER_PROFILE, "per_count": {}}
    for k in counts:
        mine = [x for x in results if x.watchers == k]
        per_event = [(x.apiserver_cpu - base) / (x.events * k) for x in mine]
        per_watcher_kb = [(x.heap_delta + x.stack_delta) / 1024 / k for x in mine]
        bytes_per_event = statistics.mean(x.bytes / (x.events * k) for x in mine)
        out["per_count"][k] = {
            "cpu_us_per_event_per_watcher": [1e6 * v for v in per_event],
            "rss_kb_per_watcher": per_watcher_kb,  # heap + stacks in use (Go keeps freed RSS)
            "rss_delta_kb_per_watcher": [x.rss_delta_kb / k for x in mine],
            "stack_kb_per_watcher": [x.stack_delta / 1024 / k for x in mine],
            "goroutines_per_watcher": [x.goroutines_delta / k for x in mine],
            "bytes_per_event": bytes_per_event,
            "apiserver_cpu": [x.apiserver_cpu for x in mine],
            "client_cpu": [x.client_cpu for x in mine],
        }
    out["baseline_cpu"] = [x.apiserver_cpu for x in results if x.watchers == 0]
    return out
