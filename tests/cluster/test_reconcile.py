"""Policy -> ArmorProfile -> node reports -> Ready, on the real API server.

Nodes are simulated: Node objects plus ArmorNode status written the way an agent would.
The leader's reconcilers run in-process (no election; tests/cluster/test_reconcile_election.py runs
real `varmor run --roles leader` processes).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException
from prometheus_client import REGISTRY

from tests.cluster.conftest import LEGACY, REPORT, purge_policies
from tests.helpers import Api, armor_profile, condition, slow_rule, vpol, wait_for
from varmor import api, parser
from varmor.parser import CompileBudget

pytestmark = pytest.mark.cluster


@pytest.fixture
def k(api_client: Any) -> Api:
    return Api(api_client)


@pytest.mark.parametrize("nodes", [REPORT, LEGACY], indirect=True)
async def test_policy_lifecycle(k: Api, namespace: str, nodes: Any, leader: Any) -> None:
    """Counts, Ready, LoadFailed and recovery from simulated nodes, in both ArmorNode
    formats: load reports, and the earlier per-profile maps (agents not yet upgraded)."""
    n1 = await nodes.add("n1")
    n2 = await nodes.add("n2")
    n3 = await nodes.add("n3", phase="Unsupported", reason="AppArmor is not enabled in the kernel")
    await leader()
    await k.create(namespace, vpol("web"))
    profile = f"varmor-{namespace}-web"

    ap = await wait_for(lambda: k.armor_profile(namespace, profile))
    owner = ap["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("VarmorPolicy", "web", True)
    text = ap["spec"]["profile"]["appArmor"]
    assert ap["spec"]["profile"]["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert f"profile {profile}" in text
    assert ap["spec"]["target"] == {"kind": "Deployment", "selector": {"matchLabels": {"app": "web"}}}

    async def status() -> dict[str, Any]:
        return await k.get_policy(namespace, "web")

    pol = await wait_for(lambda: _having(status, lambda p: condition(p, "Ready").get("reason") == "Loading"))
    assert pol["status"]["profileName"] == profile
    assert pol["status"]["phase"] == "Pending"
    assert (pol["status"]["desiredNumberLoaded"], pol["status"]["currentNumberLoaded"]) == (2, 0)
    assert pol["status"]["observedGeneration"] == 1

    await nodes.load(n1, ap)
    await wait_for(lambda: _having(status, lambda p: p["status"].get("currentNumberLoaded") == 1))
    await nodes.load(n2, ap)
    pol = await wait_for(lambda: _having(status, lambda p: p["status"].get("ready") is True))
    assert pol["status"]["phase"] == "Protecting"
    ready = condition(pol, "Ready")
    assert ready["reason"] == "AllNodesLoaded"
    assert n3 in ready["message"]  # the Unsupported node is named but does not block
    ap = await k.armor_profile(namespace, profile)
    assert ap is not None
    assert ap["status"]["desiredNumberLoaded"] == 2
    assert ap["status"]["currentNumberLoaded"] == 2
    assert [(c["nodeName"], c["reason"]) for c in ap["status"]["conditions"]] == [(n3, "Unsupported")]

    # Update: new content hash. Until the nodes report it: Loading (a load report proves
    # nothing about content newer than its watermark), or Stale (an earlier-format node
    # names the old content it still holds).
    body = copy.deepcopy(pol)
    body["spec"]["policy"]["enhanceProtect"]["hardeningRules"].append("disallow-mount")
    await k.replace_policy(namespace, body)
    new_ap = await wait_for(
        lambda: _having(
            lambda: k.armor_profile(namespace, profile),
            lambda a: a["spec"]["profile"]["sha256"] != ap["spec"]["profile"]["sha256"],
        )
    )
    waiting = "Stale" if nodes.fmt == LEGACY else "Loading"
    pol = await wait_for(lambda: _having(status, lambda p: condition(p, "Ready").get("reason") == waiting))
    assert pol["status"]["observedGeneration"] == 2
    assert pol["status"]["ready"] is False
    await nodes.load(n1, new_ap)
    await nodes.fail(n2, new_ap, "apparmor_parser: Syntax error in line 7")
    pol = await wait_for(lambda: _having(status, lambda p: p["status"].get("phase") == "Error"))
    assert condition(pol, "Ready")["reason"] == "LoadFailed"
    assert "Syntax error in line 7" in condition(pol, "Ready")["message"]
    await nodes.load(n2, new_ap)
    await wait_for(lambda: _having(status, lambda p: p["status"].get("phase") == "Protecting"))

    reasons = await wait_for(lambda: _events_with(k, namespace, "web", {"ProfileCreated", "AllNodesLoaded"}))
    assert "ProfileUpdated" in reasons
    assert "LoadFailed" in reasons

    # Only one ArmorProfile for this policy, ever.
    assert [a["metadata"]["name"] for a in await k.armor_profiles() if a["metadata"]["namespace"] == namespace] == [
        profile
    ]
    await k.delete_policy(namespace, "web")
    await wait_for(lambda: _is_none(k.armor_profile(namespace, profile)))


async def test_cluster_policy_lifecycle(k: Api, namespace: str, nodes: Any, leader: Any) -> None:
    n1 = await nodes.add("n1")
    await leader()
    name = f"c-{namespace}"
    await k.create(None, vpol(name, kind="VarmorClusterPolicy"))
    try:
        profile = f"varmor-cluster-{namespace}-{name}"
        ap = await wait_for(lambda: k.armor_profile(namespace, profile))  # install namespace
        assert ap["metadata"]["ownerReferences"][0]["kind"] == "VarmorClusterPolicy"
        await nodes.load(n1, ap)

        async def ready() -> Any:
            pol = await k.get_policy(None, name)
            return pol if (pol.get("status") or {}).get("ready") else None

        pol = await wait_for(ready)
        assert pol["status"]["profileName"] == profile
        reasons = await wait_for(lambda: _events_with(k, "default", name, {"ProfileCreated"}))
        assert "AllNodesLoaded" in reasons
    finally:
        await k.delete_policy(None, name)
    await wait_for(lambda: _is_none(k.armor_profile(namespace, profile)))


async def test_invalid_policy_gets_error_and_event_then_recovers(
    k: Api, namespace: str, nodes: Any, leader: Any
) -> None:
    n1 = await nodes.add("n1")
    await leader()
    # Valid for the CRD, invalid for varmor's deeper checks (raw rules are parsed).
    bad = vpol("raw")
    bad["spec"]["policy"]["enhanceProtect"]["appArmorRawRules"] = [{"rules": "#include <abstractions/base>"}]
    await k.create(namespace, bad)

    async def pol() -> dict[str, Any]:
        return await k.get_policy(namespace, "raw")

    got = await wait_for(lambda: _having(pol, lambda p: (p.get("status") or {}).get("phase") == "Error"))
    created = condition(got, "Created")
    assert (created["status"], created["reason"]) == ("False", "Invalid")
    assert "appArmorRawRules" in created["message"]
    assert "profileName" not in got["status"]
    assert await k.armor_profile(namespace, f"varmor-{namespace}-raw") is None
    await wait_for(lambda: _events_with(k, namespace, "raw", {"Invalid"}))

    # A name whose profile name would exceed 63 characters: rejected, never truncated.
    long_name = "x" * (63 - len(f"varmor-{namespace}-") + 1)
    await k.create(namespace, vpol(long_name))
    got = await wait_for(
        lambda: _having(
            lambda: k.get_policy(namespace, long_name), lambda p: (p.get("status") or {}).get("phase") == "Error"
        )
    )
    assert "63" in condition(got, "Created")["message"]

    # Fixing the spec recovers without intervention.
    fixed = await pol()
    fixed["spec"]["policy"]["enhanceProtect"]["appArmorRawRules"] = [{"rules": "deny /etc/shadow r,"}]
    await k.replace_policy(namespace, fixed)
    ap = await wait_for(lambda: k.armor_profile(namespace, f"varmor-{namespace}-raw"))
    await nodes.load(n1, ap)
    got = await wait_for(lambda: _having(pol, lambda p: p["status"].get("ready") is True))
    assert condition(got, "Created")["status"] == "True"


async def test_profile_name_collision(k: Api, api_client: Any, namespace: str, nodes: Any, leader: Any) -> None:
    """`<ns>-x` + policy `y` and `<ns>` + policy `x-y` made one vArmor name; each gets its own
    now (api.profile_name). The leader's check stays the backstop for names the scheme cannot
    see: an ArmorProfile of no policy holding a policy's name sends that policy to Error."""
    core = client.CoreV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    other_ns = f"{namespace}-x"
    await core.create_namespace({"metadata": {"name": other_ns, "labels": {"varmor-test": "true"}}})
    try:
        await nodes.add("n1")
        await leader()
        await k.create(namespace, vpol("x-y"))
        await k.create(other_ns, vpol("y"))
        first = api.profile_name(namespace, "x-y", namespace)  # the test namespace is the install namespace
        assert first != f"varmor-{namespace}-x-y"
        await wait_for(lambda: k.armor_profile(namespace, first))
        await wait_for(lambda: k.armor_profile(other_ns, f"varmor-{namespace}-x-y"))
        # The backstop: a hand-made ArmorProfile squatting a policy's name.
        squat = f"varmor-{namespace}-z"
        body = armor_profile(squat, namespace, "profile " + squat + " {}\n")
        await custom.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.ARMOR_PROFILE.plural, body)
        await k.create(namespace, vpol("z"))

        async def loser() -> dict[str, Any]:
            return await k.get_policy(namespace, "z")

        got = await wait_for(lambda: _having(loser, lambda p: (p.get("status") or {}).get("phase") == "Error"))
        created = condition(got, "Created")
        assert created["reason"] == "ProfileNameConflict"
        assert "unowned ArmorProfile" in created["message"]
        assert "profileName" not in got["status"]
        await wait_for(lambda: _events_with(k, namespace, "z", {"ProfileNameConflict"}))
    finally:
        await purge_policies(api_client, other_ns)  # the leader still runs here
        await core.delete_namespace(other_ns)
        with contextlib.suppress(ApiException):  # owned by no policy: the teardown's purge would wait for it
            await custom.delete_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.ARMOR_PROFILE.plural, f"varmor-{namespace}-z"
            )


