from __future__ import annotations

import asyncio

from tests.helpers import wait_for
from varmor.kube.workqueue import WorkQueue


async def test_burst_of_adds_for_one_key_is_one_reconcile() -> None:
    seen: list[str] = []

    async def handle(key: str) -> None:
        seen.append(key)

    q: WorkQueue[str] = WorkQueue(handle, concurrency=2)
    for _ in range(10):
        q.add("a")
    q.add("b")
    runner = asyncio.create_task(q.run())
    await asyncio.wait_for(q.wait_idle(), 5)
    runner.cancel()
    assert sorted(seen) == ["a", "b"]


async def test_key_is_never_processed_twice_at_once_and_readd_while_active_runs_again() -> None:
    running: set[str] = set()
    overlaps = 0
    calls = 0
    release = asyncio.Event()

    async def handle(key: str) -> None:
        nonlocal overlaps, calls
        calls += 1
        if key in running:
            overlaps += 1
        running.add(key)
        if calls == 1:
            await release.wait()
        running.discard(key)

    q: WorkQueue[str] = WorkQueue(handle, concurrency=4)
    runner = asyncio.create_task(q.run())
    q.add("k")
    await wait_for(lambda: "k" in running, timeout=5, interval=0.001, what="the first run of k")
    q.add("k")  # arrives while the first run is active
    release.set()
    await wait_for(lambda: calls == 2, timeout=5, interval=0.001, what="the second run of k")
    await asyncio.wait_for(q.wait_idle(), 5)
    runner.cancel()
    assert overlaps == 0
    assert calls == 2


async def test_failures_are_retried_with_backoff() -> None:
    attempts = 0

    async def handle(_key: str) -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise RuntimeError("transient")

    q: WorkQueue[str] = WorkQueue(handle, base_delay=0.01)
    runner = asyncio.create_task(q.run())
    q.add("x")
    await wait_for(lambda: attempts >= 3, timeout=10, interval=0.005, what="the third attempt")
    await asyncio.wait_for(q.wait_idle(), 5)
    runner.cancel()
    assert attempts == 3
