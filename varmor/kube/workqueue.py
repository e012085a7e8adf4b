"""A keyed work queue: deduplicated, bounded concurrency, per-key serial, retry with backoff.

The client-go workqueue contract in a few lines of asyncio. Reconcilers enqueue keys, not
objects, and re-read current state when they run, so a burst of events for one object
costs one reconcile and no key is ever processed by two workers at once.

What a handler raises decides the retry (varmor.kube.errors): TemporaryError retries after
the delay it names without counting as a failure; PermanentError is logged and not
retried (the next change to the object enqueues it again); anything else retries with
exponential backoff per key, jittered (up to half again), so keys that failed together
(an API server restart) do not all come back in the same instant.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from varmor.kube.backoff import exponential
from varmor.kube.errors import PermanentError, TemporaryError
from varmor.kube.tasks import task_group

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(
        self,
        handler: Callable[[K], Awaitable[None]],
        *,
        concurrency: int = 4,
        base_delay: float = 0.1,
        max_delay: float = 60.0,
        name: str = "queue",
        rng: random.Random | None = None,
    ) -> None:
        self._handler = handler
        self._concurrency = concurrency
        self._base_delay = base_delay
        self._max_delay = max_delay
        self.name = name
        self._rng = rng or random.Random()
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._pending: set[K] = set()  # queued, not yet started
        self._active: set[K] = set()  # being processed
        self._dirty: set[K] = set()  # re-added while active
        self._failures: dict[K, int] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, key: K) -> None:
        if key in self._active:
            self._dirty.add(key)
            return
        if key in self._pending:
            return
        self._pending.add(key)
        self._idle.clear()
        self._queue.put_nowait(key)

    def add_after(self, key: K, delay: float) -> None:
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            self.add(key)

        handle = loop.call_later(delay, fire)
        self._timers.add(handle)

    def forget(self, key: K) -> None:
        self._failures.pop(key, None)

    def __len__(self) -> int:
        return len(self._pending) + len(self._active)

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            self._pending.discard(key)
            self._active.add(key)
            try:
                await self._handler(key)
                self._failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except TemporaryError as exc:
                log.debug("%s: %s: %s; again in %.1fs", self.name, key, exc, exc.delay)
                self.add_after(key, exc.delay)
            except PermanentError as exc:
                self._failures.pop(key, None)
                log.warning("%s: %s: %s (not retried until it changes)", self.name, key, exc)
            except Exception:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                delay = exponential(failures - 1, self._base_delay, self._max_delay) * (1 + 0.5 * self._rng.random())
                log.exception("%s: %s failed (attempt %d); retry in %.1fs", self.name, key, failures, delay)
                self.add_after(key, delay)
            finally:
                self._active.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)
                if not self._pending and not self._active:
                    self._idle.set()

    async def run(self) -> None:
        try:
            async with task_group() as group:
                for i in range(self._concurrency):
                    group.create_task(self._worker(), name=f"{self.name}-worker-{i}")
        finally:
            for timer in self._timers:
                timer.cancel()