async def test_garbage_collector_deletes_profile_while_varmor_is_down(
    k: Api, namespace: str, nodes: Any, leader: Any
) -> None:
    await nodes.add("n1")
    run = await leader()
    await k.create(namespace, vpol("gc"))
    profile = f"varmor-{namespace}-gc"
    await wait_for(lambda: k.armor_profile(namespace, profile))
    await run.stop()  # no leader from here on
    await k.delete_policy(namespace, "gc")
    await wait_for(lambda: _is_none(k.armor_profile(namespace, profile)), timeout=60)


async def test_new_leader_deletes_profiles_orphaned_while_down(k: Api, namespace: str, nodes: Any, leader: Any) -> None:
    """The leader's own sweep (GC would also do it; this does not wait for it)."""
    await nodes.add("n1")
    run = await leader()
    await k.create(namespace, vpol("orphan"))
    profile = f"varmor-{namespace}-orphan"
    await wait_for(lambda: k.armor_profile(namespace, profile))
    await run.stop()

    async def orphaned() -> bool:
        """Re-point the owner reference at a policy uid that never existed (as if deleted).
        Re-read each try: a status write the stopped leader had in flight may still land."""
        ap = await k.armor_profile(namespace, profile)
        ap["metadata"]["ownerReferences"][0]["uid"] = "00000000-0000-0000-0000-000000000000"
        try:
            await k.custom.replace_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.ARMOR_PROFILE.plural, profile, ap
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
            return False
        return True

    await wait_for(orphaned)
    await leader()
    # The stale profile goes, and the live policy gets a fresh one owned by it.
    policy = await k.get_policy(namespace, "orphan")

    async def reowned() -> bool:
        got = await k.armor_profile(namespace, profile)
        return got is not None and got["metadata"]["ownerReferences"][0]["uid"] == policy["metadata"]["uid"]

    await wait_for(reowned, timeout=60)


