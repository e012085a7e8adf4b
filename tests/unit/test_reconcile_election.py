"""Leader election logic on a fake clock: client-go timings, optimistic concurrency, and
leader tasks stopping at once on loss. The store is an in-memory Lease with a
resourceVersion check (the real API is exercised in tests/cluster/test_reconcile_election.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import replace

import pytest

from varmor.reconcile.election import (
    Conflict,
    ElectionConfig,
    ElectionState,
    LeaderElector,
    LeaseRecord,
)

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class FakeClock:
    """Monotonic and wall time that only move when told to (sleep advances them)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return self.t

    def now(self) -> dt.datetime:
        return T0 + dt.timedelta(seconds=self.t)

    def advance(self, seconds: float) -> None:
        self.t += seconds

    async def sleep(self, seconds: float) -> None:
        self.t += seconds
        await asyncio.sleep(0)


class MemoryStore:
    def __init__(self) -> None:
        self.record: LeaseRecord | None = None
        self.version = 0
        self.fail = False

    async def get(self) -> LeaseRecord | None:
        if self.fail:
            raise OSError("api down")
        return self.record

    async def create(self, record: LeaseRecord) -> LeaseRecord:
        if self.fail:
            raise OSError("api down")
        if self.record is not None:
            raise Conflict
        return self._write(record)

    async def update(self, record: LeaseRecord) -> LeaseRecord:
        if self.fail:
            raise OSError("api down")
        if self.record is None or record.resource_version != self.record.resource_version:
            raise Conflict
        return self._write(record)

    def _write(self, record: LeaseRecord) -> LeaseRecord:
        self.version += 1
        self.record = replace(record, resource_version=str(self.version))
        return self.record


async def until(predicate: Callable[[], bool]) -> None:
    for _ in range(100_000):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never met")


def config(identity: str, **kw: float) -> ElectionConfig:
    return ElectionConfig(namespace="varmor", lease_name="l", identity=identity, **kw)


def test_config_enforces_client_go_invariants() -> None:
    config("a")  # 15 / 10 / 2 defaults
    with pytest.raises(ValueError, match="greater than the renew deadline"):
        config("a", lease_duration=10, renew_deadline=10)
    with pytest.raises(ValueError, match="retry period"):
        config("a", renew_deadline=2, retry_period=2)
    with pytest.raises(ValueError, match="identity"):
        config("")


def test_state_expiry_is_measured_from_local_observation() -> None:
    state = ElectionState(config("b"))
    # The holder's renewTime is far in the past by *its* clock: irrelevant, we only
    # trust how long we have seen the record unchanged.
    held = LeaseRecord(holder="a", lease_duration=15, renew_time=T0 - dt.timedelta(days=1), resource_version="7")
    state.observe(held, now=100.0)
    assert state.held_by_other(100.0)
    assert state.held_by_other(114.9)
    state.observe(held, now=114.9)  # same record again: the observation time stays
    assert not state.held_by_other(115.0)
    renewed = replace(held, renew_time=T0, resource_version="8")
    state.observe(renewed, now=115.0)  # a renewal resets the clock
    assert state.held_by_other(129.0)


def test_desired_record_counts_transitions() -> None:
    state = ElectionState(config("b"))
    state.observe(LeaseRecord(holder="a", transitions=3, resource_version="5"), now=0)
    taken = state.desired(T0)
    assert (taken.holder, taken.transitions, taken.acquire_time, taken.resource_version) == ("b", 4, T0, "5")
    state.observe(taken, now=1)
    renewed = state.desired(T0 + dt.timedelta(seconds=2))
    assert renewed.transitions == 4
    assert renewed.acquire_time == T0
    assert renewed.renew_time == T0 + dt.timedelta(seconds=2)
    released = state.released(T0)
    assert released is not None
    assert released.holder == ""
    assert released.lease_duration == 1
    # Releasing a lease that is not ours writes nothing.
    other = ElectionState(config("c"))
    other.observe(taken, now=0)
    assert other.released(T0) is None


