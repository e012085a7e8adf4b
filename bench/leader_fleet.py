"""Simulated node agents for the leader benchmark: N ArmorNodes, each written by its own
`StatusWriter` (the agent's: debounce, max delay, skip-if-unchanged, merge patches,
pacing), all fed by one shared ArmorProfile watch.

Two status formats:

* `new`: the load report (`varmor.loadreport`). The status is built exactly as the agent
  builds it (`Ledger.received` per watch event, `begin`/`settle` around each sync,
  `state.node_status(report=ledger.report(partial(state.outcome, ...)))`, the agent's
  StatusWriter `key`). Nodes that receive the same events and load at once hold identical
  ledgers, so one Ledger/NodeState serves a whole group and its report is built once per
  change; with `load_delay` the nodes are split into groups that each settle a profile
  after their own random delay.
* `old`: the map of every loaded profile (`profiles`, `failures`), as agents before the
  load report wrote it (run against that tree's StatusWriter and leader).

Departures from the agent's code, all to save the simulator's CPU (one process plays
5,000 agents): the writers' wait primitive (wait until marked or a timeout) is one timer
instead of two tasks (~20 us per wake instead of ~60 us); marks reach a group's writers
at once after a quiet `tick`, then at most once per `tick` rather than once per event;
and requests leave through one lean aiohttp client instead of the kubernetes client
(`CountingKube`), the same method, path, body and content type.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

from varmor import api
from varmor.kube import paths
from varmor.kube.client import THROTTLE_RETRIES, ApiException, throttle_delay
from varmor.kube.informer import EventType, Informer, Key, object_key
from varmor.kube.kube import Kube
from varmor.nodeexec.status import StatusWriter

JSON = dict[str, Any]


@dataclass(frozen=True)
class Endpoint:
    server: str
    ssl: ssl.SSLContext


def endpoint(kubeconfig: str) -> Endpoint:
    """The server and TLS client context of a kubeconfig with file references (the dev
    control plane's)."""
    config = yaml.safe_load(Path(kubeconfig).read_text())
    cluster = config["clusters"][0]["cluster"]
    user = config["users"][0]["user"]
    ctx = ssl.create_default_context(cafile=cluster["certificate-authority"])
    ctx.load_cert_chain(user["client-certificate"], user["client-key"])
    return Endpoint(cluster["server"], ctx)


class CountingKube(Kube):
    """The simulated agents' Kube: sums the bodies of what they send (ArmorNode writes) as
    they leave, and how long each took, so bytes per node per change are measured at the
    source. Requests go out through one lean aiohttp client (the same method, path,
    body and content type as `Kube.request`; the kubernetes client's own per-request
    CPU is each real agent's, on its own node, and would only crowd this one process)."""

    def __init__(self, api_client: Any, ep: Endpoint, connections: int) -> None:
        super().__init__(api_client, component="agent")
        self.ep = ep
        self.connections = connections
        self._session: aiohttp.ClientSession | None = None
        self.sent = 0
        self.bytes = 0
        self.errors = 0
        self.latencies: list[float] = []

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.connections, ssl=self.ep.ssl)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Any = None,
        body: Any = None,
        content_type: str = "application/json",
        request_timeout: float | None = None,
    ) -> JSON:
        data = orjson.dumps(body) if body is not None else None
        headers = {"Accept": "application/json"} | ({"Content-Type": content_type} if data is not None else {})
        timeout = aiohttp.ClientTimeout(total=request_timeout or self.timeout)
        started = time.monotonic()
        try:
            for attempt in range(THROTTLE_RETRIES + 1):
                async with self.session.request(
                    method, self.ep.server + path, params=query, data=data, headers=headers, timeout=timeout
                ) as response:
                    raw = await response.read()
                    if response.status != 429 or attempt == THROTTLE_RETRIES:
                        break
                await asyncio.sleep(throttle_delay(response.headers.get("Retry-After")))
            if not 200 <= response.status <= 299:
                raise ApiException(status=response.status, reason=response.reason, body=raw.decode("utf-8", "replace"))
            result: JSON = orjson.loads(raw) if raw else {}
            return result
        except Exception:
            if method != "GET":
                self.errors += 1
            raise
        finally:
            if method != "GET":
                self.sent += 1
                self.bytes += len(data or b"")
                self.latencies.append(time.monotonic() - started)


