"""The agent's ArmorNode writer (`varmor/nodeexec/status.py`) and its heartbeat, against a
recording stand-in for the API server and a manual clock: every write carries
heartbeatTime, the first write sets the whole status and later ones merge-patch what
changed, an idle agent renews heartbeatTime alone with one small patch per interval,
anything unusual falls back to the full status, and writes pace themselves to a slow API
server.

No real time passes: the writer's waits go through `ManualClock.sleep`, each step advances
the clock by a fixed amount, and assertions are on exact counts at fixed readings."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from tests.helpers import ManualClock, settle, wait_for
from varmor.kube.backoff import Backoff
from varmor.kube.client import ApiException
from varmor.kube.kube import JSON_PATCH, MERGE_PATCH, Kube
from varmor.nodeexec.status import StatusWriter


class RecordingKube(Kube):
    """Records PATCHes (a JSON patch is a list, a merge patch a dict); `fail` holds HTTP
    statuses to raise for the next PATCHes; each PATCH takes `latency` seconds on the
    manual clock (a busy API server)."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.patches: list[Any] = []
        self.fail: list[int] = []
        self.latency = 0.0
        self.started: list[float] = []  # clock time each status write (not heartbeat) began

    async def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        if method == "PATCH":
            assert path.endswith("/status")
            body = kwargs["body"]
            assert kwargs["content_type"] == (JSON_PATCH if isinstance(body, list) else MERGE_PATCH)
            if self.fail:
                raise ApiException(status=self.fail.pop(0), reason="test")
            if isinstance(body, dict) or body[0]["path"] == "/status":
                self.started.append(self.clock.monotonic())
            await self.clock.sleep(self.latency)
            self.patches.append(body)
        return {}

    def heartbeats(self) -> list[list[dict[str, Any]]]:
        return [p for p in self.patches if isinstance(p, list) and p[0]["path"] == "/status/heartbeatTime"]

    def full(self) -> list[list[dict[str, Any]]]:
        return [p for p in self.patches if isinstance(p, list) and p[0]["path"] == "/status"]

    def merges(self) -> list[dict[str, Any]]:
        return [p for p in self.patches if isinstance(p, dict)]

    def writes(self) -> list[dict[str, Any]]:
        """Every status write, as the status fields it sent."""
        return [
            p["status"] if isinstance(p, dict) else p[0]["value"]
            for p in self.patches
            if p in self.full() or isinstance(p, dict)
        ]


def profiles(n: int) -> dict[str, Any]:
    return {f"varmor-ns-p{i:03d}": {"namespace": "ns", "sha256": "a" * 64, "mode": "enforce"} for i in range(n)}


DEBOUNCE = 0.01


class Node:
    def __init__(self, heartbeat: float, **kw: Any) -> None:
        self.clock = ManualClock()
        self.kube = RecordingKube(self.clock)
        self.status: dict[str, Any] = {"phase": "Supported", "ready": True, "profiles": profiles(200)}
        self.writer = StatusWriter(
            self.kube,
            "node-1",
            lambda: dict(self.status),
            debounce=DEBOUNCE,
            max_delay=0.05,
            heartbeat=heartbeat,
            clock=self.clock.now,
            monotonic=self.clock.monotonic,
            sleep=self.clock.sleep,
            backoff=Backoff(jitter=0),
            **kw,
        )
        self.task: asyncio.Task[None] | None = None

    def change(self, **status: Any) -> None:
        self.status = {**self.status, **status}
        self.writer.mark()

    async def parked(self) -> list[float]:
        """Wait until the writer is parked on a timer; return the pending deadlines."""
        await settle()
        return await wait_for(self.clock.sleepers, timeout=10, interval=0.01, what="the writer parked on a timer")

    async def step(self, seconds: float) -> None:
        """Advance the clock and let the writer run until it is idle again."""
        self.clock.advance(seconds)
        await settle()


@contextlib.asynccontextmanager
async def running(heartbeat: float, **kw: Any) -> AsyncIterator[Node]:
    node = Node(heartbeat, **kw)
    node.task = asyncio.create_task(node.writer.run())
    try:
        yield node
    finally:
        node.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await node.task


# -- the pure decisions, at fixed readings ---------------------------------------------------


