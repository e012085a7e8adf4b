"""The pure mutation planner: precedence, patches valid as sent, idempotence, opt-outs,
every container kind."""

from __future__ import annotations

import copy
import functools
import random
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import helpers
from varmor import api
from varmor.admission import planner, selection
from varmor.admission.jsonpatch import PatchError, apply_patch
from varmor.admission.objects import view_of
from varmor.admission.planner import plan, plan_patch, remove_patch
from varmor.admission.review import parse_mutation_review
from varmor.admission.selection import PolicyIndex, select_policy


def policy(
    name: str,
    *,
    namespace: str | None = "demo",
    selector: dict[str, Any] | None = None,
    profile: str | None = "auto",
    created: str = "2025-01-01T00:00:00Z",
    **target: Any,
) -> dict[str, Any]:
    """`helpers.policy` as the admission sees it: in demo (None: cluster-scoped), for
    `app: web`, accepted (`profile="auto"`: the name the leader gives), with uid and
    creation time; `target` keywords: kind, target_name, containers."""
    if profile == "auto":
        profile = f"varmor-{namespace}-{name}" if namespace else f"varmor-cluster-varmor-{name}"
    return helpers.policy(
        name,
        namespace,
        cluster=namespace is None,
        selector=selector if selector is not None else {"matchLabels": {"app": "web"}},
        profile=profile,
        meta={"uid": f"uid-{name}", "creationTimestamp": created},
        **target,
    )


# A Deployment in demo (app: web) with two containers; a Pod with every container kind.
deployment = functools.partial(helpers.deployment, namespace="demo", containers=("app", "side"), image=("x", "y"))
pod = functools.partial(
    helpers.pod, typed=True, image="x", init=("init",), init_image="i", ephemeral=("dbg",), ephemeral_image="d"
)

VARMOR_OPT_OUT_SIDE = api.VARMOR_APPARMOR_ANNOTATION_PREFIX + "side"


# -- selection ----------------------------------------------------------------------


def test_cluster_policy_beats_namespaced_and_name_beats_selector() -> None:
    ns_name = policy("by-name", target_name="web")
    ns_sel = policy("by-sel")
    cl_sel = policy("cl-sel", namespace=None)
    cl_name = policy("cl-name", namespace=None, target_name="web")
    sel = select_policy([ns_name, ns_sel, cl_sel, cl_name], "Deployment", deployment(), "demo")
    assert sel.winner is not None
    assert sel.winner.candidate.name == "cl-name"
    assert [m.candidate.name for m in sel.losers] == ["cl-sel", "by-name", "by-sel"]


def test_selection_is_independent_of_input_order() -> None:
    pols = [
        policy("b", created="2025-01-01T00:00:00Z"),
        policy("a", created="2025-01-01T00:00:00Z"),
        policy("old", created="2024-01-01T00:00:00Z"),
        policy("n", target_name="web", created="2026-01-01T00:00:00Z"),
    ]
    winners = set()
    for seed in range(20):
        shuffled = pols[:]
        random.Random(seed).shuffle(shuffled)
        sel = select_policy(shuffled, "Deployment", deployment(), "demo")
        assert sel.winner is not None
        winners.add((sel.winner.candidate.name, tuple(m.candidate.name for m in sel.losers)))
    assert winners == {("n", ("old", "a", "b"))}


def test_oldest_policy_wins_a_tie() -> None:
    new = policy("aaa", created="2025-06-01T00:00:00Z")
    old = policy("zzz", created="2025-01-01T00:00:00Z")
    sel = select_policy([new, old], "Deployment", deployment(), "demo")
    assert sel.winner is not None
    assert sel.winner.candidate.name == "zzz"


def test_namespaced_policy_only_matches_its_namespace_and_kind() -> None:
    p = policy("web")
    assert select_policy([p], "Deployment", deployment(), "other").winner is None
    assert select_policy([p], "StatefulSet", deployment(), "demo").winner is None
    assert select_policy([p], "Deployment", deployment(labels={"app": "db"}), "demo").winner is None
    cl = policy("cl", namespace=None)
    assert select_policy([cl], "Deployment", deployment(), "anywhere").winner is not None


def test_policy_without_profile_name_is_pending_not_winner() -> None:
    pending = policy("new", namespace=None, profile=None)
    ready = policy("ready")
    sel = select_policy([pending, ready], "Deployment", deployment(), "demo")
    assert sel.winner is not None
    assert sel.winner.candidate.name == "ready"
    assert [m.candidate.name for m in sel.pending] == ["new"]
    only = select_policy([pending], "Deployment", deployment(), "demo")
    assert only.winner is None
    assert only.selected