class Writer(StatusWriter):
    """The agent's StatusWriter with a cheaper wait (one timer instead of two tasks)."""

    async def _changed_within(self, timeout: float | None) -> bool:
        if self._dirty.is_set():
            return True
        if timeout is None:
            await self._dirty.wait()
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._dirty.wait()
        return self._dirty.is_set()


class Group:
    """The nodes that share one ledger: same events, same load delay."""

    def __init__(self, fleet: Fleet, delay: float) -> None:
        self.fleet = fleet
        self.delay = delay
        self.writers: list[Writer] = []
        self.pending = False
        self.progress: int | None = None
        self._status: JSON | None = None
        if fleet.format == "new":
            from varmor.loadreport import Ledger
            from varmor.nodeexec.state import NodeState

            self.ledger = Ledger()
            self.state = NodeState()
        self.desired: dict[str, Any] = {}
        self.index: dict[str, set[Key]] = {}
        self.old_seen: dict[Key, str | None] = {}

    def changed(self) -> None:
        self._status = None
        self.pending = True
        self.fleet.wake.set()

    # -- the agent's event and sync path (varmor/nodeexec/agent.py), loads instant or delayed
    def event(self, event: EventType, obj: JSON) -> None:
        if self.fleet.format == "old":
            self._old_event(event, obj)
            return
        key = object_key(obj)
        name = key[1]
        # As the agent: another writer's status update neither wakes the writer nor syncs.
        act = event == "RESYNC" or self.ledger.received(key, obj, deleted=event == "DELETED")
        keys = self.index.setdefault(name, set())
        if event == "DELETED":
            keys.discard(key)
            if not keys:
                del self.index[name]
        else:
            keys.add(key)
        if not act:
            return
        self.changed()
        token = self.ledger.begin(name)
        if self.delay > 0:
            wait = self.fleet.rng.uniform(0, self.delay)
            asyncio.get_running_loop().call_later(wait, self._sync, name, token)
        else:
            self._sync(name, token)

    def _sync(self, name: str, token: int | None) -> None:
        from varmor.nodeexec.state import Loaded, choose

        cache = self.fleet.profiles.cache
        desired, rejected = choose([cache[k] for k in sorted(self.index.get(name, ())) if k in cache])
        if desired is None:
            self.desired.pop(name, None)
            self.state.loaded.pop(name, None)
        else:
            self.desired[name] = desired
            self.state.loaded[name] = Loaded(desired.namespace, desired.sha256, desired.mode)
        if rejected:
            self.state.failures[name] = rejected[0]
        else:
            self.state.failures.pop(name, None)
        self.ledger.settle(name, token)
        self.changed()

    def _old_event(self, event: EventType, obj: JSON) -> None:
        """The earlier agent wrote only when what it loaded changed (a new content)."""
        key = object_key(obj)
        sha = None if event == "DELETED" else obj["spec"]["profile"]["sha256"]
        if self.old_seen.get(key) == sha:
            return
        self.old_seen[key] = sha
        self.changed()

    # -- the status every writer of the group builds
    def build(self) -> JSON:
        if self._status is None:
            self._status = self._build_new() if self.fleet.format == "new" else self._build_old()
        return self._status

    def key(self, status: JSON) -> object:
        return status | {"watermark": self.progress}

    def _build_new(self) -> JSON:
        from varmor.nodeexec import state

        report = self.ledger.report(functools.partial(state.outcome, self.state, self.desired))
        self.progress = report.progress
        return state.node_status(
            supported=True,
            reason="",
            parser_version="3.0.8",
            agent_version="bench",
            ready=True,
            report=report,
            loaded=len(self.state.loaded),
        )

    def _build_old(self) -> JSON:
        loaded = {
            ap["metadata"]["name"]: {
                "namespace": ap["metadata"]["namespace"],
                "sha256": ap["spec"]["profile"]["sha256"],
                "mode": ap["spec"]["profile"]["mode"],
            }
            for ap in self.fleet.profiles.list()
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


class Fleet:
    """N simulated agents sharing one ArmorProfile watch."""

    def __init__(
        self,
        api_client: Any,
        names: list[str],
        ep: Endpoint,
        *,
        connections: int,
        format: str,
        pace: float,
        heartbeat: float = 0.0,
        tick: float = 0.1,
        load_delay: float = 0.0,
        groups: int = 1,
        seed: int = 1,
        timing: dict[str, float] | None = None,
    ) -> None:
        self.format = format
        self.wake = asyncio.Event()
        self.kube = CountingKube(api_client, ep, connections)
        self.names = names
        self.tick = tick
        self.rng = random.Random(seed)
        self.profiles = Informer(api_client, api.ARMOR_PROFILE, resync_seconds=3600)
        self.profiles.add_handler(self._changed)
        self.groups = [Group(self, load_delay) for _ in range(max(1, groups if load_delay > 0 else 1))]
        self.writers: list[Writer] = []
        for i, name in enumerate(names):
            group = self.groups[i % len(self.groups)]
            extra: dict[str, Any] = {"key": group.key} if format == "new" else {}
            extra |= timing or {}  # what-if: other max_delay / max_pause than the agent's
            writer = Writer(self.kube, name, group.build, heartbeat=heartbeat, pace=pace, **extra)
            group.writers.append(writer)
            self.writers.append(writer)
        self.events = 0

    @property
    def writes(self) -> int:
        return sum(w.writes for w in self.writers)

    def describe(self) -> str:
        per = len(self.writers) // len(self.groups)
        if self.format == "old":
            return (
                f"{len(self.writers)} simulated agents, status in the earlier format (a map of every loaded "
                f"profile), one shared status built once per change; each node has its own StatusWriter"
            )
        how = "instant loads" if self.groups[0].delay <= 0 else f"loads settled after 0-{self.groups[0].delay} s"
        return (
            f"{len(self.writers)} simulated agents in {len(self.groups)} group(s) of ~{per} sharing ONE "
            f"Ledger/NodeState per group (same event stream, {how}): the load report is built once per "
            f"change per group; each node has its own StatusWriter (its own ArmorNode, debounce, pacing, "
            f"merge patches, the agent's key)"
        )

    async def _changed(self, event: EventType, obj: JSON) -> None:
        self.events += 1
        for group in self.groups:
            group.event(event, obj)

    async def _marker(self) -> None:
        """Mark every writer of a group whose status may have changed: at once after a
        quiet tick, then at most once per tick."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            for group in self.groups:
                if group.pending:
                    group.pending = False
                    for writer in group.writers:
                        writer.mark()
            await asyncio.sleep(self.tick)

    def mark_all(self) -> None:
        for group in self.groups:
            group.changed()

    async def run(self) -> None:
        await asyncio.gather(self.profiles.run(), self._marker(), *(w.run() for w in self.writers))

    def unwritten(self) -> int:
        return sum(1 for w in self.writers if w.writes == 0)


async def setup_nodes(kube: Kube, count: int, concurrency: int = 48) -> list[str]:
    """Node and ArmorNode objects (owned by the Node, as the agent makes them), created
    concurrently; their statuses are the simulated agents' first writes."""
    sem = asyncio.Semaphore(concurrency)
    names = [f"bench-node-{i:05d}" for i in range(count)]

    async def one(name: str) -> None:
        async with sem:
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
                    "labels": {api.MANAGED_BY_LABEL: "varmor"},
                    "ownerReferences": [
                        {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}
                    ],
                },
            }
            try:
                await kube.request("POST", paths.custom_path(api.ARMOR_NODE), body=body)
            except ApiException as exc:
                if exc.status != 409:
                    raise

    await asyncio.gather(*(one(n) for n in names))
    return names
