"""Ephemeral containers added to running Pods get the profile of the Pod's policy, or of
the workload policy whose profile the Pod already runs under."""

from __future__ import annotations

import copy
from typing import Any

from tests import helpers
from varmor.admission.ephemeral import inherited_profile, plan_ephemeral
from varmor.admission.jsonpatch import apply_patch
from varmor.admission.objects import view_of
from varmor.admission.planner import plan
from varmor.admission.selection import PolicyIndex


def policy(name: str, kind: str, *, allow_opt_out: bool = False) -> dict[str, Any]:
    doc = helpers.policy(
        name, "demo", kind, selector={"matchLabels": {"app": name}}, profile=f"varmor-demo-{name}", meta={"uid": name}
    )
    if allow_opt_out:
        doc["spec"]["policy"]["allowOptOut"] = True
    return doc


def debugged(pod: dict[str, Any], name: str = "dbg", **extra: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(old, new): `pod` before and after `kubectl debug` added an ephemeral container."""
    new = copy.deepcopy(pod)
    new["spec"].setdefault("ephemeralContainers", []).append({"name": name, "image": "busybox", **extra})
    return pod, new


def confined_ephemeral(pod: dict[str, Any], ops: Any) -> list[str | None]:
    out = apply_patch(pod, list(ops))
    return [
        ((c.get("securityContext") or {}).get("appArmorProfile") or {}).get("localhostProfile")
        for c in out["spec"]["ephemeralContainers"]
    ]


def test_a_pod_policy_confines_the_new_ephemeral_container() -> None:
    index = PolicyIndex([policy("p", "Pod")])
    pod = helpers.pod("x", {"app": "p"})
    old, new = debugged(apply_patch(pod, list(plan("Pod", pod, "varmor-demo-p").ops)))
    cand, result = plan_ephemeral(index, new, old, "demo")
    assert cand is not None
    assert cand.name == "p"
    assert confined_ephemeral(new, result.ops) == ["varmor-demo-p"]
    assert all(op["path"].startswith("/spec/ephemeralContainers/") for op in result.ops)


def test_a_workload_pod_inherits_its_containers_profile() -> None:
    """A Deployment policy selects the Deployment, not its Pods: the Pod's own profile says."""
    index = PolicyIndex([policy("web", "Deployment")])
    template = apply_patch(
        helpers.deployment("web"), list(plan("Deployment", helpers.deployment("web"), "varmor-demo-web").ops)
    )["spec"]["template"]
    pod = {"metadata": {"name": "web-abc", **template["metadata"]}, "spec": template["spec"]}
    assert inherited_profile(view_of(pod)) == "varmor-demo-web"
    old, new = debugged(pod)
    cand, result = plan_ephemeral(index, new, old, "demo")
    assert cand is not None
    assert cand.name == "web"
    assert confined_ephemeral(new, result.ops) == ["varmor-demo-web"]


def test_opt_out_follows_the_owning_policy() -> None:
    pod = helpers.pod("x", {"app": "p"})
    pod["metadata"]["annotations"] = {"container.apparmor.security.beta.varmor.org/dbg": "unconfined"}
    old, new = debugged(pod, securityContext={"appArmorProfile": {"type": "Unconfined"}})
    _, refused = plan_ephemeral(PolicyIndex([policy("p", "Pod")]), new, old, "demo")
    assert refused.overridden == ("dbg",)
    assert confined_ephemeral(new, refused.ops) == ["varmor-demo-p"]
    _, allowed = plan_ephemeral(PolicyIndex([policy("p", "Pod", allow_opt_out=True)]), new, old, "demo")
    assert (allowed.opted_out, allowed.ops) == (("dbg",), ())


def test_unrelated_pods_and_old_ephemeral_containers_are_left_alone() -> None:
    index = PolicyIndex([policy("web", "Deployment")])
    old, new = debugged(helpers.pod("x", {"app": "other"}))
    cand, unrelated = plan_ephemeral(index, new, old, "demo")
    assert cand is None
    assert unrelated.ops == ()
    pod_index = PolicyIndex([policy("p", "Pod")])
    old2, new2 = debugged(helpers.pod("y", {"app": "p"}, ephemeral=("before",)))
    _, result = plan_ephemeral(pod_index, new2, old2, "demo")
    assert result.confined == ("dbg",)  # "before" is immutable now