def _raw(name: str, rules: str) -> dict[str, Any]:
    body = vpol(name)
    body["spec"]["policy"]["enhanceProtect"]["appArmorRawRules"] = [{"rules": rules}]
    return body


async def test_slow_compile_never_delays_another_policy(
    k: Api, api_client: Any, namespace: str, nodes: Any, leader: Any
) -> None:
    """Causal: the fast policy in another namespace is Ready while the slow policy's compile
    is still running (the gate and the gauge say so at that moment)."""
    n1 = await nodes.add("n1")
    run = await leader(budget=CompileBudget(cpu_seconds=600, memory_mib=4096))
    gate = run.controller.compiles
    core = client.CoreV1Api(api_client)
    other = f"{namespace}-b"
    await core.create_namespace({"metadata": {"name": other}})
    try:
        await k.create(namespace, _raw("slow", slow_rule(24)))
        await wait_for(lambda: list(gate.running.values()) == ["full"])  # past the probe, on the full budget
        await k.create(other, vpol("fast"))
        ap = await wait_for(lambda: k.armor_profile(other, f"varmor-{other}-fast"))
        await nodes.load(n1, ap)
        await wait_for(lambda: _having(lambda: k.get_policy(other, "fast"), lambda p: p["status"].get("ready")))
        assert list(gate.running.values()) == ["full"]  # the slow compile is still running now
        assert REGISTRY.get_sample_value("varmor_leader_compiles_running", {"lane": "full"}) == 1
        assert await k.armor_profile(namespace, f"varmor-{namespace}-slow") is None
        assert "status" not in await k.get_policy(namespace, "slow")  # no verdict yet, nothing written
        pids = set(parser.RUNNING)
        assert pids
    finally:
        await k.delete_policy(other, "fast")
        await wait_for(lambda: _is_none(k.armor_profile(other, f"varmor-{other}-fast")))
        await core.delete_namespace(other)
    await run.stop()  # losing the lease cancels the compile, and its parser dies with it
    await wait_for(lambda: not pids & parser.RUNNING and all(_gone(pid) for pid in pids))
    assert REGISTRY.get_sample_value("varmor_leader_compiles_running", {"lane": "full"}) == 0


