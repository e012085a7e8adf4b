"""The API server misbehaves under a running varmor (the chart's processes: three nodes,
every role on each, one elected leader): it crashes mid-churn, its watches expire behind
a compaction, and priority and fairness throttles varmor's every request. Each test
breaks one thing, lets varmor recover by itself, and checks the end state
(tests/faults/converge.py) and what varmor said meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from tests import helpers
from tests.faults.converge import as_user, profile_name, wait_converged
from tests.faults.gate import proxy_to
from tests.helpers import wait_for
from tests.product import Install, installed
from varmor import api
from varmor.dev.cluster import ControlPlane

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("crds")]
G, V = api.GROUP, api.VERSION
NODES = ("fault-node-a", "fault-node-b", "fault-node-c")
AUDIT_OFTEN = ["--unprotected-audit-interval=2"]  # the leader's look at workloads admitted without a profile
RULES = ("disallow-write-core-pattern", "disallow-mount", "disallow-access-kallsyms", "disallow-umount")


@pytest.fixture
async def install(api_client: Any, kubeconfig: str, namespace: str, tmp_path: Path) -> AsyncIterator[Install]:
    async with installed(
        api_client, kubeconfig, namespace, tmp_path, topology="allinone", nodes=NODES, extra_args=AUDIT_OFTEN
    ) as inst:
        yield inst


@pytest.fixture
async def apps_ns(api_client: Any, namespace: str) -> AsyncIterator[str]:
    """The namespace the policies and workloads live in (the install has its own)."""
    core = client.CoreV1Api(api_client)
    name = f"{namespace}-apps"
    await core.create_namespace({"metadata": {"name": name}})
    try:
        yield name
    finally:
        with contextlib.suppress(ApiException):
            await core.delete_namespace(name)


def policy(name: str, rules: list[str]) -> dict[str, Any]:
    return helpers.policy(name, enhance={"hardeningRules": rules})


def template_profile(deployment: Any) -> str | None:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    found = {((c.get("securityContext") or {}).get("appArmorProfile") or {}).get("localhostProfile")
             for c in containers}  # fmt: skip
    return found.pop() if len(found) == 1 else None


async def metric_sum(install: Install, name: str, **labels: str) -> float:
    """A metric summed over varmor's processes (every process exports it)."""
    total = 0.0
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    async with aiohttp.ClientSession() as http:
        for process in install.processes:
            async with http.get(f"http://127.0.0.1:{process.metrics_port}/metrics") as response:
                text = await response.text()
            for line in text.splitlines():
                if line.startswith(name) and all(w in line for w in wanted):
                    total += float(line.rsplit(" ", 1)[1])
    return total


# -- 1. the API server crashes while policies change and workloads are admitted -----------


