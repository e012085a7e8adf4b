"""The unprotected audit: opted-out and unconfined containers of every kind count as
unprotected, with the reason in the example the `Unprotected` condition names."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from tests import helpers
from varmor import api
from varmor.admission.jsonpatch import apply_patch
from varmor.admission.planner import plan
from varmor.reconcile.audit import audit, is_protected, unprotected_reason

PROFILE = "varmor-team-a-web"
KEY = ("team-a", "web")
deployment = functools.partial(
    helpers.deployment, "web", {"app": "web"}, namespace="team-a", containers=("app", "side"), image=("x", "y")
)


def policy(allow_opt_out: bool = False, **target: Any) -> dict[str, Any]:
    doc = helpers.policy("web", "team-a", selector={"matchLabels": {"app": "web"}}, profile=PROFILE, **target)
    if allow_opt_out:
        doc["spec"]["policy"]["allowOptOut"] = True
    return doc


def admitted(obj: dict[str, Any], kind: str = "Deployment", **kwargs: Any) -> dict[str, Any]:
    """`obj` as the webhook admits it."""
    out: dict[str, Any] = apply_patch(obj, list(plan(kind, obj, PROFILE, **kwargs).ops))
    return out


def with_opt_out(obj: dict[str, Any]) -> dict[str, Any]:
    obj["spec"]["template"]["metadata"]["annotations"] = {api.VARMOR_APPARMOR_ANNOTATION_PREFIX + "side": "unconfined"}
    return obj


def test_an_admitted_workload_is_protected() -> None:
    assert is_protected("Deployment", admitted(deployment(init=("init",))), PROFILE)
    result = audit([policy()], {"Deployment": [admitted(deployment())]})
    assert result.per_policy == {KEY: 0}


def test_an_allowed_opt_out_is_kept_but_counted_unprotected() -> None:
    kept = admitted(with_opt_out(deployment()), allow_opt_out=True)
    assert unprotected_reason("Deployment", kept, PROFILE, allow_opt_out=True) == (
        "container side opted out (allowed by spec.policy.allowOptOut)"
    )
    result = audit([policy(allow_opt_out=True)], {"Deployment": [kept]})
    assert result.per_policy == {KEY: 1}
    assert result.examples[KEY] == (
        "Deployment team-a/web: container side opted out (allowed by spec.policy.allowOptOut)",
    )


def test_an_overridden_opt_out_is_protected_and_one_that_bypassed_the_webhook_is_not() -> None:
    overridden = admitted(with_opt_out(deployment()))
    assert audit([policy()], {"Deployment": [overridden]}).per_policy == {KEY: 0}
    bypassed = with_opt_out(admitted(deployment()))  # opted out after admission, or with the webhook down
    result = audit([policy()], {"Deployment": [bypassed]})
    assert result.examples[KEY] == ("Deployment team-a/web: container side opted out (the policy does not allow it)",)


@pytest.mark.parametrize("scope", ["pod", "container"])
def test_unconfined_field_counts_as_unprotected(scope: str) -> None:
    dep = admitted(deployment())
    spec = dep["spec"]["template"]["spec"]
    target = spec if scope == "pod" else spec["containers"][1]
    if scope == "container":
        target["securityContext"] = {"appArmorProfile": {"type": "Unconfined"}}
        assert not is_protected("Deployment", dep, PROFILE)
    else:  # the containers' own Localhost fields take precedence over the pod's
        target["securityContext"] = {"appArmorProfile": {"type": "Unconfined"}}
        assert is_protected("Deployment", dep, PROFILE)
        del spec["containers"][1]["securityContext"]
        assert (
            unprotected_reason("Deployment", dep, PROFILE) == "container side opted out (the policy does not allow it)"
        )


def test_init_sidecar_and_ephemeral_containers_count() -> None:
    pod = helpers.pod("p", {"app": "web"}, containers=("c",), init=("init",))
    pod["spec"]["initContainers"].append({"name": "sidecar", "image": "s", "restartPolicy": "Always"})
    confined = admitted(pod, "Pod")
    assert is_protected("Pod", confined, PROFILE)
    bare_sidecar = admitted(pod, "Pod", containers=["c", "init"])
    assert unprotected_reason("Pod", bare_sidecar, PROFILE) == "init container sidecar runs without a profile"
    debugged = apply_patch(confined, [{"op": "add", "path": "/spec/ephemeralContainers", "value": [{"name": "dbg"}]}])
    assert unprotected_reason("Pod", debugged, PROFILE) == "ephemeral container dbg runs without a profile"
    other = admitted(pod, "Pod")
    other["spec"]["initContainers"][0]["securityContext"]["appArmorProfile"]["localhostProfile"] = "varmor-old"
    assert unprotected_reason("Pod", other, PROFILE) == "init container init runs under varmor-old"