async def test_heartbeat_is_due_one_interval_after_the_last_write() -> None:
    node = Node(heartbeat=10)
    writer, clock = node.writer, node.clock
    assert writer.until_beat(clock.t) is None  # nothing written yet: the first write is the full status
    await writer.flush()  # at t=1000
    assert writer.until_beat(1000.0) == 10.0
    assert writer.until_beat(1009.5) == 0.5
    assert writer.until_beat(1010.0) == 0.0  # due
    assert writer.until_beat(1013.0) == 0.0  # overdue is due, never negative
    clock.advance(10)
    await writer.beat()  # at t=1010: renewed; the next is one interval later
    assert writer.until_beat(1010.0) == 10.0
    assert writer.until_beat(1019.9) == pytest.approx(0.1)
    clock.advance(4)
    node.status["ready"] = False
    await writer.flush()  # at t=1014: a full write is a heartbeat too
    assert writer.until_beat(1014.0) == 10.0
    assert writer.until_beat(1020.0) == 4.0


async def test_heartbeat_zero_is_never_due() -> None:
    node = Node(heartbeat=0)
    await node.writer.flush()
    assert [node.writer.until_beat(node.clock.t + s) for s in (0, 1, 3600)] == [None, None, None]
    assert "heartbeatTime" not in node.kube.patches[0][0]["value"]


async def test_pause_is_pace_times_the_last_write_duration() -> None:
    node = Node(heartbeat=0, pace=2.0, max_pause=0.5)
    writer, clock = node.writer, node.clock
    assert writer.pause(clock.t) == 0.0  # nothing written yet
    node.kube.latency = 0.1
    flushing = asyncio.create_task(writer.flush())  # starts at t=1000, takes 0.1 s
    await node.parked()
    clock.advance(0.1)
    assert await flushing
    assert writer.pause(1000.1) == pytest.approx(0.2)  # 2 x 0.1 s after the write ended
    assert writer.pause(1000.25) == pytest.approx(0.05)
    assert writer.pause(1000.3) == pytest.approx(0.0, abs=1e-9)
    node.kube.latency = 1.0
    node.status["ready"] = False
    flushing = asyncio.create_task(writer.flush())
    await node.parked()
    clock.advance(1.0)
    assert await flushing
    assert writer.pause(clock.t) == 0.5  # capped at max_pause
    assert Node(heartbeat=0, pace=0).writer.pause(0.0) == 0.0  # pacing off


# -- the run loop, on the manual clock -------------------------------------------------------


async def test_idle_agent_writes_one_small_heartbeat_per_interval() -> None:
    async with running(heartbeat=1.0) as node:
        node.writer.mark()
        assert await node.parked() == [node.clock.t + DEBOUNCE]  # debouncing
        await node.step(DEBOUNCE)  # quiet: the full status goes out
        assert len(node.kube.full()) == 1
        written = node.clock.t
        for i in range(1, 6):
            assert await node.parked() == [written + i]  # the next beat, one interval after the last write
            await node.step(0.99)  # not yet due: nothing written
            assert len(node.kube.heartbeats()) == i - 1
            await node.step(0.01)  # due: exactly one heartbeat
            assert len(node.kube.heartbeats()) == i
    full, beats = node.kube.full(), node.kube.heartbeats()
    assert len(full) == 1
    assert full[0][0]["value"]["heartbeatTime"] == full[0][0]["value"]["lastUpdateTime"]
    assert full[0][0]["value"]["profiles"] == profiles(200)
    assert node.writer.writes == 1 + len(beats) == 6
    assert node.writer.heartbeats == len(beats)
    # One op, one field, the maps are never resent: ~70 bytes against ~25 kB for the full status.
    assert all(len(b) == 1 and b[0]["op"] == "add" for b in beats)
    assert max(len(orjson.dumps(b)) for b in beats) < 80
    assert len(orjson.dumps(full[0])) > 20_000
    # The time written moves with the clock: one interval apart.
    assert [b[0]["value"] for b in beats] == [f"2026-01-01T00:00:0{i}Z" for i in range(1, 6)]


async def test_a_status_write_is_the_heartbeat() -> None:
    """While the status keeps changing, no separate heartbeat is needed: each full write
    carries heartbeatTime and moves the next beat one interval later."""
    async with running(heartbeat=0.15) as node:
        node.writer.mark()
        await node.parked()
        await node.step(DEBOUNCE)
        for i in range(6):  # a change every 0.1 s, each written after the debounce
            assert await node.parked() == [pytest.approx(node.clock.t + 0.15)]
            await node.step(0.09)
            node.change(profiles=profiles(i + 1))
            await node.parked()
            await node.step(DEBOUNCE)
            assert len(node.kube.writes()) == i + 2
    assert node.kube.heartbeats() == []
    assert len(node.kube.full()) == 1  # then only what changed
    assert all("heartbeatTime" in w for w in node.kube.writes())


