"""The leader under two faults: node clocks far off the leader's, and a leader process
stopped past its Lease while another takes over.

Clock skew: two real agent status writers (varmor.nodeexec.status) whose wall clocks run
10 minutes ahead and 10 minutes behind heartbeat to the real leader. Both count while they
heartbeat; the one ahead stops and turns AgentLost once lost_after has passed on the
leader's clock (judged by stamps, it would have stayed "alive" for 10 minutes, and the one
behind would have been lost from the start); a new leader after failover sees the same
at once and writes nothing.

A paused leader: the chart's allinone processes (tests/product.py); the leader is stopped
with SIGSTOP past its lease, a second one takes over and writes while policies change,
and SIGCONT wakes the first. It steps down, and the audit log (each process told apart by
the Pod its token is bound to) shows it sent no write after the new leader acquired, so
none took effect."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes.aio import client

from tests.faults.audit import AuditLog, Request
from tests.helpers import Api, condition, vpol, wait_for
from tests.product import Install, Process, installed
from varmor import api
from varmor.clock import Clock, parse_time, utc_now
from varmor.dev.cluster import ControlPlane
from varmor.kube import paths
from varmor.kube.client import ApiException
from varmor.kube.kube import Kube
from varmor.loadreport import Ledger
from varmor.nodeexec.state import node_status
from varmor.nodeexec.status import StatusWriter
from varmor.reconcile.policies import PolicyController, Settings

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("crds")]

SKEW = dt.timedelta(minutes=10)
HEARTBEAT = 1.0
LOST_AFTER = 4.0


class SkewedAgent:
    """The agent's real ArmorNode writer, on a wall clock `skew` off, reporting what it loaded
    in the agent's load report (its `Ledger`, fed the ArmorProfiles the test says arrived)."""

    def __init__(self, api_client: Any, name: str, skew: dt.timedelta) -> None:
        self.name = name
        self.ledger = Ledger()
        clock: Clock = lambda: utc_now() + skew  # noqa: E731
        kube = Kube(api_client, component="agent", instance=name)
        self.writer = StatusWriter(
            kube, name, self.build, debounce=0.05, max_delay=0.2, heartbeat=HEARTBEAT, clock=clock
        )
        self.task: asyncio.Task[None] | None = None

    def build(self) -> dict[str, Any]:
        report = self.ledger.report(lambda name: None)  # whatever arrived is loaded
        return node_status(
            supported=True,
            reason="",
            parser_version="3.0.8",
            agent_version="test",
            ready=True,
            report=report,
            loaded=len(self.ledger.required),
        )

    async def start(self) -> None:
        await self.writer.ensure()
        self.task = asyncio.create_task(self.writer.run())
        self.writer.mark()

    def load(self, ap: dict[str, Any]) -> None:
        name = ap["metadata"]["name"]
        self.ledger.received((ap["metadata"]["namespace"], name), ap, deleted=False)
        self.ledger.settle(name, self.ledger.begin(name))
        self.writer.mark()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None


class Leader:
    """The leader's policy controller in this event loop (no election: one at a time)."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        settings = Settings(namespace, status_delay=0.05, resync_seconds=30.0, lost_after=LOST_AFTER)
        self.controller = PolicyController(api_client, settings)
        self.task = asyncio.create_task(self.controller.run())

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def agents(api_client: Any, namespace: str) -> AsyncIterator[dict[str, SkewedAgent]]:
    made = {
        "ahead": SkewedAgent(api_client, f"{namespace}-ahead", SKEW),
        "behind": SkewedAgent(api_client, f"{namespace}-behind", -SKEW),
    }
    try:
        for agent in made.values():
            await agent.start()
        yield made
    finally:
        kube = Kube(api_client)
        for agent in made.values():
            await agent.stop()
            with contextlib.suppress(ApiException):
                await kube.request("DELETE", paths.custom_path(api.ARMOR_NODE, name=agent.name))


@pytest.fixture
async def leaders(api_client: Any, namespace: str) -> AsyncIterator[Callable[[], Leader]]:
    started: list[Leader] = []

    def start() -> Leader:
        started.append(Leader(api_client, namespace))
        return started[-1]

    try:
        yield start
    finally:
        for leader in started:
            await leader.stop()


def lost_on(obj: dict[str, Any]) -> list[str]:
    """The nodes an ArmorProfile's status names AgentLost."""
    return [c["nodeName"] for c in (obj.get("status") or {}).get("conditions") or [] if c["reason"] == "AgentLost"]


