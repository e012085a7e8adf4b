"""The ArmorNode writer: this node's agent is its only writer.

Creates the ArmorNode (owner reference to the Node, so it goes when the node goes) and
writes its status through the status subresource. Writes are coalesced: callers `mark()`
after every change, and the writer waits for a quiet `debounce` period (at most
`max_delay` after the first change) and writes only if the status differs from the last
one written (as `key` sees it), so one policy change costs one write per node.

Size: the first write (and the first after a failed one, whose outcome is unknown) sets
the whole status; every later one is a JSON merge patch of what changed since the last
write, per entry for the load report's exceptions (`varmor.loadreport.delta`), so a change
to one profile is one write of a few hundred bytes whatever the number of profiles.

Pacing: a full write is also held until `pace` times the duration of the previous one has
passed since it. An idle API server answers in milliseconds and nothing changes; one that is
queueing (a burst of policies makes every agent rewrite a status of ~30 kB per round)
answers slowly, and every agent then writes less often, each write covering more changes.
The API server's own latency is the signal, so the load it sees adapts to what it can take
without any coordination between nodes.

Heartbeat: `status.heartbeatTime` tells the leader this agent is still alive (an ArmorNode
whose agent is gone would otherwise say `ready: true` forever). Every status write
carries it; when nothing changed for `heartbeat` seconds, a one-field JSON patch renews
it, so an idle agent costs one small write per interval and the maps are never resent
just to say "still here". The stamp is this node's wall clock, which may be off: the
leader only looks at whether it changed, on its own clock (varmor.reconcile.liveness), so
the stamp is for people reading the ArmorNode.

Time is injected: `clock` (wall time, for the timestamps written), `monotonic` (the
interval arithmetic) and `sleep` (every wait with a timeout goes through it). The
decisions "when is the next heartbeat due" and "how long to hold the next write" are pure
functions of a monotonic reading (`until_beat(now)`, `pause(now)`), so tests check the
cadence on fixed readings, and drive `run()` with a manual clock instead of real time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from varmor import api
from varmor.api import DEFAULT_HEARTBEAT
from varmor.clock import Clock, rfc3339, utc_now
from varmor.kube import paths
from varmor.kube.backoff import Backoff
from varmor.kube.client import JSON, ApiException
from varmor.kube.kube import JSON_PATCH, MERGE_PATCH, Kube
from varmor.loadreport import delta
from varmor.nodeexec import metrics

log = logging.getLogger(__name__)


class StatusWriter:
    def __init__(
        self,
        kube: Kube,
        node_name: str,
        build: Callable[[], JSON],
        *,
        debounce: float = 0.5,
        max_delay: float = 2.0,
        pace: float = 2.0,
        max_pause: float = 10.0,
        heartbeat: float = DEFAULT_HEARTBEAT,
        clock: Clock = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        backoff: Backoff | None = None,
        key: Callable[[JSON], object] | None = None,
    ) -> None:
        self.kube = kube
        self.node_name = node_name
        self.build = build
        # What makes a status worth writing; the agent leaves out a watermark that moved
        # only because the leader updated ArmorProfile statuses (heartbeats carry that).
        self.key: Callable[[JSON], object] = key or (lambda status: status)
        self.debounce = debounce
        self.max_delay = max_delay
        self.pace = pace  # hold the next full write `pace` x the last one's duration (0: off)
        self.max_pause = max_pause
        self.heartbeat = heartbeat  # seconds; 0 disables (no heartbeatTime is written)
        self.clock = clock  # wall time: lastUpdateTime / heartbeatTime
        self.monotonic = monotonic  # intervals: debounce, pacing, heartbeat due times
        self.sleep = sleep
        self.backoff = backoff or Backoff()  # failed writes and heartbeats
        self.writes = 0  # every successful write, heartbeats included
        self.heartbeats = 0  # heartbeat-only writes
        self._dirty = asyncio.Event()
        self._last: JSON | None = None  # the status as last written (None: unknown)
        self._last_key: object = None
        self._last_write = 0.0  # monotonic time of the last successful write
        self._last_duration = 0.0  # seconds the last full write took
        self._lock = asyncio.Lock()
        # Set when the ArmorNode is deleted under a running agent (the uninstall hook, or
        # an operator resetting it). Writes stop instead of recreating it: recreating
        # would leave an ArmorNode behind after every uninstall (owned by the Node, it
        # never goes away). An agent restart creates it again through ensure().
        self.gone = False
        self.schema_outdated = False  # the API server dropped the load report (an old CRD)

    @property
    def path(self) -> str:
        return paths.custom_path(api.ARMOR_NODE, name=self.node_name)

    async def ensure(self) -> None:
        """Create the ArmorNode if it is missing, owned by the Node when the Node exists
        (a test cluster or a bench may have no Node objects)."""
        try:
            await self.kube.request("GET", self.path)
            return
        except ApiException as exc:
            if exc.status != 404:
                raise
        meta: dict[str, Any] = {"name": self.node_name, "labels": {api.MANAGED_BY_LABEL: "varmor"}}
        try:
            node = await self.kube.request("GET", paths.core_path("nodes", None, self.node_name))
            meta["ownerReferences"] = [
                {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": node["metadata"]["uid"]}
            ]
        except ApiException as exc:
            if exc.status != 404:
                raise
            log.warning("Node %s not found: ArmorNode created without an owner reference", self.node_name)
        body = {"apiVersion": api.API_VERSION, "kind": api.ARMOR_NODE.kind, "metadata": meta}
        try:
            await self.kube.request("POST", paths.custom_path(api.ARMOR_NODE), body=body)
        except ApiException as exc:
            if exc.status != 409:
                raise

    async def ensure_retrying(self) -> None:
        """`ensure()` until it succeeds (the API server may not be reachable yet)."""
        backoff = Backoff(base=0.2, cap=10.0)
        while True:
            try:
                await self.ensure()
                return
            except Exception as exc:
                log.warning("cannot create ArmorNode %s: %r; retrying", self.node_name, exc)
                await self.sleep(backoff.next())

    def mark(self) -> None:
        """Something in the status changed; write soon."""
        self._dirty.set()

    async def flush(self) -> bool:
        """Write now if the status changed since the last write. Returns whether it wrote."""
        async with self._lock:
            if self.gone:
                return False
            status = self.build()
            key = self.key(status)
            if self._last is not None and key == self._last_key:
                metrics.STATUS_WRITES.labels("skipped").inc()
                return False
            now = rfc3339(self.clock())
            stamps = {"lastUpdateTime": now} | ({"heartbeatTime": now} if self.heartbeat > 0 else {})
            if self._last is None:  # the whole status: the first write, or after an unknown outcome
                body: Any = [{"op": "add", "path": "/status", "value": {**status, **stamps}}]
                content_type = JSON_PATCH
            else:
                body, content_type = {"status": {**delta(self._last, status), **stamps}}, MERGE_PATCH
            started = self.monotonic()
            self._last = None  # until the write is known to have landed
            try:
                stored = await self.kube.request("PATCH", f"{self.path}/status", body=body, content_type=content_type)
            except ApiException as exc:
                if exc.status == 404:
                    self._deleted()
                    return False
                metrics.STATUS_WRITES.labels("error").inc()
                raise
            self._last, self._last_key = status, key
            self._check_schema(status, stored)
            self._wrote()
            self._last_duration = self._last_write - started
            metrics.STATUS_WRITES.labels("ok").inc()
            return True

    def _check_schema(self, sent: JSON, stored: JSON) -> None:
        """An API server that drops the fields just written has an ArmorNode CRD older than
        this agent (Helm installs CRDs but never upgrades them): nothing it reports counts."""
        missing = sorted(k for k in ("watermark", "exceptions") if k in sent and k not in (stored.get("status") or {}))
        if missing and stored and not self.schema_outdated:
            self.schema_outdated = True
            log.error(
                "the API server dropped status.%s from ArmorNode %s: its CRD is older than this agent; apply "
                "the chart's CRDs (kubectl apply -f chart/crds/), or no policy counts this node as loaded",
                "/".join(missing),
                self.node_name,
            )

    def _deleted(self) -> None:
        if not self.gone:
            log.warning(
                "ArmorNode %s was deleted (uninstall, or reset by an operator): status writes stop "
                "until the agent restarts",
                self.node_name,
            )
        self.gone = True
        metrics.STATUS_WRITES.labels("gone").inc()

    def _wrote(self) -> None:
        self.writes += 1
        self._last_write = self.monotonic()

    async def beat(self) -> None:
        """Renew heartbeatTime alone (one small patch; the rest is not resent), with the
        load report's watermark when only it moved. Before the first full write, or after
        a failed one, the full status goes instead."""
        if self._last is None:
            await self.flush()
            return
        async with self._lock:
            if self.gone or self._last is None:
                return
            status = self.build()
            if self.key(status) != self._last_key:  # a change is pending: the full write is the beat
                self._dirty.set()
                return
            body = [{"op": "add", "path": "/status/heartbeatTime", "value": rfc3339(self.clock())}]
            moved = "watermark" in status and status["watermark"] != self._last.get("watermark")
            if moved:
                body.append({"op": "add", "path": "/status/watermark", "value": status["watermark"]})
            try:
                await self.kube.request("PATCH", f"{self.path}/status", body=body, content_type=JSON_PATCH)
            except ApiException as exc:
                if exc.status == 404:
                    self._deleted()
                    return
                # 422: no status to patch; the next write must be the full status.
                metrics.STATUS_WRITES.labels("error").inc()
                self._last = None
                self._dirty.set()
                raise
            if moved:
                self._last = {**self._last, "watermark": status["watermark"]}
            self._wrote()
            self.heartbeats += 1
            metrics.STATUS_WRITES.labels("heartbeat").inc()

    def pause(self, now: float) -> float:
        """Seconds to hold the next full write at monotonic time `now`, so writes pace
        themselves to the API server. A failed write does not lift it: the retry after an
        unknown outcome (a timeout) is paced too, or retries would add load exactly when the
        API server is behind."""
        if self.pace <= 0 or self.writes == 0:
            return 0.0
        gap = min(self.max_pause, self.pace * self._last_duration)
        return max(0.0, self._last_write + gap - now)

    def until_beat(self, now: float) -> float | None:
        """Seconds from monotonic time `now` until the next heartbeat is due (0: due now;
        None: heartbeats off, nothing written yet, or the ArmorNode is gone)."""
        if self.heartbeat <= 0 or self._last is None or self.gone:
            return None
        return max(0.0, self._last_write + self.heartbeat - now)

    async def _changed_within(self, timeout: float | None) -> bool:
        """Wait until `mark()` or until `timeout` seconds passed on the injected clock
        (None: no timeout). Returns whether a change was marked."""
        if self._dirty.is_set():
            return True
        if timeout is None:
            await self._dirty.wait()
            return True
        marked = asyncio.ensure_future(self._dirty.wait())
        timer = asyncio.ensure_future(self.sleep(timeout))
        try:
            await asyncio.wait((marked, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (marked, timer):
                waiter.cancel()
            await asyncio.gather(marked, timer, return_exceptions=True)
        return self._dirty.is_set()

    async def run(self) -> None:
        """Write coalesced changes and heartbeats until cancelled; retry failed writes with backoff."""
        while True:
            if not await self._changed_within(self.until_beat(self.monotonic())):
                try:
                    await self.beat()
                    self.backoff.reset()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("ArmorNode %s heartbeat failed: %r; retrying", self.node_name, exc)
                    await self.sleep(self.backoff.next())
                continue
            first = self.monotonic()
            while True:  # wait for a quiet period, but not forever
                self._dirty.clear()
                remaining = self.max_delay - (self.monotonic() - first)
                if remaining <= 0 or not await self._changed_within(min(self.debounce, remaining)):
                    break
            pause = self.pause(self.monotonic())
            if pause > 0:
                metrics.STATUS_PACING.inc(pause)
                await self.sleep(pause)  # changes marked meanwhile go into this write
                self._dirty.clear()
            try:
                await self.flush()
                self.backoff.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("ArmorNode %s status write failed: %r; retrying", self.node_name, exc)
                self._dirty.set()
                await self.sleep(self.backoff.next())
