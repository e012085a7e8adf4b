"""The chain a user depends on, on a real node: a policy's profile loaded by varmor's agent
into the node's kernel, a pod admitted with it, started by the kubelet, created by
containerd and runc under it, and the kernel enforcing it, through updates and deletion."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from tests import helpers
from tests.helpers import wait_for
from tests.node.conftest import IMAGE, NODE, Node

pytestmark = pytest.mark.node
G, V = "crd.varmor.org", "v1beta1"
TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"
# Each probe's verdict, "<name>=allowed|denied", written by a loop in the container.
PROBES = {
    "kallsyms": "cat /proc/kallsyms",  # hardening: disallow-access-kallsyms
    "hostname": "cat /etc/hostname",  # raw rule: deny /etc/hostname r
    "hosts": "cat /etc/hosts",  # nothing denies it
    # /usr/local/bin/probe is busybox, which runs the applet its argv[0] names: called as
    # `cat` through a link (AppArmor sees the link's target, the probe program).
    "token-by-probe": f"/tmp/bin/cat {TOKEN}",  # attack protection for /usr/local/bin/probe only
    "hosts-by-probe": "/tmp/bin/cat /etc/hosts",  # the probe program runs: only the token is denied
    "token-by-shell": f"cat {TOKEN}",
}


def pod_spec(command: str) -> dict[str, Any]:
    return {
        "nodeName": NODE,
        "terminationGracePeriodSeconds": 1,
        "containers": [
            {"name": "app", "image": IMAGE, "imagePullPolicy": "Never", "command": ["/bin/sh", "-c", command]}
        ],
    }


def workload(name: str, command: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec(command)},
        },
    }


@pytest.fixture
async def ns(api_client: Any, node: Node) -> AsyncIterator[str]:
    core = client.CoreV1Api(api_client)
    name = f"n-{uuid.uuid4().hex[:8]}"
    await core.create_namespace({"metadata": {"name": name}})
    await wait_for(lambda: _default_sa(core, name), timeout=30)
    try:
        yield name
    finally:
        custom = client.CustomObjectsApi(api_client)
        for item in (await custom.list_namespaced_custom_object(G, V, name, "varmorpolicies"))["items"]:
            with contextlib.suppress(ApiException):
                await custom.delete_namespaced_custom_object(G, V, name, "varmorpolicies", item["metadata"]["name"])
        await core.delete_namespace(name)


async def _default_sa(core: Any, ns: str) -> bool:
    return any(sa.metadata.name == "default" for sa in (await core.list_namespaced_service_account(ns)).items)


async def running_pod(core: Any, ns: str, app: str, *, not_in: set[str] = frozenset()) -> Any:  # type: ignore[assignment]
    """The Running pod of `app` (not one of `not_in`)."""

    async def find() -> Any:
        for pod in (await core.list_namespaced_pod(ns, label_selector=f"app={app}")).items:
            if (
                pod.metadata.name not in not_in
                and pod.status.phase == "Running"
                and pod.metadata.deletion_timestamp is None
            ):
                return pod
        return None

    return await wait_for(find, timeout=180, interval=0.5, what=f"a Running pod of {app} in {ns}")


def container_id(pod: Any) -> str:
    statuses = pod.status.container_statuses or []
    assert statuses, f"{pod.metadata.name} has no container status"
    assert statuses[0].container_id, f"{pod.metadata.name} has no running container"
    return str(statuses[0].container_id).removeprefix("containerd://")


def label_of(node: Node, cid: str) -> str:
    """The AppArmor label of container `cid`'s main process, read in the node's /proc."""
    pid = node.run(f"ctr -n k8s.io tasks ls | awk '$1 == \"{cid}\" {{print $2}}'").strip()
    assert pid.isdigit(), f"container {cid} has no task: {pid!r}"
    return node.run(f"cat /proc/{pid}/attr/current").strip()


async def policy_ready(custom: Any, ns: str, name: str) -> dict[str, Any]:
    async def ready() -> dict[str, Any] | None:
        got: dict[str, Any] = await custom.get_namespaced_custom_object(G, V, ns, "varmorpolicies", name)
        status = got.get("status") or {}
        if status.get("ready") and status.get("observedGeneration") == got["metadata"]["generation"]:
            return got
        return None

    result: dict[str, Any] = await wait_for(ready, timeout=180, interval=0.5, what=f"policy {ns}/{name} Ready")
    return result


async def test_an_existing_workload_is_rolled_and_runs_confined_then_rolls_back(
    api_client: Any, node: Node, ns: str
) -> None:
    """Tests 1, 2, 3 and 7 of the chain: Ready only once loaded; an existing Deployment
    rolled by updateExistingWorkloads runs under the profile, in enforce mode; deleting the
    policy rolls it back to the runtime's default profile and unloads varmor's."""
    core, apps, custom = client.CoreV1Api(api_client), client.AppsV1Api(api_client), client.CustomObjectsApi(api_client)
    await apps.create_namespaced_deployment(ns, workload("web", "exec sleep 3600"))
    before = await running_pod(core, ns, "web")
    assert label_of(node, container_id(before)) == "cri-containerd.apparmor.d (enforce)"

    profile = f"varmor-{ns}-web"
    started = time.monotonic()
    policy = helpers.policy(
        "web", enhance={"hardeningRules": ["disallow-access-kallsyms"]}, updateExistingWorkloads=True
    )
    await custom.create_namespaced_custom_object(G, V, ns, "varmorpolicies", policy)
    await policy_ready(custom, ns, "web")
    assert node.loaded_profiles().get(profile) == "enforce", "Ready before the node's kernel had the profile"
    node.timings["policy -> Ready"] = time.monotonic() - started

    started = time.monotonic()
    after = await running_pod(core, ns, "web", not_in={before.metadata.name})
    node.timings["rolled pod -> Running"] = time.monotonic() - started
    spec = api_client.sanitize_for_serialization(after.spec)
    assert spec["containers"][0]["securityContext"]["appArmorProfile"] == {
        "type": "Localhost",
        "localhostProfile": profile,
    }
    assert label_of(node, container_id(after)) == f"{profile} (enforce)"

    await custom.delete_namespaced_custom_object(G, V, ns, "varmorpolicies", "web")
    back = await running_pod(core, ns, "web", not_in={before.metadata.name, after.metadata.name})
    back_spec = api_client.sanitize_for_serialization(back.spec)
    assert "appArmorProfile" not in (back_spec["containers"][0].get("securityContext") or {})
    assert label_of(node, container_id(back)) == "cri-containerd.apparmor.d (enforce)"

    async def unloaded() -> bool:
        return profile not in node.loaded_profiles()

    await wait_for(unloaded, timeout=120, interval=1.0)


def verdicts(node: Node, cid: str) -> dict[str, str]:
    """The probe loop's latest results, read from the container's /tmp in the node."""
    pid = node.run(f"ctr -n k8s.io tasks ls | awk '$1 == \"{cid}\" {{print $2}}'").strip()
    rc, out = node.vm.run(f"cat /proc/{pid}/root/tmp/verdict")
    return dict(item.split("=", 1) for item in out.split()) if rc == 0 else {}


async def test_rules_deny_and_allow_in_the_container_and_a_live_update_reaches_it(
    api_client: Any, node: Node, ns: str
) -> None:
    """Tests 4 and 5: a hardening rule, a raw rule and an attack-protection rule for one
    executable (a child profile entered on exec under runc) deny what they name and
    nothing else; a policy change reaches the running container: same container, no
    restart, new verdict."""
    core, apps, custom = client.CoreV1Api(api_client), client.AppsV1Api(api_client), client.CustomObjectsApi(api_client)
    enhance = {
        "hardeningRules": ["disallow-access-kallsyms"],
        "attackProtectionRules": [{"rules": ["mitigate-sa-leak"], "targets": ["/usr/local/bin/probe"]}],
        "appArmorRawRules": [{"rules": "deny /etc/hostname r,"}],
    }
    await custom.create_namespaced_custom_object(G, V, ns, "varmorpolicies", helpers.policy("probe", enhance=enhance))
    await policy_ready(custom, ns, "probe")
    loop = (
        "mkdir -p /tmp/bin; ln -sf /usr/local/bin/probe /tmp/bin/cat; while :; do r=''; "
        + "; ".join(
            f'if {cmd} >/dev/null 2>&1; then r="$r {name}=allowed"; else r="$r {name}=denied"; fi'
            for name, cmd in PROBES.items()
        )
        + '; echo "$r" > /tmp/verdict.new; mv /tmp/verdict.new /tmp/verdict; sleep 1; done'
    )
    await apps.create_namespaced_deployment(ns, workload("probe", loop))
    pod = await running_pod(core, ns, "probe")
    cid = container_id(pod)
    assert label_of(node, cid) == f"varmor-{ns}-probe (enforce)"
    first = await wait_for(lambda: verdicts(node, cid), timeout=60, what="the first probe results")
    assert first == {
        "kallsyms": "denied",
        "hostname": "denied",
        "hosts": "allowed",
        "token-by-probe": "denied",
        "hosts-by-probe": "allowed",
        "token-by-shell": "allowed",
    }

    current = await custom.get_namespaced_custom_object(G, V, ns, "varmorpolicies", "probe")
    current["spec"]["policy"]["enhanceProtect"]["appArmorRawRules"] = [
        {"rules": "deny /etc/hostname r,\ndeny /etc/hosts r,"}
    ]
    started = time.monotonic()
    await custom.replace_namespaced_custom_object(G, V, ns, "varmorpolicies", "probe", current)

    async def hosts_denied() -> bool:
        return verdicts(node, cid).get("hosts") == "denied"

    await wait_for(hosts_denied, timeout=120, interval=1.0, what="the running container denied /etc/hosts")
    node.timings["policy update -> running container's new verdict"] = time.monotonic() - started
    again = (await core.list_namespaced_pod(ns, label_selector="app=probe")).items
    assert [p.metadata.name for p in again] == [pod.metadata.name]
    assert container_id(again[0]) == cid
    assert again[0].status.container_statuses[0].restart_count == 0
    assert verdicts(node, cid)["token-by-probe"] == "denied"


async def test_confinement_survives_an_agent_restart_and_a_reboot(api_client: Any, node: Node, ns: str) -> None:
    """Test 8: running containers stay confined while the agent restarts; after a reboot
    the agent loads the profile again from the node's disk, and the workload's container
    runs under it (containerd refuses to start one whose Localhost profile is not loaded,
    so none runs before)."""
    core, apps, custom = client.CoreV1Api(api_client), client.AppsV1Api(api_client), client.CustomObjectsApi(api_client)
    profile = f"varmor-{ns}-steady"
    enhance = {"hardeningRules": ["disallow-access-kallsyms"]}
    await custom.create_namespaced_custom_object(G, V, ns, "varmorpolicies", helpers.policy("steady", enhance=enhance))
    await policy_ready(custom, ns, "steady")
    await apps.create_namespaced_deployment(ns, workload("steady", "exec sleep 3600"))
    pod = await running_pod(core, ns, "steady")
    cid = container_id(pod)
    assert label_of(node, cid) == f"{profile} (enforce)"

    mark = node.run("grep -c '^' /var/log/varmor-agent.log").strip()
    node.run("pkill -f '^python3 -m varmor.cli'")

    async def agent_back() -> bool:
        out = node.run(f"tail -n +{int(mark) + 1} /var/log/varmor-agent.log")
        return "agent exited" in out and "running roles agent" in out

    await wait_for(agent_back, timeout=120, interval=1.0, what="the agent restarted")
    assert label_of(node, cid) == f"{profile} (enforce)"
    assert node.loaded_profiles().get(profile) == "enforce"

    started = time.monotonic()
    await asyncio.to_thread(node.vm.reboot)

    async def running_again() -> Any:
        found = await core.read_namespaced_pod(pod.metadata.name, ns)
        statuses = found.status.container_statuses or []
        if statuses and statuses[0].state.running and container_id(found) != cid:
            return found
        return None

    after = await wait_for(
        running_again, timeout=300, interval=1.0, what="the pod's container restarted after the reboot"
    )
    node.timings["reboot -> workload running again"] = time.monotonic() - started
    assert label_of(node, container_id(after)) == f"{profile} (enforce)"
    assert node.loaded_profiles().get(profile) == "enforce"


async def test_audited_violations_reach_the_log_an_event_and_the_metric(api_client: Any, node: Node, ns: str) -> None:
    """Test 6: in auditViolations mode a denied action in the pod is reported by the agent
    from the node's audit log: a JSON line, an Event on the policy naming the node, and
    the violations metric. Two pods of the policy run on the node, each denied a file named
    after itself: every line names the pod whose process it was."""
    core, apps, custom = client.CoreV1Api(api_client), client.AppsV1Api(api_client), client.CustomObjectsApi(api_client)
    profile = f"varmor-{ns}-audited"
    enhance = {
        "hardeningRules": ["disallow-access-kallsyms"],
        "appArmorRawRules": [{"rules": "deny /tmp/pod-* r,"}],
        "auditViolations": True,
    }
    await custom.create_namespaced_custom_object(G, V, ns, "varmorpolicies", helpers.policy("audited", enhance=enhance))
    await policy_ready(custom, ns, "audited")
    # Each pod is denied a file named like itself: /tmp/pod-<the pod name's last part>.
    loop = 'me="/tmp/pod-${HOSTNAME##*-}"; touch "$me"; while :; do cat /proc/kallsyms "$me"; sleep 5; done'
    deployment = workload("audited", f"{loop} > /dev/null 2>&1")
    deployment["spec"]["replicas"] = 2
    await apps.create_namespaced_deployment(ns, deployment)
    first = await running_pod(core, ns, "audited")
    second = await running_pod(core, ns, "audited", not_in={first.metadata.name})

    async def logged() -> list[dict[str, Any]] | None:
        rc, out = node.vm.run(f"grep -h '{profile}' /var/log/varmor-violations.log")
        lines = [json.loads(line) for line in out.splitlines()] if rc == 0 else []
        named = {(e.get("pod") or {}).get("name") for e in lines}
        return lines if {first.metadata.name, second.metadata.name} <= named else None

    lines = await wait_for(logged, timeout=180, interval=1.0, what="violations of both pods in the agent's JSON log")
    assert any("kallsyms" in entry["target"] for entry in lines)
    for entry in lines:
        pod = entry["pod"]
        if pod is None:  # kept, with the reason: the process ended before the agent looked
            assert entry["unattributed"]
            continue
        assert pod["namespace"] == ns
        if entry["target"].startswith("/tmp/pod-"):
            assert pod["name"].endswith("-" + entry["target"].removeprefix("/tmp/pod-")), entry
        if "container" in pod:
            assert (pod["container"], pod["image"]) == ("app", IMAGE)

    async def event() -> Any:
        events = (await core.list_namespaced_event(ns)).items
        return next((e for e in events if e.involved_object.name == "audited" and e.reason == "ViolationDenied"), None)

    found = await wait_for(event, timeout=120, interval=1.0, what="a ViolationDenied Event on the policy")
    assert f"node {NODE}:" in found.message
    assert "/proc/kallsyms" in found.message
    metrics = node.run(
        "python3 -c \"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8082/metrics').read().decode())\""
    )
    assert any(
        line.startswith('varmor_violations_total{action="DENIED"') and not line.endswith(" 0.0")
        for line in metrics.splitlines()
    )


async def events_about(core: Any, ns: str, name: str, reason: str) -> list[Any]:
    found = await core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name},reason={reason}")
    return list(found.items)


async def test_a_pod_admitted_before_its_node_loaded_the_profile_is_named_and_starts_once_loaded(
    api_client: Any, node: Node, ns: str
) -> None:
    """Test 9: the node's agent is paused (as while it restarts) when a policy is created, so
    its profile is not loaded there when the workload's pod is admitted with it. containerd
    refuses the container; the agent, once running, loads the profile and says which pod
    waited for it, on the pod and on the policy; the kubelet's next retry starts the same
    pod's container under the profile, with nobody deleting or restarting anything."""
    core, apps, custom = client.CoreV1Api(api_client), client.AppsV1Api(api_client), client.CustomObjectsApi(api_client)
    profile = f"varmor-{ns}-late"
    node.run("pkill -STOP -f '^python3 -m varmor.cli'")
    try:
        enhance = {"hardeningRules": ["disallow-access-kallsyms"]}
        await custom.create_namespaced_custom_object(
            G, V, ns, "varmorpolicies", helpers.policy("late", enhance=enhance)
        )

        async def accepted() -> bool:
            got = await custom.get_namespaced_custom_object(G, V, ns, "varmorpolicies", "late")
            return (got.get("status") or {}).get("profileName") == profile

        await wait_for(accepted, timeout=60, interval=0.5, what="the leader accepted the policy")
        await apps.create_namespaced_deployment(ns, workload("late", "exec sleep 3600"))

        async def refused() -> Any:
            for pod in (await core.list_namespaced_pod(ns, label_selector="app=late")).items:
                for status in pod.status.container_statuses or []:
                    waiting = status.state.waiting
                    if waiting is not None and waiting.reason == "CreateContainerError":
                        return pod, waiting.message or ""
            return None

        waiting_pod, message = await wait_for(
            refused, timeout=180, interval=0.5, what="containerd refused the container (profile not loaded)"
        )
        assert profile in message, message
        assert profile not in node.loaded_profiles()
    finally:
        node.run("pkill -CONT -f '^python3 -m varmor.cli'")
    resumed = time.monotonic()
    name = waiting_pod.metadata.name

    async def told() -> tuple[list[Any], list[Any]] | None:
        on_pod = await events_about(core, ns, name, "ProfileNotLoaded")
        on_policy = [e for e in await events_about(core, ns, "late", "ProfileNotLoaded") if name in e.message]
        return (on_pod, on_policy) if on_pod and on_policy else None

    on_pod, on_policy = await wait_for(told, timeout=120, interval=0.5, what="Events naming the waiting pod")
    assert f"container app waits on node {NODE}" in on_pod[0].message
    assert profile in on_pod[0].message
    assert on_pod[0].type == on_policy[0].type == "Warning"
    assert f"pod {ns}/{name} (app)" in on_policy[0].message

    pod = await running_pod(core, ns, "late")
    node.timings["agent resumed -> waiting pod running"] = time.monotonic() - resumed
    assert pod.metadata.uid == waiting_pod.metadata.uid  # the same pod: recovery needed no one
    assert pod.status.container_statuses[0].restart_count == 0
    assert label_of(node, container_id(pod)) == f"{profile} (enforce)"

    async def started() -> list[Any]:
        return await events_about(core, ns, name, "ProfileLoaded")

    [done] = await wait_for(started, timeout=60, interval=0.5, what="the Event saying the container started")
    assert done.type == "Normal"
    assert profile in done.message