async def test_node_clocks_ten_minutes_off_neither_hide_a_dead_agent_nor_lose_a_live_one(
    api_client: Any, namespace: str, agents: dict[str, SkewedAgent], leaders: Callable[[], Leader]
) -> None:
    k = Api(api_client)
    ahead, behind = agents["ahead"], agents["behind"]
    leader = leaders()
    await k.create(namespace, vpol("web"))
    name = f"varmor-{namespace}-web"
    ap = await wait_for(lambda: k.armor_profile(namespace, name))
    for agent in (ahead, behind):
        agent.load(ap)

    async def counted(ready: bool, lost: list[str]) -> dict[str, Any] | None:
        """The policy as the status says: `ready`, with exactly `lost` named AgentLost."""
        policy, profile = await k.get_policy(namespace, "web"), await k.armor_profile(namespace, name)
        assert profile is not None
        status, message = policy.get("status") or {}, condition(policy, "Ready").get("message", "")
        named = message.split("(AgentLost): ")[1].split(", ") if "(AgentLost): " in message else []
        if status.get("ready") is not ready or sorted(lost_on(profile)) != lost or sorted(named) != lost:
            return None  # not yet (the ArmorProfile's status is written before the policy's)
        return policy

    await wait_for(lambda: counted(True, []), timeout=60)

    # Both heartbeat, for well over lost_after: both stay counted the whole time.
    since = {agent.name: agent.writer.heartbeats for agent in (ahead, behind)}

    async def beating_and_counted() -> bool:
        status = (await k.get_policy(namespace, "web")).get("status") or {}
        counts = (status.get("desiredNumberLoaded"), status.get("currentNumberLoaded"))
        assert counts == (2, 2), f"a heartbeating agent stopped counting: {condition({'status': status}, 'Ready')}"
        return all(a.writer.heartbeats >= since[a.name] + 2 * LOST_AFTER / HEARTBEAT for a in (ahead, behind))

    await wait_for(beating_and_counted, timeout=60, interval=0.5)

    # The agent ahead dies: lost after lost_after on the leader's clock (not 10 minutes).
    await ahead.stop()
    stopped = utc_now()
    policy = await wait_for(lambda: counted(True, [ahead.name]), timeout=LOST_AFTER + 30)
    ready = condition(policy, "Ready")
    assert ready["reason"] == "AllNodesLoaded"
    assert f"(AgentLost): {ahead.name}" in ready["message"]
    assert (policy["status"]["desiredNumberLoaded"], policy["status"]["currentNumberLoaded"]) == (1, 1)
    profile = await k.armor_profile(namespace, name)
    assert profile is not None
    lost = next(c for c in profile["status"]["conditions"] if c["nodeName"] == ahead.name)
    assert "no heartbeat from the varmor agent" in lost["message"]
    turned = parse_time(lost["lastTransitionTime"])
    assert turned is not None
    # not before lost_after past its last heartbeat (at most one interval before the stop; 1 s stamps)
    assert turned >= stopped + dt.timedelta(seconds=LOST_AFTER - HEARTBEAT - 1)

    # Failover: a new leader dates what it first sees by the server's write times, so the
    # dead agent is lost from its first pass, the live one alive, and it writes nothing.
    await leader.stop()
    await wait_for(lambda: utc_now() >= stopped + dt.timedelta(seconds=LOST_AFTER + 3))  # seeding rounds 2 s
    successor = leaders().controller
    await wait_for(lambda: successor.synced and successor.watch.lost == {ahead.name}, timeout=30)
    await wait_for(lambda: k.armor_profile(namespace, name))  # a round trip: events in flight arrive
    await successor.queue.wait_idle()
    assert successor.kube.writes == 0, "the new leader changed a status the old one had right"
    assert await counted(True, [ahead.name]) is not None

    await k.delete_policy(namespace, "web")
    await wait_for(lambda: _gone(k, namespace, name), timeout=30)