def test_selector_expressions_and_empty_selector() -> None:
    expr = policy(
        "e",
        selector={
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["fe", "be"]},
                {"key": "skip", "operator": "DoesNotExist"},
            ],
        },
    )
    assert select_policy([expr], "Deployment", deployment(labels={"app": "web", "tier": "fe"}), "demo").winner
    assert not select_policy([expr], "Deployment", deployment(labels={"app": "web", "tier": "x"}), "demo").winner
    assert not select_policy(
        [expr], "Deployment", deployment(labels={"app": "web", "tier": "fe", "skip": ""}), "demo"
    ).winner
    everything = policy("all", selector={})
    assert select_policy([everything], "Deployment", deployment(labels={}), "demo").winner


def test_malformed_policies_never_match() -> None:
    bad = [
        policy("x", selector={"matchExpressions": [{"key": "a", "operator": "Bogus"}]}),
        policy("y", kind="CronJob"),
        {"metadata": {"name": "z"}, "spec": {"target": {"kind": "Deployment", "name": "web", "selector": {}}}},
        {"metadata": "nope"},
        {},
    ]
    assert select_policy(bad, "Deployment", deployment(), "demo").winner is None
    assert len(PolicyIndex(bad)) == 0


def test_index_agrees_with_select_policy() -> None:
    pols = [policy("a"), policy("b", namespace=None, kind="Pod", selector={}), policy("c", target_name="web")]
    index = PolicyIndex(pols)
    for kind, obj in (("Deployment", deployment()), ("Pod", pod(labels={"app": "web"}))):
        assert index.select(kind, obj, "demo") == select_policy(pols, kind, obj, "demo")


# -- patches ------------------------------------------------------------------------


def confined(obj: dict[str, Any], container: str, kind: str = "Deployment") -> str | None:
    spec = obj["spec"] if kind == "Pod" else obj["spec"]["template"]["spec"]
    every = spec["containers"] + spec.get("initContainers", []) + spec.get("ephemeralContainers", [])
    for c in every:
        if c["name"] == container:
            prof = (c.get("securityContext") or {}).get("appArmorProfile") or {}
            return prof.get("localhostProfile") if prof.get("type") == "Localhost" else None
    raise KeyError(container)


def test_field_patch_creates_missing_maps_and_is_idempotent() -> None:
    dep = deployment()
    del dep["spec"]["template"]["metadata"]
    ops = plan_patch("Deployment", dep, "varmor-demo-web", use_field=True)
    assert all(op["op"] == "add" for op in ops)
    out = apply_patch(dep, ops)
    assert confined(out, "app") == "varmor-demo-web"
    assert confined(out, "side") == "varmor-demo-web"
    ann = out["spec"]["template"]["metadata"]["annotations"]
    assert ann == {
        "container.apparmor.security.beta.varmor.org/app": "localhost/varmor-demo-web",
        "container.apparmor.security.beta.varmor.org/side": "localhost/varmor-demo-web",
    }
    assert plan_patch("Deployment", out, "varmor-demo-web", use_field=True) == []


def test_annotation_patch_before_1_30() -> None:
    dep = deployment()
    out = apply_patch(dep, plan_patch("Deployment", dep, "varmor-demo-web", use_field=False))
    ann = out["spec"]["template"]["metadata"]["annotations"]
    assert ann["container.apparmor.security.beta.kubernetes.io/app"] == "localhost/varmor-demo-web"
    assert confined(out, "app") is None
    assert plan_patch("Deployment", out, "varmor-demo-web", use_field=False) == []


def test_field_with_the_beta_annotation_agree_and_are_idempotent() -> None:
    """After an upgrade from 1.29: both, so an API server of either release keeps the profile."""
    dep = deployment()
    out = apply_patch(dep, plan_patch("Deployment", dep, "varmor-demo-web", use_field=True, beta_annotation=True))
    ann = out["spec"]["template"]["metadata"]["annotations"]
    assert ann["container.apparmor.security.beta.kubernetes.io/app"] == "localhost/varmor-demo-web"
    assert confined(out, "app") == "varmor-demo-web"
    assert plan_patch("Deployment", out, "varmor-demo-web", use_field=True, beta_annotation=True) == []
    # Back to the field alone: the annotation stays, and stays in agreement with the field.
    assert plan_patch("Deployment", out, "varmor-demo-web", use_field=True) == []