async def test_over_budget_policy_gets_error_and_no_profile(k: Api, namespace: str, nodes: Any, leader: Any) -> None:
    await nodes.add("n1")
    await leader(budget=CompileBudget(cpu_seconds=1))

    def errored(name: str) -> Callable[[], Awaitable[Any]]:
        get = lambda: k.get_policy(namespace, name)  # noqa: E731
        return lambda: _having(get, lambda p: (p.get("status") or {}).get("phase") == "Error")

    await k.create(namespace, _raw("slow", slow_rule()))
    pol = await wait_for(errored("slow"))
    created = condition(pol, "Created")
    assert created["reason"] == "CompileBudgetExceeded"
    assert "1 CPU-seconds" in created["message"]
    assert await k.armor_profile(namespace, f"varmor-{namespace}-slow") is None
    reasons = await wait_for(lambda: _events_with(k, namespace, "slow", {"CompileBudgetExceeded"}))
    assert reasons
    # An update over budget keeps the previous profile; one that does not compile is Invalid.
    await k.create(namespace, _raw("good", "deny /etc/shadow r,"))
    profile = f"varmor-{namespace}-good"
    ap = await wait_for(lambda: k.armor_profile(namespace, profile))
    for rules, reason in ((slow_rule(), "CompileBudgetExceeded"), ("deny unix addr=@/x,", "Invalid")):
        body = await k.get_policy(namespace, "good")
        body["spec"]["policy"]["enhanceProtect"]["appArmorRawRules"] = [{"rules": rules}]
        await k.replace_policy(namespace, body)
        pol = await wait_for(
            lambda r=reason: _having(
                lambda: k.get_policy(namespace, "good"), lambda p: condition(p, "Updated").get("reason") == r
            )
        )
        assert (await k.armor_profile(namespace, profile))["spec"]["profile"]["sha256"] == ap["spec"]["profile"][
            "sha256"
        ]


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


async def _having(get: Callable[[], Awaitable[Any]], check: Callable[[Any], bool]) -> Any:
    obj = await get()
    return obj if obj is not None and check(obj) else None


async def _is_none(awaitable: Awaitable[Any]) -> bool:
    return (await awaitable) is None


async def _events_with(k: Api, ns: str, name: str, wanted: set[str]) -> set[str] | None:
    reasons = set(await k.events(ns, name))
    return reasons if wanted <= reasons else None