async def _gone(k: Api, namespace: str, name: str) -> bool:
    return await k.armor_profile(namespace, name) is None


# -- a leader stopped past its lease --------------------------------------------------
NODES = ("fault-a", "fault-b")
READS = {"get", "list", "watch"}
# Not leader work: what the agent and the webhook in the same process write, the Lease
# (the election's own, resourceVersion-guarded), and reviews that store nothing.
NOT_LEADER = {"armornodes", "armornodes/status", "armorbehaviors", "leases", "selfsubjectreviews", "tokenreviews"}
QUIET = dt.timedelta(seconds=2)


async def lease_holder(api_client: Any, namespace: str) -> str:
    leases = await client.CoordinationV1Api(api_client).list_namespaced_lease(namespace)
    return next((lease.spec.holder_identity or "" for lease in leases.items), "")


async def metric(process: Process, name: str) -> float | None:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{process.metrics_port}/metrics") as r:
        text = await r.text()
    line = next((ln for ln in text.splitlines() if ln.startswith(name + " ")), "")
    return float(line.split()[1]) if line else None


def pod_of(process: Process) -> str:
    return f"agent-{process.name}"  # the Pod its token is bound to (tests/product.py)


def leader_writes(requests: list[Request], pod: str, after: dt.datetime) -> list[Request]:
    return [
        r
        for r in requests
        if r.pod == pod and r.verb not in READS and r.resource not in NOT_LEADER and r.received >= after
    ]


async def test_a_leader_stopped_past_its_lease_steps_down_and_none_of_its_writes_land_after_the_takeover(
    api_client: Any, kubeconfig: str, namespace: str, tmp_path: Path, fault_plane: ControlPlane
) -> None:
    """The leader is stopped between two writes (a write already on its way when a process
    is stopped is the case resourceVersion preconditions cover: docs/design.md, Fencing).
    Policies change while it sleeps, so it wakes with work queued on stale caches."""
    audit = AuditLog(fault_plane.workdir / "audit.log")
    k, core = Api(api_client), client.CoreV1Api(api_client)
    apps = f"{namespace}-apps"
    await core.create_namespace({"metadata": {"name": apps}})
    try:
        async with installed(api_client, kubeconfig, namespace, tmp_path, nodes=NODES) as inst:
            await _paused_leader(api_client, inst, k, apps, audit)
    finally:
        with contextlib.suppress(ApiException):
            await core.delete_namespace(apps)