def test_pod_patch_confines_init_sidecar_and_ephemeral_containers() -> None:
    p = pod()
    p["spec"]["initContainers"].append({"name": "sidecar", "image": "s", "restartPolicy": "Always"})
    result = plan("Pod", p, "varmor-demo-p")
    assert result.confined == ("c", "init", "sidecar", "dbg")
    out = apply_patch(p, list(result.ops))
    assert confined(out, "c", "Pod") == "varmor-demo-p"
    for container in out["spec"]["initContainers"] + out["spec"]["ephemeralContainers"]:
        assert container["securityContext"]["appArmorProfile"] == {
            "type": "Localhost",
            "localhostProfile": "varmor-demo-p",
        }
    assert set(out["metadata"]["annotations"]) == {
        api.VARMOR_APPARMOR_ANNOTATION_PREFIX + c for c in ("c", "init", "sidecar", "dbg")
    }
    assert plan_patch("Pod", out, "varmor-demo-p") == []


def test_init_containers_get_the_beta_annotation_before_1_30() -> None:
    dep = deployment(init=("init",))
    out = apply_patch(dep, plan_patch("Deployment", dep, "varmor-demo-web", use_field=False))
    ann = out["spec"]["template"]["metadata"]["annotations"]
    assert ann[api.K8S_APPARMOR_ANNOTATION_PREFIX + "init"] == "localhost/varmor-demo-web"


def test_target_containers_name_any_container_kind() -> None:
    only = plan("Deployment", deployment(), "varmor-demo-web", containers=["side", "missing"])
    assert only.confined == ("side",)
    init_only = plan("Deployment", deployment(init=("init",)), "varmor-demo-web", containers=["init"])
    assert init_only.confined == ("init",)


OPT_OUTS = {
    "varmor annotation": lambda t: t["metadata"].__setitem__("annotations", {VARMOR_OPT_OUT_SIDE: "unconfined"}),
    "beta annotation": lambda t: t["metadata"].__setitem__(
        "annotations", {api.K8S_APPARMOR_ANNOTATION_PREFIX + "side": "unconfined"}
    ),
    "container field": lambda t: t["spec"]["containers"][1].__setitem__(
        "securityContext", {"appArmorProfile": {"type": "Unconfined"}}
    ),
    "pod field": lambda t: t["spec"].__setitem__("securityContext", {"appArmorProfile": {"type": "Unconfined"}}),
}


@pytest.mark.parametrize("how", list(OPT_OUTS))
@pytest.mark.parametrize("use_field", [True, False])
def test_opt_outs_are_overridden_unless_the_policy_allows_them(how: str, use_field: bool) -> None:
    if how.endswith("field") and not use_field:
        return  # before 1.30 there is no field to opt out with
    dep = deployment()
    OPT_OUTS[how](dep["spec"]["template"])
    allowed = plan("Deployment", dep, "varmor-demo-web", use_field=use_field, allow_opt_out=True)
    opted = ("app", "side") if how == "pod field" else ("side",)
    assert allowed.opted_out == opted
    assert allowed.overridden == ()
    kept = apply_patch(dep, list(allowed.ops))
    if use_field:
        assert confined(kept, "side") is None

    refused = plan("Deployment", dep, "varmor-demo-web", use_field=use_field)
    assert (refused.opted_out, refused.overridden, refused.confined) == ((), opted, ("app", "side"))
    out = apply_patch(dep, list(refused.ops))
    tmpl = out["spec"]["template"]
    annotations = tmpl["metadata"].get("annotations") or {}
    assert "unconfined" not in annotations.values()  # both annotations follow the profile
    if use_field:
        assert confined(out, "side") == "varmor-demo-web"
        if how == "pod field":  # the pod's field stays; the containers' own take precedence
            assert tmpl["spec"]["securityContext"]["appArmorProfile"] == {"type": "Unconfined"}
    else:
        assert annotations[api.K8S_APPARMOR_ANNOTATION_PREFIX + "side"] == "localhost/varmor-demo-web"
    assert plan("Deployment", out, "varmor-demo-web", use_field=use_field).ops == ()


def test_runtime_default_and_other_profiles_are_overwritten() -> None:
    dep = deployment()
    containers = dep["spec"]["template"]["spec"]["containers"]
    containers[0]["securityContext"] = {"appArmorProfile": {"type": "RuntimeDefault"}}
    containers[1]["securityContext"] = {"appArmorProfile": {"type": "Localhost", "localhostProfile": "mine"}}
    result = plan("Deployment", dep, "varmor-demo-web")
    assert result.overridden == ()  # not opt-outs: replaced by the policy's profile as before
    out = apply_patch(dep, list(result.ops))
    assert confined(out, "app") == confined(out, "side") == "varmor-demo-web"


