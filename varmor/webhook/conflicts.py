"""Conflict Events on losing policies, rate-limited and off the admission path.

An admission must never wait on the API server for an Event, so `report` only queues;
a background task sends at most one Event per (losing policy, winning policy) per
interval per replica, and drops (counted) when the queue is full.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from typing import Any

from kubernetes.aio import client

from varmor import api
from varmor.admission.review import MutationRequest
from varmor.admission.selection import Candidate, Selection
from varmor.webhook import metrics

log = logging.getLogger(__name__)


def _ref(c: Candidate) -> str:
    return f"{c.namespace}/{c.name}" if c.namespace else c.name


def conflict_event(loser: Candidate, winner: Candidate, req: MutationRequest, now: dt.datetime) -> dict[str, Any]:
    """A core/v1 Event on the losing policy (cluster policies' Events live in `default`)."""
    kind = api.VARMOR_CLUSTER_POLICY.kind if loser.cluster else api.VARMOR_POLICY.kind
    namespace = loser.namespace or "default"
    target = f"{req.kind} {req.namespace}/{req.name or '(generated name)'}"
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{loser.name}.{uuid.uuid4().hex[:12]}", "namespace": namespace},
        "involvedObject": {
            "apiVersion": api.API_VERSION,
            "kind": kind,
            "name": loser.name,
            "namespace": loser.namespace or None,
            "uid": loser.uid,
        },
        "reason": "Conflict",
        "type": "Warning",
        "message": (
            f"also selects {target}; policy {_ref(winner)} takes precedence "
            "(cluster policies first, then a name match over a selector, then the oldest policy)"
        ),
        "source": {"component": "varmor-webhook"},
        "reportingComponent": "varmor-webhook",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class ConflictReporter:
    def __init__(self, api_client: client.ApiClient, *, interval: float = 300.0, queue_size: int = 100) -> None:
        self.core = client.CoreV1Api(api_client)
        self.interval = interval
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(queue_size)
        self._last: dict[tuple[str, str], float] = {}

    def report(self, sel: Selection, req: MutationRequest) -> None:
        if sel.winner is None:
            return
        now = time.monotonic()
        winner = sel.winner.candidate
        for loser in sel.losers:
            key = (loser.candidate.uid or _ref(loser.candidate), winner.uid or _ref(winner))
            if now - self._last.get(key, -self.interval) < self.interval:
                metrics.EVENTS_DROPPED.inc()
                continue
            try:
                self.queue.put_nowait(conflict_event(loser.candidate, winner, req, dt.datetime.now(dt.UTC)))
            except asyncio.QueueFull:
                metrics.EVENTS_DROPPED.inc()
                continue
            self._last[key] = now
        if len(self._last) > 10_000:  # bound memory: forget the oldest half
            for k in sorted(self._last, key=self._last.__getitem__)[:5_000]:
                del self._last[k]

    async def run(self) -> None:
        while True:
            event = await self.queue.get()
            try:
                await self.core.create_namespaced_event(event["metadata"]["namespace"], event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("could not record conflict event: %s", getattr(exc, "status", type(exc).__name__))