async def test_first_candidate_creates_the_lease_second_waits_for_expiry() -> None:
    clock, store = FakeClock(), MemoryStore()
    a = LeaderElector(store, config("a"), clock)
    b = LeaderElector(store, config("b"), clock)
    assert await a.try_acquire_or_renew()
    assert store.record is not None
    assert store.record.holder == "a"
    assert not await b.try_acquire_or_renew()
    clock.advance(14)
    assert not await b.try_acquire_or_renew()
    clock.advance(1.5)  # b has now seen the same record for > 15 s
    assert await b.try_acquire_or_renew()
    assert store.record.holder == "b"
    assert store.record.transitions == 1
    # a learns it lost on its next round and does not write.
    version = store.version
    assert not await a.try_acquire_or_renew()
    assert store.version == version


async def test_concurrent_candidates_resolve_by_resource_version() -> None:
    clock, store = FakeClock(), MemoryStore()
    a = LeaderElector(store, config("a"), clock)
    b = LeaderElector(store, config("b"), clock)
    store._write(LeaseRecord(holder="", lease_duration=1))
    # Both read the free lease, then both write: only the first write wins.
    current = await store.get()
    a.state.observe(current, clock.monotonic())
    b.state.observe(current, clock.monotonic())
    await store.update(a.state.desired(clock.now()))
    with pytest.raises(Conflict):
        await store.update(b.state.desired(clock.now()))
    assert store.record is not None
    assert store.record.holder == "a"


async def test_leader_stops_at_renew_deadline_when_the_api_is_unreachable() -> None:
    clock, store = FakeClock(), MemoryStore()
    elector = LeaderElector(store, config("a", lease_duration=15, renew_deadline=10, retry_period=2), clock)
    await elector.acquire()
    started = clock.monotonic()
    store.fail = True
    await elector.hold()
    lost_after = clock.monotonic() - started
    assert 10 <= lost_after < 15  # gave up before anyone else may take over


async def test_leader_stops_immediately_when_the_lease_is_taken() -> None:
    clock, store = FakeClock(), MemoryStore()
    elector = LeaderElector(store, config("a"), clock)
    await elector.acquire()
    assert store.record is not None
    store._write(replace(store.record, holder="usurper"))
    started = clock.monotonic()
    await elector.hold()
    assert clock.monotonic() - started <= 2.0  # one retry period, not the deadline


async def test_run_cancels_leader_tasks_on_loss_and_reacquires() -> None:
    clock, store = FakeClock(), MemoryStore()
    elector = LeaderElector(store, config("a"), clock)
    starts: list[float] = []
    cancelled: list[float] = []

    async def lead() -> None:
        starts.append(clock.monotonic())
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(clock.monotonic())
            raise

    runner = asyncio.create_task(elector.run(lead))
    for _ in range(50):
        await asyncio.sleep(0)
    assert len(starts) == 1
    assert elector.leading
    store.fail = True  # renewals fail until the deadline passes
    failed_at = clock.monotonic()
    await until(lambda: bool(cancelled))
    assert not elector.leading
    assert cancelled[0] - failed_at <= 10 + 2
    store.fail = False
    await until(lambda: len(starts) >= 2)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    # Cancelling the elector hands the lease back so a standby need not wait for expiry.
    assert store.record is not None
    assert store.record.holder == ""


async def test_lead_crash_releases_and_propagates() -> None:
    clock, store = FakeClock(), MemoryStore()
    elector = LeaderElector(store, config("a"), clock)

    async def lead() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await elector.run(lead)
    assert store.record is not None
    assert store.record.holder == ""


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def get(self) -> LeaseRecord | None:
        self.calls.append("get")
        return await super().get()

    async def update(self, record: LeaseRecord) -> LeaseRecord:
        self.calls.append("update")
        return await super().update(record)


async def test_the_leader_renews_in_one_write_and_reads_again_only_when_it_fails() -> None:
    """client-go's fast path: one round trip per renewal, so a slow API server does not
    cost a leader its lease; someone else's write in between sends it back to the full
    round, which sees the other holder."""
    store, clock = CountingStore(), FakeClock()
    config = ElectionConfig("ns", "lease", "a", lease_duration=15, renew_deadline=10, retry_period=2)
    elector = LeaderElector(store, config, clock)
    assert await elector.try_acquire_or_renew()
    elector.leading = True
    store.calls.clear()
    assert await elector.try_acquire_or_renew()
    assert store.calls == ["update"]
    assert store.record is not None
    store._write(replace(store.record, holder="b"))  # another candidate took it
    store.calls.clear()
    assert not await elector.try_acquire_or_renew()
    assert store.calls == ["update", "get"]
    assert elector.state.observed is not None
    assert elector.state.observed.holder == "b"
