"""Containers waiting for a varmor profile: which ones count, and what the agent tells whom."""

from __future__ import annotations

from typing import Any

from varmor import api
from varmor.nodeexec.state import Desired, PolicyRef
from varmor.nodeexec.waiting import WaitingPods, waiting_for_profile

MESSAGE = "failed to create containerd container: apparmor profile not found varmor-team-a-web"


def pod(
    *,
    reason: str = "CreateContainerError",
    profile: str = "varmor-team-a-web",
    how: str = "field",
    namespace: str = "team-a",
    running: bool = False,
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "image": "busybox"}
    meta: dict[str, Any] = {"name": "web-1", "namespace": namespace, "uid": "u-1"}
    if how == "field":
        container["securityContext"] = {"appArmorProfile": {"type": "Localhost", "localhostProfile": profile}}
    elif how == "annotation":
        meta["annotations"] = {f"{api.K8S_APPARMOR_ANNOTATION_PREFIX}app": f"localhost/{profile}"}
    state = {"running": {}} if running else {"waiting": {"reason": reason, "message": MESSAGE}}
    return {
        "metadata": meta,
        "spec": {"containers": [container], "nodeName": "node-1"},
        "status": {"containerStatuses": [{"name": "app", "state": state}]},
    }


def test_a_refused_container_names_the_profile_from_the_spec_by_field_or_annotation() -> None:
    for how in ("field", "annotation"):
        [found] = waiting_for_profile(pod(how=how))
        assert (found.namespace, found.pod, found.container, found.profile) == (
            "team-a",
            "web-1",
            "app",
            "varmor-team-a-web",
        )
        assert found.message == MESSAGE


def test_only_varmor_profiles_and_only_the_runtimes_refusal_count() -> None:
    assert waiting_for_profile(pod(reason="ContainerCreating")) == []
    assert waiting_for_profile(pod(reason="CreateContainerConfigError")) == []
    assert waiting_for_profile(pod(profile="docker-default")) == []
    assert waiting_for_profile(pod(how="none")) == []
    assert waiting_for_profile(pod(running=True)) == []


def test_a_malformed_pod_is_ignored_not_fatal() -> None:
    broken = pod()
    broken["spec"]["containers"] = "not a list"
    assert waiting_for_profile(broken) == []
    assert waiting_for_profile({"status": "nonsense"}) == []
    long = pod()
    long["status"]["containerStatuses"][0]["state"]["waiting"]["message"] = "x" * 10_000
    assert len(waiting_for_profile(long)[0].message) == 300


def test_a_policy_hears_only_of_its_own_namespaces_pods_unless_cluster_wide() -> None:
    assert PolicyRef("VarmorPolicy", "p", "team-a", "u").may_name("team-a")
    assert not PolicyRef("VarmorPolicy", "p", "team-b", "u").may_name("team-a")
    assert PolicyRef("VarmorClusterPolicy", "p", "", "u").may_name("team-a")


class Sent:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def offer(self, body: dict[str, Any]) -> None:
        self.bodies.append(body)


def owner_in(namespace: str, kind: str = "VarmorPolicy") -> Desired:
    policy = PolicyRef(kind=kind, name="web", namespace=namespace, uid="p-1")
    return Desired("varmor-team-a-web", namespace, "text", "sha", "enforce", policy)


async def watch(explanation: str | None, owner: Desired | None) -> tuple[WaitingPods, Sent, list[str]]:
    sent, asked = Sent(), []

    async def explain(profile: str) -> str | None:
        asked.append(profile)
        return explanation

    now = [100.0]
    pods = WaitingPods("node-1", explain, lambda _: owner, sent, monotonic=lambda: now[0])  # type: ignore[arg-type]
    return pods, sent, asked


async def test_a_waiting_container_is_told_once_on_the_pod_and_its_policy_then_its_start() -> None:
    pods, sent, asked = await watch("the agent is loading it", owner_in("team-a"))
    await pods.on_pod("ADDED", pod())
    await pods.on_pod("MODIFIED", pod())  # still waiting: no second Event, no second look
    await pods.on_pod("RESYNC", pod())
    assert asked == ["varmor-team-a-web"]
    assert [(b["involvedObject"]["kind"], b["reason"]) for b in sent.bodies] == [
        ("Pod", "ProfileNotLoaded"),
        ("VarmorPolicy", "ProfileNotLoaded"),
    ]
    assert "container app waits on node node-1" in sent.bodies[0]["message"]
    assert "the agent is loading it" in sent.bodies[0]["message"]
    assert "pod team-a/web-1 (app)" in sent.bodies[1]["message"]
    assert MESSAGE not in sent.bodies[1]["message"]  # the runtime's text goes to the pod only
    await pods.on_pod("MODIFIED", pod(running=True))
    assert [(b["involvedObject"]["kind"], b["reason"], b["type"]) for b in sent.bodies[2:]] == [
        ("Pod", "ProfileLoaded", "Normal"),
        ("VarmorPolicy", "ProfileLoaded", "Normal"),
    ]
    assert pods.episodes == {}