async def _paused_leader(api_client: Any, inst: Install, k: Api, ns: str, audit: AuditLog) -> None:
    async def ready(name: str, generation: int = 1) -> bool:
        status = (await k.get_policy(ns, name)).get("status") or {}
        return status.get("ready") is True and status.get("observedGeneration") == generation

    for name in ("p0", "p1"):
        await k.create(ns, vpol(name))
    await wait_for(lambda: _all(ready("p0"), ready("p1")), timeout=60)
    paused: list[Process] = []

    async def pause_the_idle_leader() -> dt.datetime | None:
        """SIGSTOP the Lease's holder once its last write is QUIET old; None (resumed) if
        the Lease moved meanwhile (a loaded machine can make a leader miss a renewal)."""
        holder = await lease_holder(api_client, inst.namespace)
        process = next((p for p in inst.processes if p.name == holder), None)
        now = dt.datetime.now(dt.UTC)
        if process is None or leader_writes(list(audit.requests()), pod_of(process), now - QUIET):
            return None
        os.kill(process.proc.pid, signal.SIGSTOP)
        if await lease_holder(api_client, inst.namespace) != holder:
            os.kill(process.proc.pid, signal.SIGCONT)
            return None
        paused.append(process)
        return now

    stopped: dt.datetime = await wait_for(pause_the_idle_leader, timeout=60, interval=0.5)
    old = paused[0]
    new = next(p for p in inst.processes if p is not old)
    try:
        await wait_for(lambda: _holder_is(api_client, inst.namespace, new.name), timeout=30)
        # The new leader writes while the old one sleeps: a spec change, new policies, and a
        # deleted one (whose ArmorProfile the sleeper still has in its cache).
        p1 = await k.get_policy(ns, "p1")
        p1["spec"]["policy"]["enhanceProtect"]["hardeningRules"].append("disallow-access-kallsyms")
        await k.replace_policy(ns, p1)
        for name in ("p2", "p3"):
            await k.create(ns, vpol(name))
        await k.delete_policy(ns, "p0")

        async def written_by_new_leader() -> bool:
            p1 = (await k.get_policy(ns, "p1")).get("status") or {}
            p3 = (await k.get_policy(ns, "p3")).get("status") or {}
            ap = await k.armor_profile(ns, f"varmor-{ns}-p1")
            gone = await k.armor_profile(ns, f"varmor-{ns}-p0") is None
            return p1.get("observedGeneration") == 2 and bool(p3.get("profileName")) and "kallsyms" in str(ap) and gone

        await wait_for(written_by_new_leader, timeout=60)
    finally:
        resumed = dt.datetime.now(dt.UTC)
        os.kill(old.proc.pid, signal.SIGCONT)

    # It wakes and steps down: its leader work ends (it is a candidate reading the Lease
    # again, which it does only once that work is cancelled), and everything converges
    # under the new leader. Anything it sent on waking is in the audit log by then (each
    # request's record is written before its response).
    await wait_for(lambda: _stepped_down(old), timeout=30)
    try:
        await wait_for(lambda: _candidate_since(audit, old, resumed), timeout=30)
    except AssertionError as exc:  # its leader work outlived its leadership: show what it did
        raise AssertionError(f"{exc}\n{inst.logs()}") from None
    await wait_for(lambda: _all(ready("p1", 2), ready("p2"), ready("p3")), timeout=60)
    assert await lease_holder(api_client, inst.namespace) == new.name
    assert old.proc.poll() is None
    requests = list(audit.requests())
    acquired = min(
        r.received
        for r in requests
        if r.pod == pod_of(new) and r.resource == "leases" and r.verb == "update" and r.ok and r.received > stopped
    )
    assert any(r.ok for r in leader_writes(requests, pod_of(new), acquired)), "the new leader wrote nothing"
    # Stronger than "none took effect": on waking it sent none (its fence was closed), so
    # not even a write the server would refuse (409, 404) left it.
    sent = leader_writes(requests, pod_of(old), acquired)
    assert sent == [], (
        f"the stopped leader wrote after the takeover at {acquired} "
        f"(stopped {stopped}, resumed {resumed}): {sent}\n{inst.logs()}"
    )
    retaken = [r for r in requests if r.pod == pod_of(old) and r.resource == "leases" and r.verb not in READS]
    assert not [r for r in retaken if r.ok and r.received >= acquired], "the stopped leader took the Lease back"


def _candidate_since(audit: AuditLog, process: Process, since: dt.datetime) -> bool:
    return any(r.pod == pod_of(process) and r.resource == "leases" and r.received > since for r in audit.requests())


async def _all(*checks: Awaitable[bool]) -> bool:
    return all([await check for check in checks])


async def _holder_is(api_client: Any, namespace: str, name: str) -> bool:
    return await lease_holder(api_client, namespace) == name


async def _stepped_down(process: Process) -> bool:
    return await metric(process, "varmor_leader_is_leader") == 0.0