async def test_api_server_crash_mid_churn_loses_nothing(
    fault_plane: ControlPlane, api_client: Any, install: Install, apps_ns: str
) -> None:
    custom, apps = client.CustomObjectsApi(api_client), client.AppsV1Api(api_client)
    ns = apps_ns
    want = {f"p{i}": [RULES[i % len(RULES)]] for i in range(6)}
    for name, rules in want.items():
        await custom.create_namespaced_custom_object(G, V, ns, "varmorpolicies", policy(name, rules))
    # SIGKILL while the leader compiles and writes ArmorProfiles and the agents load them.
    await asyncio.to_thread(fault_plane.restart_apiserver, crash=True)

    # The second wave of changes goes out the moment it is back, and it crashes again
    # under them: updates, deletes and a create half-processed.
    async def change(name: str, rules: list[str]) -> None:
        current = await custom.get_namespaced_custom_object(G, V, ns, "varmorpolicies", name)
        current["spec"]["policy"]["enhanceProtect"]["hardeningRules"] = rules
        await custom.replace_namespaced_custom_object(G, V, ns, "varmorpolicies", name, current)

    for name in ("p0", "p1", "p2"):
        want[name] = [*want[name], "disallow-load-bpf-prog"]
        await as_user(lambda n=name: change(n, want[n]))  # type: ignore[misc]
    for name in ("p3", "p4"):
        del want[name]
        await as_user(lambda n=name: custom.delete_namespaced_custom_object(G, V, ns, "varmorpolicies", n))  # type: ignore[misc]
    want["p6"] = ["disallow-mount"]
    await as_user(lambda: custom.create_namespaced_custom_object(G, V, ns, "varmorpolicies", policy("p6", want["p6"])))
    await asyncio.to_thread(fault_plane.restart_apiserver, crash=True)

    # Workloads admitted while varmor is still catching up: each gets its profile, or the
    # webhook counts it as unconfined (it never leaves silently without one).
    admitted: dict[str, str | None] = {}
    for name in sorted(want):
        body = helpers.deployment(f"d-{name}", {"app": name}, replicas=0)
        created = await as_user(lambda b=body: apps.create_namespaced_deployment(ns, b))  # type: ignore[misc]
        assert created is not None
        admitted[name] = template_profile(api_client.sanitize_for_serialization(created))

    await wait_converged(api_client, install, ns, set(want))
    for name, rules in want.items():
        ap = await custom.get_namespaced_custom_object(G, V, ns, "armorprofiles", profile_name(ns, name))
        text = ap["spec"]["profile"]["appArmor"]
        assert all(f"# {rule}" in text for rule in rules), (name, rules)  # each rule's comment
    # A workload admitted before the webhook saw its policy left without the profile: the
    # webhook counts the ones whose policy it knew (unconfined), the leader's audit of
    # existing workloads the rest (the policy's unprotectedWorkloads, and its gauge).
    without = [n for n, p in admitted.items() if p != profile_name(ns, n)]
    assert all(admitted[n] is None for n in without), admitted  # never another policy's profile
    unconfined = await metric_sum(install, "varmor_admission_unconfined_total")

    async def counted() -> bool:
        unprotected = 0
        for name in without:
            pol = await custom.get_namespaced_custom_object(G, V, ns, "varmorpolicies", name)
            unprotected += (pol.get("status") or {}).get("unprotectedWorkloads", 0)
        return unconfined + unprotected >= len(without)

    await wait_for(counted, timeout=60)
    # Every agent noticed the outage and resumed its watch (the metric says so).
    assert await metric_sum(install, "varmor_watch_restarts_total", reason="error") >= len(NODES)

    # Admission after recovery: every workload gets its policy's profile.
    for name in sorted(want):
        created = await apps.create_namespaced_deployment(
            ns, helpers.deployment(f"late-{name}", {"app": name}, replicas=0)
        )
        assert template_profile(api_client.sanitize_for_serialization(created)) == profile_name(ns, name)


# -- 2. a watch resumes behind a compaction: 410 Gone, relist, converge -------------------


async def test_watch_expired_by_compaction_relists_and_converges(
    fault_plane: ControlPlane, api_client: Any, kubeconfig: str, namespace: str, apps_ns: str, tmp_path: Path
) -> None:
    """varmor reaches the API server through a proxy. Cut off, it misses a delete and an
    update; etcd is compacted past the versions its watches would resume from. Back, every
    resumed watch gets 410 Gone and relists: the delete and the update arrive that way."""
    custom = client.CustomObjectsApi(api_client)
    ns = apps_ns
    async with (
        proxy_to(fault_plane) as gate,
        installed(
            api_client,
            kubeconfig,
            namespace,
            tmp_path,
            topology="allinone",
            nodes=NODES,
            server=gate.server,
            extra_args=AUDIT_OFTEN,
        ) as install,
    ):
        for name in ("keep", "gone"):
            await custom.create_namespaced_custom_object(G, V, ns, "varmorpolicies", policy(name, ["disallow-mount"]))
        await wait_converged(api_client, install, ns, {"keep", "gone"})
        relisted = await metric_sum(install, "varmor_watch_restarts_total", reason="gone")

        gate.cut()
        await custom.delete_namespaced_custom_object(G, V, ns, "varmorpolicies", "gone")
        current = await custom.get_namespaced_custom_object(G, V, ns, "varmorpolicies", "keep")
        current["spec"]["policy"]["enhanceProtect"]["hardeningRules"] = ["disallow-mount", "disallow-umount"]
        await custom.replace_namespaced_custom_object(G, V, ns, "varmorpolicies", "keep", current)
        await asyncio.to_thread(compact, fault_plane)
        gate.open()

        await wait_converged(api_client, install, ns, {"keep"})
        ap = await custom.get_namespaced_custom_object(G, V, ns, "armorprofiles", profile_name(ns, "keep"))
        assert "disallow-umount" in ap["spec"]["profile"]["appArmor"]
        # Every process's watches came back to a compacted version and relisted (the
        # metric says so); none needed a restart.
        assert await metric_sum(install, "varmor_watch_restarts_total", reason="gone") >= relisted + len(NODES)
        assert all(p.proc.poll() is None for p in install.processes)


