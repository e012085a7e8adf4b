"""Leader election between real `varmor run --roles leader` processes.

One leader is SIGKILLed in the middle of reconciling a burst of policies; the standby
must take over within the lease duration and the end state must be exact: one
ArmorProfile per policy (none lost, none duplicated), and statuses recomputed from the
ArmorNodes by the new leader; a leader after that, with no node writing, agrees with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.conftest import LEGACY, REPORT, purge_policies, quiet
from tests.helpers import Api, vpol, wait_for
from varmor import api
from varmor.dev.cluster import free_port
from varmor.kube import paths
from varmor.kube.client import ApiException
from varmor.kube.kube import Kube
from varmor.reconcile.policies import PolicyController, Settings

pytestmark = pytest.mark.cluster

LEASE = 4.0
RENEW = 3.0
RETRY = 0.5


class Leader:
    def __init__(self, identity: str, kubeconfig: str, namespace: str, log_dir: Path) -> None:
        self.identity = identity
        self.log = log_dir / f"{identity}.log"
        self.health_port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "varmor.cli",
            "run",
            "--roles=leader",
            f"--kubeconfig={kubeconfig}",
            f"--namespace={namespace}",
            "--bind-address=127.0.0.1",
            f"--health-port={self.health_port}",
            f"--metrics-port={free_port()}",
            "--lease-name=varmor-leader",
            f"--lease-duration={LEASE}",
            f"--renew-deadline={RENEW}",
            f"--retry-period={RETRY}",
            f"--leader-identity={identity}",
            "--no-leader-webhook-tasks",
            "--reconcile-workers=1",
            "--status-delay=0.05",
            "--log-level=info",
        ]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        self.proc.wait(timeout=20)

    async def up(self) -> bool:
        """The process serves /healthz; its elector starts right after."""
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", self.health_port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
async def leaders(
    api_client: Any, kubeconfig: str, namespace: str, tmp_path: Path, crds: list[str]
) -> AsyncIterator[Any]:
    started: list[Leader] = []

    def start(identity: str) -> Leader:
        proc = Leader(identity, kubeconfig, namespace, tmp_path)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        if any(proc.proc.poll() is None for proc in started):
            await purge_policies(api_client, namespace)
        for proc in started:
            proc.kill()


async def holder(kube: Kube, namespace: str) -> str:
    try:
        lease = await kube.request("GET", paths.lease_path(namespace, "varmor-leader"))
    except ApiException as exc:
        if exc.status == 404:
            return ""
        raise
    return str(lease["spec"].get("holderIdentity") or "")


@pytest.mark.parametrize("nodes", [REPORT, LEGACY], indirect=True)
async def test_failover_mid_reconcile_is_exact(api_client: Any, namespace: str, nodes: Any, leaders: Any) -> None:
    kube = Kube(api_client)
    k = Api(api_client)
    n1 = await nodes.add("n1")
    n2 = await nodes.add("n2")
    a = leaders("leader-a")
    await wait_for(lambda: _eq(holder(kube, namespace), "leader-a"), timeout=30)
    b = leaders("leader-b")
    await wait_for(b.up, timeout=30)  # a running standby, not a process still importing

    count = 40
    await asyncio.gather(*(k.create(namespace, vpol(f"p{i:02d}")) for i in range(count)))

    async def profiles_here() -> list[dict[str, Any]]:
        return [ap for ap in await k.armor_profiles() if ap["metadata"]["namespace"] == namespace]

    # Kill the leader as soon as it has made some progress, long before it is done.
    await wait_for(lambda: _at_least(profiles_here(), count // 4), timeout=30, interval=0.01)
    a.kill()
    killed_at = time.monotonic()
    at_kill = len(await profiles_here())
    assert at_kill < count, "the leader finished before it could be killed; raise `count`"

    await wait_for(lambda: _eq(holder(kube, namespace), "leader-b"), timeout=LEASE + 5, interval=0.05)
    takeover = time.monotonic() - killed_at
    assert takeover <= LEASE + 2 * RETRY + 1.0, f"takeover took {takeover:.1f}s ({b.logs()})"
    print(f"killed with {at_kill}/{count} ArmorProfiles; takeover after {takeover:.2f}s")

    # Exact end state: one ArmorProfile per policy, owned by it; nothing else.
    policies = {p["metadata"]["name"]: p["metadata"]["uid"] for p in await _policies(k, namespace)}
    aps = await wait_for(lambda: _at_least(profiles_here(), count), timeout=30)
    assert len(aps) == count
    owners = sorted(
        (ap["metadata"]["ownerReferences"][0]["name"], ap["metadata"]["ownerReferences"][0]["uid"]) for ap in aps
    )
    assert owners == sorted(policies.items())
    assert sorted(ap["metadata"]["name"] for ap in aps) == sorted(f"varmor-{namespace}-{n}" for n in policies)

    # Statuses come from the ArmorNodes alone: n1 loads everything, n2 fails one profile.
    by_name = {ap["metadata"]["name"]: ap for ap in aps}
    bad = f"varmor-{namespace}-p07"
    await nodes.load(n1, *aps)
    await nodes.report(n2, loaded=[ap for name, ap in by_name.items() if name != bad], failed=[(by_name[bad], "boom")])

    async def settled() -> list[dict[str, Any]] | None:
        items = await _policies(k, namespace)
        done = [p for p in items if (p.get("status") or {}).get("phase") in ("Protecting", "Error")]
        return items if len(done) == count else None

    final = await wait_for(settled, timeout=30)
    for pol in final:
        st = pol["status"]
        assert (st["desiredNumberLoaded"], st["observedGeneration"]) == (2, 1)
        if pol["metadata"]["name"] == "p07":
            assert (st["phase"], st["ready"], st["currentNumberLoaded"]) == ("Error", False, 1)
        else:
            assert (st["phase"], st["ready"], st["currentNumberLoaded"]) == ("Protecting", True, 2)
    assert b.proc.poll() is None, b.logs()

    # Failover again, and no node writes: the next leader computes the same for every policy.
    if nodes.fmt == REPORT:
        # Every ArmorProfile's status was written after the reports, so its resourceVersion is
        # past the watermarks: only status.specResourceVersion tells the next leader that the
        # reports cover its spec.
        marks = [int((await nodes.status(n))["watermark"]) for n in (n1, n2)]
        for ap in await profiles_here():
            assert int(ap["metadata"]["resourceVersion"]) > max(marks)
            assert int(ap["status"]["specResourceVersion"]) <= min(marks)
    b.kill()
    await same_from_a_fresh_leader(api_client, namespace, {p["metadata"]["name"]: p["status"]["ready"] for p in final})
    leaders("leader-c")  # the teardown deletes the policies through a running leader


async def same_from_a_fresh_leader(api_client: Any, namespace: str, ready: dict[str, bool]) -> None:
    """A fresh PolicyController, started on what the previous leader left, agrees on every
    policy's readiness and so writes nothing (a write would be a status it computed differently)."""
    controller = PolicyController(api_client, Settings(namespace, status_delay=0.05))
    task = asyncio.create_task(controller.run())
    try:
        await wait_for(lambda: controller.synced, timeout=30)
        await wait_for(lambda: quiet(controller), timeout=30, what="the fresh leader done with every policy")
        assert controller.kube.writes == 0, "the fresh leader changed a status the previous one had right"
        computed = {
            name: controller.loads.status(key, controller.watch.lost, lambda node: "").ready
            for key in list(controller.loads.specs)
            if key[0] == namespace and (name := key[1].removeprefix(f"varmor-{namespace}-")) in ready
        }
        assert computed == ready
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_graceful_stop_releases_the_lease(api_client: Any, namespace: str, leaders: Any, crds: list[str]) -> None:
    kube = Kube(api_client)
    a = leaders("leader-a")
    await wait_for(lambda: _eq(holder(kube, namespace), "leader-a"), timeout=30)
    b = leaders("leader-b")
    await wait_for(b.up, timeout=30)
    assert await holder(kube, namespace) == "leader-a"  # b is a standby
    a.kill(signal.SIGTERM)
    assert a.proc.returncode == 0, a.logs()
    # Released, not left to expire: the moment a has exited, the lease is no longer a's
    # (empty, or already b's), although a renewed it within the lease duration.
    assert await holder(kube, namespace) != "leader-a"
    await wait_for(lambda: _eq(holder(kube, namespace), "leader-b"), interval=0.05)


async def _policies(k: Api, namespace: str) -> list[dict[str, Any]]:
    listing = await k.custom.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.VARMOR_POLICY.plural)
    return list(listing["items"])


async def _eq(awaitable: Any, value: Any) -> bool:
    return bool((await awaitable) == value)


async def _at_least(awaitable: Any, n: int) -> Any:
    items = await awaitable
    return items if len(items) >= n else None
