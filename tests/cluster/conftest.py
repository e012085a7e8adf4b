"""Cluster-test fixtures shared by every component: simulated nodes, in-process leaders."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from varmor.kube import paths


# -- leader test helpers -----------------------------------------------------------
class NodeSim:
    """Stands in for node agents: creates Node objects and writes their ArmorNode status
    the way an agent would (status subresource, keyed maps). Deletes its Nodes afterwards
    (the garbage collector then removes the ArmorNodes, which are owned by the Nodes)."""

    def __init__(self, api_client: Any, prefix: str) -> None:
        from varmor.kube.kube import Kube

        self.kube = Kube(api_client)
        self.prefix = prefix
        self.names: list[str] = []

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
        status["profiles"] = {}
        status["failures"] = {}
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

    async def load(self, name: str, ap: dict[str, Any]) -> None:
        """Report `ap` loaded at its current hash on node `name`."""
        status = await self.status(name)
        profiles = dict(status.get("profiles") or {})
        failures = dict(status.get("failures") or {})
        prof = ap["spec"]["profile"]
        profiles[prof["name"]] = {
            "namespace": ap["metadata"]["namespace"],
            "sha256": prof["sha256"],
            "mode": prof["mode"],
        }
        failures.pop(prof["name"], None)
        await self.write(name, {**status, "profiles": profiles, "failures": failures})

    async def fail(self, name: str, ap: dict[str, Any], message: str) -> None:
        status = await self.status(name)
        failures = dict(status.get("failures") or {})
        prof = ap["spec"]["profile"]
        failures[prof["name"]] = {
            "namespace": ap["metadata"]["namespace"],
            "sha256": prof["sha256"],
            "message": message,
        }
        await self.write(name, {**status, "failures": failures})

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


@pytest.fixture
async def nodes(api_client: Any, namespace: str, crds: list[str]) -> Any:
    sim = NodeSim(api_client, namespace)
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
