"""Cluster-test fixtures shared by every component: simulated nodes, in-process leaders."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

import pytest

from varmor.kube import paths

JSON = dict[str, Any]


# -- leader test helpers -----------------------------------------------------------
REPORT, LEGACY = "report", "legacy"  # the ArmorNode status formats a simulated agent writes


class NodeSim:
    """Stands in for node agents: creates Node objects and writes their ArmorNode status
    the way an agent would (status subresource), in `fmt`: a load report (REPORT: a
    watermark and exceptions, what agents write now) or the earlier per-profile maps
    (LEGACY: an agent not yet upgraded, which the leader still understands). Deletes its
    Nodes afterwards (the garbage collector then removes the ArmorNodes, owned by the Nodes)."""

    def __init__(self, api_client: Any, prefix: str, fmt: str = REPORT) -> None:
        from varmor.kube.kube import Kube

        assert fmt in (REPORT, LEGACY), fmt
        self.kube = Kube(api_client)
        self.prefix = prefix
        self.fmt = fmt
        self.names: list[str] = []
        self._held: dict[str, set[str]] = {}  # node -> profile names reported loaded (status.loaded)

    def _path(self, name: str) -> str:
        from varmor import api

        return paths.custom_path(api.ARMOR_NODE, None, name)

    async def add(
        self,
        short: str,
        *,
        phase: str = "Supported",
        ready: bool = True,
        reason: str = "",
        heartbeat: bool = False,
        at: Any = None,
    ) -> str:
        """A Node with its ArmorNode; `heartbeat` adds heartbeatTime (at `at`, a datetime,
        when given: tests that drive the leader's clock write heartbeats on it)."""
        from varmor import api
        from varmor.clock import now_rfc3339

        name = f"{self.prefix}-{short}"
        node = await self.kube.request("POST", paths.core_path("nodes"), body={"metadata": {"name": name}})
        self.names.append(name)
        body = {
            "apiVersion": api.API_VERSION,
            "kind": "ArmorNode",
            "metadata": {
                "name": name,
                "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}],
            },
        }
        await self.kube.request("POST", self._path(name).rsplit("/", 1)[0], body=body)
        status: dict[str, Any] = {"phase": phase, "ready": ready, "parserVersion": "3.0.8", "agentVersion": "test"}
        if reason:
            status["reason"] = reason
        status.update({"profiles": {}, "failures": {}} if self.fmt == LEGACY else {"loaded": 0, "exceptions": {}})
        if heartbeat:  # else: an agent from before heartbeats, alive forever
            status["heartbeatTime"] = now_rfc3339(lambda: at) if at is not None else now_rfc3339()
        await self.write(name, status)
        return name

    async def beat(self, name: str, at: Any = None) -> None:
        """Renew heartbeatTime alone, as an idle agent does (at `at`, a datetime, if given)."""
        from varmor.clock import now_rfc3339
        from varmor.kube.kube import JSON_PATCH

        stamp = now_rfc3339(lambda: at) if at is not None else now_rfc3339()
        body = [{"op": "add", "path": "/status/heartbeatTime", "value": stamp}]
        await self.kube.request("PATCH", self._path(name) + "/status", body=body, content_type=JSON_PATCH)

    async def write(self, name: str, status: dict[str, Any]) -> None:
        """One status write replacing the whole status, as an agent's coalesced write."""
        from varmor.kube.kube import JSON_PATCH

        body = [{"op": "add", "path": "/status", "value": {**status, "lastUpdateTime": "2026-01-01T00:00:00Z"}}]
        await self.kube.request("PATCH", self._path(name) + "/status", body=body, content_type=JSON_PATCH)

    async def status(self, name: str) -> dict[str, Any]:
        obj = await self.kube.request("GET", self._path(name))
        result: dict[str, Any] = obj.get("status") or {}
        return result

    async def load(self, name: str, *aps: dict[str, Any]) -> None:
        """Report `aps` loaded at their current hash on node `name` (one write)."""
        await self.report(name, loaded=aps)

    async def fail(self, name: str, ap: dict[str, Any], message: str) -> None:
        """Report `ap` failed to load at its current hash on node `name`."""
        await self.report(name, failed=[(ap, message)])

    async def report(
        self,
        name: str,
        *,
        loaded: Iterable[dict[str, Any]] = (),
        failed: Iterable[tuple[dict[str, Any], str]] = (),
    ) -> None:
        """One status write: node `name` now has `loaded` and failed `failed` (ArmorProfile,
        message) at their current hashes, on top of what it reported before."""
        status, loaded, failed = await self.status(name), list(loaded), list(failed)
        if self.fmt == LEGACY:
            await self.write(name, {**status, **_legacy(status, loaded, failed)})
            return
        held = self._held.setdefault(name, set())
        held.update(ap["metadata"]["name"] for ap in loaded)
        await self.write(name, {**status, **_report(status, loaded, failed), "loaded": len(held)})

    async def cleanup(self) -> None:
        from varmor.kube.client import ApiException

        for name in self.names:
            try:
                await self.kube.request("DELETE", paths.core_path("nodes", None, name))
            except ApiException as exc:
                if exc.status != 404:
                    raise
            try:  # do not wait for the garbage collector: other tests count ArmorNodes
                await self.kube.request("DELETE", self._path(name))
            except ApiException as exc:
                if exc.status != 404:
                    raise


def _legacy(status: dict[str, Any], loaded: list[JSON], failed: list[tuple[JSON, str]]) -> JSON:
    """The earlier format: every loaded profile and every failure, by name. A failure leaves
    the version loaded before in `profiles`, as such an agent did."""
    profiles, failures = dict(status.get("profiles") or {}), dict(status.get("failures") or {})
    for ap in loaded:
        ns, prof = ap["metadata"]["namespace"], ap["spec"]["profile"]
        profiles[prof["name"]] = {"namespace": ns, "sha256": prof["sha256"], "mode": prof["mode"]}
        failures.pop(prof["name"], None)
    for ap, message in failed:
        ns, prof = ap["metadata"]["namespace"], ap["spec"]["profile"]
        failures[prof["name"]] = {"namespace": ns, "sha256": prof["sha256"], "message": message}
    return {"profiles": profiles, "failures": failures}


def _report(status: dict[str, Any], loaded: list[JSON], failed: list[tuple[JSON, str]]) -> JSON:
    """The load report: the watermark moves up to the resourceVersion of each ArmorProfile
    given (as read by the test: the version the node is to have acted on), and failures
    are exceptions, encoded as the agent encodes them."""
    from varmor.loadreport import LoadException, resource_version

    mark = resource_version(status.get("watermark")) or 0
    exceptions = dict(status.get("exceptions") or {})
    for ap in loaded:
        mark = max(mark, resource_version(ap["metadata"]["resourceVersion"]) or 0)
        exceptions.pop(ap["metadata"]["name"], None)
    for ap, message in failed:
        mark = max(mark, resource_version(ap["metadata"]["resourceVersion"]) or 0)
        ns, prof = ap["metadata"]["namespace"], ap["spec"]["profile"]
        exceptions[prof["name"]] = LoadException("Failed", ns, prof["sha256"], message).to_json()
    return {"exceptions": exceptions} | ({"watermark": str(mark)} if mark else {})


@pytest.fixture
async def nodes(request: pytest.FixtureRequest, api_client: Any, namespace: str, crds: list[str]) -> Any:
    """Simulated nodes writing load reports; `@pytest.mark.parametrize("nodes", [LEGACY],
    indirect=True)` makes them agents of the earlier format."""
    sim = NodeSim(api_client, namespace, getattr(request, "param", REPORT))
    try:
        yield sim
    finally:
        await sim.cleanup()


async def purge_policies(api_client: Any, namespace: str, timeout: float = 30.0) -> None:
    """Delete a test namespace's policies and wait for them and their ArmorProfiles to go
    (call while a leader still runs, so rollout finalizers are processed). Other tests
    assume a cluster without stray policies, and namespace deletion is asynchronous."""
    from varmor import api
    from varmor.kube.kube import Kube

    kube = Kube(api_client)
    await kube.request("DELETE", paths.custom_path(api.VARMOR_POLICY, namespace))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        left = [
            *(await kube.request("GET", paths.custom_path(api.VARMOR_POLICY, namespace)))["items"],
            *(await kube.request("GET", paths.custom_path(api.ARMOR_PROFILE, namespace)))["items"],
        ]
        if not left:
            return
        await asyncio.sleep(0.1)


class InProcessLeader:
    """The leader's reconcilers (no election) in the test's event loop."""

    def __init__(self, api_client: Any, install_namespace: str, **settings: Any) -> None:
        from varmor.reconcile.policies import PolicyController, Settings
        from varmor.reconcile.rollout import Rollouts

        opts = {"workers": 4, "resync_seconds": 30.0, "status_delay": 0.05, **settings}
        qps = opts.pop("rollout_qps", 50.0)
        clock = opts.pop("clock", None)
        extra = {"clock": clock} if clock is not None else {}
        self.controller = PolicyController(api_client, Settings(install_namespace=install_namespace, **opts), **extra)
        self.rollouts = Rollouts(self.controller, qps=qps, burst=10)
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> InProcessLeader:
        self.tasks = [asyncio.create_task(self.controller.run()), asyncio.create_task(self.rollouts.run())]
        return self

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks = []


def quiet(controller: Any) -> bool:
    """A PolicyController with nothing queued, delayed or waiting to be recounted: every
    status it computes from what it has seen is written (or found unchanged)."""
    queue, recount = controller.queue, controller._recount_timer
    return bool(queue._idle.is_set() and not queue._timers and recount is None and not controller.loads.changes)


@pytest.fixture
async def leader(api_client: Any, namespace: str, crds: list[str]) -> Any:
    """Start/stop an in-process leader; the test namespace doubles as install namespace."""
    started: list[InProcessLeader] = []

    async def start(**settings: Any) -> InProcessLeader:
        run = await InProcessLeader(api_client, namespace, **settings).start()
        started.append(run)
        return run

    try:
        yield start
    finally:
        if any(run.tasks for run in started):
            await purge_policies(api_client, namespace)
        for run in started:
            await run.stop()