async def test_another_tenants_policy_never_hears_of_the_pod() -> None:
    pods, sent, _ = await watch("the agent is loading it", owner_in("team-b"))
    await pods.on_pod("ADDED", pod())
    assert [b["involvedObject"]["kind"] for b in sent.bodies] == ["Pod"]
    pods, sent, _ = await watch("the agent is loading it", owner_in("varmor", "VarmorClusterPolicy"))
    await pods.on_pod("ADDED", pod())
    assert [b["involvedObject"]["kind"] for b in sent.bodies] == ["Pod", "VarmorClusterPolicy"]


async def test_a_refusal_for_another_cause_while_the_kernel_has_the_profile_is_not_varmors_to_report() -> None:
    pods, sent, asked = await watch(None, owner_in("team-a"))
    other = pod()
    other["status"]["containerStatuses"][0]["state"]["waiting"]["message"] = "no such device: /dev/fuse"
    await pods.on_pod("ADDED", other)
    await pods.on_pod("MODIFIED", pod(running=True))
    assert asked == ["varmor-team-a-web"]
    assert sent.bodies == []


async def test_a_profile_loaded_between_the_refusal_and_the_agents_look_is_still_told() -> None:
    pods, sent, _ = await watch(None, owner_in("team-a"))
    await pods.on_pod("ADDED", pod())
    assert [b["reason"] for b in sent.bodies] == ["ProfileNotLoaded", "ProfileNotLoaded"]
    assert "loaded since the runtime tried" in sent.bodies[0]["message"]


async def test_a_policy_whose_profile_arrives_after_the_refusal_hears_of_the_pod_then() -> None:
    owner: list[Desired] = []
    sent = Sent()

    async def explain(profile: str) -> str | None:
        return "no ArmorProfile of that name has reached this node"

    pods = WaitingPods("node-1", explain, lambda _: owner[0] if owner else None, sent)  # type: ignore[arg-type]
    await pods.on_pod("ADDED", pod())
    assert [b["involvedObject"]["kind"] for b in sent.bodies] == ["Pod"]
    owner.append(owner_in("team-a"))
    pods.profile_known("varmor-team-a-other")
    pods.profile_known("varmor-team-a-web")
    pods.profile_known("varmor-team-a-web")  # once
    assert [b["involvedObject"]["kind"] for b in sent.bodies] == ["Pod", "VarmorPolicy"]
    assert "reached this node after the runtime tried" in sent.bodies[1]["message"]


async def test_a_deleted_pod_ends_its_episode_without_a_start_event() -> None:
    pods, sent, _ = await watch("the agent is loading it", None)
    await pods.on_pod("ADDED", pod())
    await pods.on_pod("DELETED", pod())
    assert [b["reason"] for b in sent.bodies] == ["ProfileNotLoaded"]
    assert pods.episodes == {}


async def test_a_pod_naming_another_tenants_profile_learns_nothing_of_that_tenants_policy() -> None:
    pods, sent, _ = await watch("it failed to load here: apparmor_parser: secret line 12", owner_in("team-b"))
    await pods.on_pod("ADDED", pod())  # team-a's pod names team-b's profile
    [only] = sent.bodies
    assert only["involvedObject"]["kind"] == "Pod"
    assert "secret line" not in only["message"]
    assert "it is not loaded on this node" in only["message"]


async def test_a_policy_hears_of_waiting_pods_at_a_bounded_rate() -> None:
    pods, sent, _ = await watch("the agent is loading it", owner_in("varmor", "VarmorClusterPolicy"))
    for i in range(5):
        many = pod()
        many["metadata"] |= {"name": f"web-{i}", "uid": f"u-{i}"}
        await pods.on_pod("ADDED", many)
    kinds = [b["involvedObject"]["kind"] for b in sent.bodies]
    assert kinds.count("Pod") == 5  # each pod hears of its own container
    assert kinds.count("VarmorClusterPolicy") == 1  # the policy once per interval


async def test_a_pod_replaced_under_the_same_name_ends_the_old_ones_episode() -> None:
    pods, _, _ = await watch("the agent is loading it", owner_in("team-a"))
    await pods.on_pod("ADDED", pod())
    newer = pod(running=True)
    newer["metadata"]["uid"] = "u-2"
    await pods.on_pod("MODIFIED", newer)  # what a relist delivers after a watch gap
    assert pods.episodes == {}