def test_candidate_reads_allow_opt_out() -> None:
    allowing = policy("a")
    allowing["spec"]["policy"]["allowOptOut"] = True
    cands = [selection.candidate_from(p) for p in (allowing, policy("b"))]
    assert [c.allow_opt_out if c else None for c in cands] == [True, False]
    dep = deployment()
    dep["spec"]["template"]["metadata"]["annotations"] = {VARMOR_OPT_OUT_SIDE: "unconfined"}
    assert cands[0] is not None
    assert cands[1] is not None
    assert planner.plan_for(cands[0], "Deployment", dep).opted_out == ("side",)
    assert planner.plan_for(cands[1], "Deployment", dep).overridden == ("side",)


def test_ephemeral_subresource_plans_only_new_ephemeral_containers() -> None:
    old = pod(labels={"app": "web"})
    old["spec"]["ephemeralContainers"][0]["securityContext"] = {"runAsUser": 0}  # added before: immutable
    new = copy.deepcopy(old)
    new["spec"]["ephemeralContainers"].append({"name": "dbg2", "image": "d"})
    cand = selection.candidate_from(policy("p", kind="Pod"))
    assert cand is not None
    result = planner.plan_for(cand, "Pod", new, sub_resource="ephemeralcontainers", old=old)
    assert result.confined == ("dbg2",)
    assert [op["path"] for op in result.ops] == ["/spec/ephemeralContainers/1/securityContext"]
    out = apply_patch(new, list(result.ops))
    assert out["spec"]["ephemeralContainers"][1]["securityContext"]["appArmorProfile"]["localhostProfile"] == (
        "varmor-demo-p"
    )
    before_1_30 = planner.plan_for(cand, "Pod", new, False, sub_resource="ephemeralcontainers", old=old)
    assert before_1_30.ops == ()
    assert before_1_30.unsupported
    assert "annotations" in before_1_30.unsupported