def compact(plane: ControlPlane) -> int:
    """Compact etcd at its current revision (the etcd v3 JSON gateway)."""

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{plane.etcd_url}{path}", data=orjson.dumps(body), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            result: dict[str, Any] = orjson.loads(response.read())
            return result

    revision = int(post("/v3/kv/range", {"key": "Lw=="})["header"]["revision"])  # key "/"
    post("/v3/kv/compaction", {"revision": revision, "physical": True})
    return revision


# -- 3. throttled, then slow: 429 with Retry-After for everything, then 1 s per response ---


async def test_throttled_then_slow_api_server_backs_off_and_converges(
    fault_plane: ControlPlane, api_client: Any, kubeconfig: str, namespace: str, apps_ns: str, tmp_path: Path
) -> None:
    """Every request of varmor's answered 429 (Retry-After: 1) for 15 s: it keeps trying at
    a bounded, jittered rate, never a hot loop, and its metrics say it is throttled. Then
    every response takes 0.4 s: it still converges, and the policies changed meanwhile
    are Ready."""
    custom = client.CustomObjectsApi(api_client)
    ns = apps_ns
    async with (
        proxy_to(fault_plane) as proxy,
        installed(
            api_client, kubeconfig, namespace, tmp_path, topology="allinone", nodes=NODES, server=proxy.server,
            extra_args=AUDIT_OFTEN,
        ) as install,
    ):  # fmt: skip
        await custom.create_namespaced_custom_object(G, V, ns, "varmorpolicies", policy("a", ["disallow-mount"]))
        await wait_converged(api_client, install, ns, {"a"})

        proxy.throttle()
        for name in ("b", "c"):
            await custom.create_namespaced_custom_object(G, V, ns, "varmorpolicies", policy(name, ["disallow-mount"]))
        await wait_for(
            lambda: proxy.throttled_at and proxy.throttled_at[-1] - proxy.throttled_at[0] >= 15,
            timeout=60,
            what="15 s of throttled requests",
        )
        seconds = proxy.throttled_at[-1] - proxy.throttled_at[0]
        rate = len(proxy.throttled_at) / seconds / len(install.processes)
        # Every role of a process retries on its own cadence (watches, the election, the
        # status writer, the audit): a few requests a second together, never a hot loop.
        print(f"throttled: {rate:.2f} requests/s per process over {seconds:.0f} s")
        assert rate < MAX_THROTTLED_RATE, f"{rate:.1f} requests/s per process while throttled"

        proxy.delay = SLOW
        proxy.open()
        await wait_converged(api_client, install, ns, {"a", "b", "c"}, timeout=180)
        assert await metric_sum(install, "varmor_api_throttled_total") > 0
        assert await metric_sum(install, "varmor_watch_restarts_total", reason="error") >= len(NODES)
        proxy.delay = 0.0


MAX_THROTTLED_RATE = 6.0
SLOW = 0.4  # seconds per response: slow, yet within the test install's 3 s renew deadline for GET + PUT
