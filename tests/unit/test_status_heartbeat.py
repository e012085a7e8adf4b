"""The agent's ArmorNode writer and its heartbeat, against a recording stand-in for the
API server: every write carries heartbeatTime, an idle agent renews it alone with one
small patch per interval, and anything unusual falls back to the full status."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from varmor.kube.client import ApiException
from varmor.kube.kube import JSON_PATCH, Kube
from varmor.nodeexec.status import StatusWriter


class RecordingKube(Kube):
    """Records PATCHes; `fail` holds HTTP statuses to raise for the next PATCHes."""

    def __init__(self) -> None:
        self.patches: list[list[dict[str, Any]]] = []
        self.fail: list[int] = []
        self.writes = 0
        self.latency = 0.0  # seconds each PATCH takes (a busy API server)
        self.started: list[float] = []  # loop time each full-status PATCH began

    async def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        if method == "PATCH":
            assert path.endswith("/status")
            assert kwargs["content_type"] == JSON_PATCH
            if self.fail:
                raise ApiException(status=self.fail.pop(0), reason="test")
            if kwargs["body"][0]["path"] == "/status":
                self.started.append(asyncio.get_running_loop().time())
            await asyncio.sleep(self.latency)
            self.patches.append(kwargs["body"])
        return {}

    def heartbeats(self) -> list[list[dict[str, Any]]]:
        return [p for p in self.patches if p[0]["path"] == "/status/heartbeatTime"]

    def full(self) -> list[list[dict[str, Any]]]:
        return [p for p in self.patches if p[0]["path"] == "/status"]


def profiles(n: int) -> dict[str, Any]:
    return {f"varmor-ns-p{i:03d}": {"namespace": "ns", "sha256": "a" * 64, "mode": "enforce"} for i in range(n)}


class Node:
    def __init__(self, heartbeat: float) -> None:
        self.kube = RecordingKube()
        self.status: dict[str, Any] = {"phase": "Supported", "ready": True, "profiles": profiles(200)}
        ticks = itertools.count()
        self.writer = StatusWriter(
            self.kube,
            "node-1",
            lambda: dict(self.status),
            debounce=0.01,
            max_delay=0.05,
            heartbeat=heartbeat,
            clock=lambda: f"2026-01-01T00:00:{next(ticks) % 60:02d}Z",
        )


@contextlib.asynccontextmanager
async def running(heartbeat: float) -> AsyncIterator[Node]:
    node = Node(heartbeat)
    task = asyncio.create_task(node.writer.run())
    try:
        yield node
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_idle_agent_writes_one_small_heartbeat_per_interval() -> None:
    async with running(heartbeat=0.1) as node:
        node.writer.mark()
        await asyncio.sleep(0.58)  # first write after ~0.01 s, then beats at ~0.11 .. 0.51
    full, beats = node.kube.full(), node.kube.heartbeats()
    assert len(full) == 1
    assert full[0][0]["value"]["heartbeatTime"] == full[0][0]["value"]["lastUpdateTime"]
    assert full[0][0]["value"]["profiles"] == profiles(200)
    assert len(beats) in (4, 5)  # never more than one per interval (4: a slow scheduler)
    assert node.writer.writes == 1 + len(beats)
    assert node.writer.heartbeats == len(beats)
    # One op, one field, the maps are never resent: ~70 bytes against ~25 kB for the full status.
    assert all(len(b) == 1 and b[0]["op"] == "add" for b in beats)
    assert max(len(orjson.dumps(b)) for b in beats) < 80
    assert len(orjson.dumps(full[0])) > 20_000
    assert len({b[0]["value"] for b in beats}) == len(beats)  # the time moves


async def test_a_status_write_is_the_heartbeat() -> None:
    """While the status keeps changing, no separate heartbeat is needed."""
    async with running(heartbeat=0.15) as node:
        node.writer.mark()
        for i in range(6):
            await asyncio.sleep(0.06)
            node.status = {**node.status, "profiles": profiles(i + 1)}
            node.writer.mark()
        await asyncio.sleep(0.1)
    assert node.kube.heartbeats() == []
    assert all("heartbeatTime" in p[0]["value"] for p in node.kube.full())


async def test_heartbeat_zero_writes_no_heartbeat_at_all() -> None:
    async with running(heartbeat=0) as node:
        node.writer.mark()
        await asyncio.sleep(0.2)
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
    assert [p[0]["value"]["ready"] for p in node.kube.full()] == [True, False]


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
    assert node.writer._until_beat() is None  # no busy heartbeat loop once gone


async def test_heartbeat_retries_after_an_error() -> None:
    async with running(heartbeat=0.05) as node:
        node.writer.mark()
        await asyncio.sleep(0.03)
        node.kube.fail = [500]
        await asyncio.sleep(0.75)  # beat fails at ~0.06, full write after the 0.5 s backoff
    assert len(node.kube.full()) == 2
    assert len(node.kube.heartbeats()) >= 2


async def test_writes_pace_themselves_to_a_slow_api_server() -> None:
    """Each full write waits `pace` x the previous write's duration after it: a queueing
    API server gets fewer, larger writes; a quick one sees only the debounce."""
    async with running(heartbeat=0) as node:
        node.kube.latency = 0.1  # answers in 100 ms: the next write waits >= 200 ms after it
        for i in range(12):
            node.status["profiles"] = profiles(i + 1)
            node.writer.mark()
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.6)
        starts = node.kube.started
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert all(gap >= 0.1 + 0.2 - 0.02 for gap in gaps), gaps  # latency + pace x latency
        assert len(starts) <= 4  # 0.6 s of changes, not one write per change
        assert node.kube.full()[-1][0]["value"]["profiles"] == profiles(12)  # nothing lost
        assert node.writer.writes == len(starts)

    paused = REGISTRY.get_sample_value("varmor_agent_status_pacing_seconds_total") or 0.0
    assert paused > 0
    async with running(heartbeat=0) as node:  # a quick API server: debounce only, no pause
        for i in range(3):
            node.status["profiles"] = profiles(i + 1)
            node.writer.mark()
            await asyncio.sleep(0.1)
        assert len(node.kube.started) == 3
    assert REGISTRY.get_sample_value("varmor_agent_status_pacing_seconds_total") == paused