async def test_heartbeat_zero_writes_no_heartbeat_at_all() -> None:
    async with running(heartbeat=0) as node:
        node.writer.mark()
        await node.parked()
        await node.step(DEBOUNCE)
        assert len(node.kube.patches) == 1
        assert node.clock.sleepers() == []  # parked on changes alone: no timer to fire a beat
        await node.step(3600)
    assert len(node.kube.patches) == 1
    assert "heartbeatTime" not in node.kube.patches[0][0]["value"]


async def test_pending_change_turns_the_beat_into_the_full_write() -> None:
    node = Node(heartbeat=60)
    await node.writer.flush()
    node.status = {**node.status, "ready": False}
    await node.writer.beat()  # nothing sent: the change goes out as the next full write
    assert node.kube.heartbeats() == []
    assert node.writer._dirty.is_set()
    await node.writer.flush()
    assert [w["ready"] for w in node.kube.writes()] == [True, False]


async def test_failed_heartbeat_on_missing_status_falls_back_to_the_full_status() -> None:
    """422: the ArmorNode's status is gone. The next write resends it all."""
    node = Node(heartbeat=60)
    await node.writer.flush()
    node.kube.fail = [422]
    with pytest.raises(ApiException):
        await node.writer.beat()
    assert await node.writer.flush()  # unchanged status, yet written again in full
    assert len(node.kube.full()) == 2


@pytest.mark.parametrize("via", ["beat", "flush"])
async def test_deleted_armornode_is_not_recreated_by_a_running_agent(via: str) -> None:
    """404: deleted under us (the uninstall hook). Recreating it would leave it behind for
    good, so writes stop until the agent restarts."""
    node = Node(heartbeat=60)
    ensured: list[bool] = []

    async def ensure() -> None:
        ensured.append(True)

    node.writer.ensure = ensure  # type: ignore[method-assign]
    await node.writer.flush()
    node.kube.fail = [404]
    if via == "beat":
        await node.writer.beat()
    else:
        node.status = {**node.status, "ready": False}
        assert not await node.writer.flush()
    assert node.writer.gone
    assert ensured == []
    node.status = {**node.status, "ready": True, "profiles": {}}
    assert not await node.writer.flush()
    await node.writer.beat()
    assert len(node.kube.full()) == 1
    assert node.writer.until_beat(node.clock.t + 3600) is None  # no busy heartbeat loop once gone


async def test_heartbeat_retries_after_an_error() -> None:
    """A failed heartbeat is retried after the backoff, as the full status."""
    async with running(heartbeat=0.05) as node:
        node.writer.mark()
        await node.parked()
        await node.step(DEBOUNCE)
        assert len(node.kube.full()) == 1
        node.kube.fail = [500]
        await node.parked()
        await node.step(0.05)  # the beat fails: back off 0.5 s (Backoff(jitter=0): base)
        assert await node.parked() == [pytest.approx(node.clock.t + 0.5)]
        await node.step(0.49)
        assert node.kube.patches == node.kube.full()
        assert len(node.kube.full()) == 1
        await node.step(0.01)  # retried: the full status (the beat's failure may mean no status)
        await node.step(DEBOUNCE)
        assert len(node.kube.full()) == 2
        for i in (1, 2):
            await node.parked()
            await node.step(0.05)
            assert len(node.kube.heartbeats()) == i


async def test_writes_pace_themselves_to_a_slow_api_server() -> None:
    """Each full write waits `pace` x the previous write's duration after it: a queueing
    API server gets fewer, larger writes; a quick one sees only the debounce."""
    async with running(heartbeat=0) as node:
        node.kube.latency = 0.1  # answers in 100 ms: the next write waits 200 ms after it
        for i in range(12):  # a change every 0.05 s for 0.6 s
            node.change(profiles=profiles(i + 1))
            await node.parked()
            await node.step(0.05)
        while node.clock.sleepers():  # let the last write through
            await node.step(0.05)
        starts = node.kube.started
        gaps = [round(b - a, 6) for a, b in itertools.pairwise(starts)]
        assert gaps
        assert all(gap >= 0.1 + 0.2 - 1e-9 for gap in gaps), gaps  # latency + pace x latency
        assert len(starts) <= 4  # 0.6 s of changes, not one write per change
        assert node.kube.writes()[-1]["profiles"] == profiles(12)  # nothing lost
        assert node.writer.writes == len(starts)

    paused = REGISTRY.get_sample_value("varmor_agent_status_pacing_seconds_total") or 0.0
    assert paused > 0
    async with running(heartbeat=0) as node:  # a quick API server: debounce only, no pause
        for i in range(3):
            node.change(profiles=profiles(i + 1))
            await node.parked()
            await node.step(0.1)
        assert len(node.kube.started) == 3
    assert REGISTRY.get_sample_value("varmor_agent_status_pacing_seconds_total") == paused
