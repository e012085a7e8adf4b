"""Events sent off the caller's path: the audit tailer and the pod watch must never wait on
the API server, so they offer prepared Event bodies to a bounded queue that one task sends.
When the API is slow and the queue is full, an Event is dropped and counted, never queued
without bound."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from varmor.kube.kube import Kube

log = logging.getLogger(__name__)


class EventQueue:
    def __init__(self, kube: Kube, count: Callable[[str], None], *, size: int = 256) -> None:
        self.kube = kube
        self.count = count  # called with sent | dropped | error
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(size)

    def offer(self, body: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(body)
        except asyncio.QueueFull:
            self.count("dropped")

    async def run(self) -> None:
        while True:
            body = await self.queue.get()
            try:
                await self.kube.post_event(body)
                self.count("sent")
            except Exception as exc:
                self.count("error")
                log.warning("could not record event %s: %r", body.get("reason"), exc)


@dataclass
class RateLimiter:
    """At most one Event per key per `interval`; what was held back is counted and told
    in the next Event."""

    interval: float
    _last: dict[Any, float] = field(default_factory=dict)
    _held: dict[Any, int] = field(default_factory=dict)

    def admit(self, key: Any, now: float) -> tuple[bool, int]:
        """(send now?, how many were suppressed before this one)."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return False, 0
        self._last[key] = now
        return True, self._held.pop(key, 0)