def test_field_mode_aligns_conflicting_legacy_annotation() -> None:
    dep = deployment()
    key = "container.apparmor.security.beta.kubernetes.io/app"
    dep["spec"]["template"]["metadata"]["annotations"] = {key: "runtime/default"}
    dep["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {"runAsNonRoot": True}
    out = apply_patch(dep, plan_patch("Deployment", dep, "varmor-demo-web"))
    assert out["spec"]["template"]["metadata"]["annotations"][key] == "localhost/varmor-demo-web"
    assert out["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonRoot"] is True
    assert confined(out, "app") == "varmor-demo-web"


def test_profile_change_overwrites_and_remove_patch_rolls_back() -> None:
    dep = deployment()
    dep["spec"]["template"]["metadata"]["annotations"] = {VARMOR_OPT_OUT_SIDE: "unconfined"}
    # A policy allowing opt-outs: the user's `unconfined` stays through changes and rollback.
    once = apply_patch(dep, list(plan("Deployment", dep, "varmor-demo-old", allow_opt_out=True).ops))
    twice = apply_patch(once, list(plan("Deployment", once, "varmor-demo-new", allow_opt_out=True).ops))
    assert confined(twice, "app") == "varmor-demo-new"
    assert remove_patch("Deployment", twice, "varmor-demo-old") == []
    back = apply_patch(twice, remove_patch("Deployment", twice, "varmor-demo-new"))
    assert confined(back, "app") is None
    assert back["spec"]["template"]["metadata"]["annotations"] == {
        "container.apparmor.security.beta.varmor.org/side": "unconfined"
    }
    legacy = apply_patch(dep, list(plan("Deployment", dep, "varmor-demo-x", use_field=False, allow_opt_out=True).ops))
    assert apply_patch(legacy, remove_patch("Deployment", legacy)) == dep


def test_windows_and_templateless_objects_are_unsupported() -> None:
    dep = deployment()
    dep["spec"]["template"]["spec"]["os"] = {"name": "windows"}
    assert plan("Deployment", dep, "varmor-demo-web").unsupported
    assert plan("Deployment", {"spec": {}}, "varmor-demo-web").unsupported == "no pod template"


@pytest.mark.parametrize(
    "obj",
    [
        {"spec": "x"},
        {"spec": {"template": []}},
        {"spec": {"template": {"spec": {"containers": [{"noname": 1}]}}}},
        {"spec": {"template": {"metadata": {"annotations": []}, "spec": {"containers": []}}}},
        {"spec": {"template": {"spec": {"containers": [{"name": "a", "securityContext": 3}]}}}},
    ],
)
def test_malformed_objects_raise_plan_error(obj: dict[str, Any]) -> None:
    with pytest.raises(planner.PlanError):
        plan("Deployment", obj, "varmor-x")


def test_escape_pointer_tokens() -> None:
    assert planner.escape("a/b~c") == "a~1b~0c"


def test_strict_applier_rejects_add_under_missing_parent() -> None:
    with pytest.raises(PatchError):
        apply_patch({}, [{"op": "add", "path": "/metadata/annotations/x", "value": "1"}])
    with pytest.raises(PatchError):
        apply_patch({"a": {}}, [{"op": "replace", "path": "/a/missing", "value": 1}])


# -- properties ---------------------------------------------------------------------

names = st.text(alphabet="abc-/~.", min_size=1, max_size=6)
ann_values = st.sampled_from(["unconfined", "localhost/varmor-x", "runtime/default", "other"])
sc_values: st.SearchStrategy[dict[str, Any] | None] = st.one_of(
    st.none(),
    st.just({}),
    st.just({"appArmorProfile": {"type": "Unconfined"}}),
    st.just({"appArmorProfile": {"type": "RuntimeDefault"}}),
    st.just({"appArmorProfile": {"type": "Localhost", "localhostProfile": "varmor-x"}}),
)


@st.composite
def pod_templates(draw: st.DrawFn) -> dict[str, Any]:
    cnames = draw(st.lists(names, min_size=0, max_size=5, unique=True))
    containers = []
    for n in cnames:
        c: dict[str, Any] = {"name": n}
        sc = draw(sc_values)
        if sc is not None:
            c["securityContext"] = copy.deepcopy(sc)
        containers.append(c)
    split = draw(st.integers(0, len(containers)))  # the first ones are init containers
    init, containers = containers[:split], containers[split:]
    meta: dict[str, Any] | None = draw(st.sampled_from([None, {}, {"annotations": None}, {"annotations": {}}]))
    if meta is not None and draw(st.booleans()) and cnames:
        prefix = draw(st.sampled_from([api.K8S_APPARMOR_ANNOTATION_PREFIX, api.VARMOR_APPARMOR_ANNOTATION_PREFIX]))
        meta = {"annotations": {prefix + draw(st.sampled_from(cnames)): draw(ann_values)}}
    tmpl: dict[str, Any] = {"spec": {"containers": containers}}
    if init:
        tmpl["spec"]["initContainers"] = init
    if draw(st.booleans()):
        tmpl["spec"]["securityContext"] = {
            "appArmorProfile": {"type": draw(st.sampled_from(["Unconfined", "RuntimeDefault"]))}
        }
    if meta is not None:
        tmpl["metadata"] = meta
    return {"spec": {"template": tmpl}}


@settings(max_examples=300, deadline=None)
@given(
    obj=pod_templates(),
    use_field=st.booleans(),
    pick=st.lists(names, max_size=2),
    profile=st.sampled_from(["varmor-x", "varmor-y"]),
)
def test_patches_apply_strictly_and_are_idempotent(
    obj: dict[str, Any], use_field: bool, pick: list[str], profile: str
) -> None:
    result = plan("Deployment", obj, profile, pick, use_field)
    out = apply_patch(obj, list(result.ops))  # strict RFC 6902: valid on the object as sent
    assert plan_patch("Deployment", out, profile, pick, use_field) == []
    if use_field:
        for name in result.confined:
            assert confined(out, name) == profile
    for op in result.ops:
        assert op["op"] == "add"
    # Rollback removes what was added for the profile (overwritten opt-outs stay overwritten).
    back = apply_patch(out, remove_patch("Deployment", out, profile))
    assert plan("Deployment", back, profile, pick, use_field).confined == result.confined
    # With opt-outs allowed, exactly the opted-out containers are left alone.
    allowed = plan("Deployment", obj, profile, pick, use_field, allow_opt_out=True)
    assert set(allowed.confined) | set(allowed.opted_out) == set(result.confined)
    assert set(allowed.opted_out) == set(result.overridden)


@settings(max_examples=200, deadline=None)
@given(obj=pod_templates(), use_field=st.booleans(), profile=st.sampled_from(["varmor-x", "varmor-y"]))
def test_the_webhook_decoding_plans_like_the_leader_conversion(
    obj: dict[str, Any], use_field: bool, profile: str
) -> None:
    """The webhook decodes reviews from bytes; the leader converts API dicts. Same plan."""
    body = orjson.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u",
                "kind": {"group": "apps", "kind": "Deployment"},
                "operation": "CREATE",
                "object": obj,
            },
        }
    )
    decoded = parse_mutation_review(body).obj
    assert decoded == view_of(obj)
    assert plan("Deployment", decoded, profile, (), use_field) == plan("Deployment", obj, profile, (), use_field)
