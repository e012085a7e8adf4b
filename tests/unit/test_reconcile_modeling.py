"""The behaviour modes' part of a reconcile (varmor.reconcile.modeling, pure): the
modelling window on the leader's clock, and which model a DefenseInDepth profile may
enforce."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tests import helpers
from varmor import api
from varmor.behavior.model import Behavior, FileRule, digest
from varmor.reconcile.modeling import Model, plan, window
from varmor.reconcile.modelmerge import MAX_COUNT, ShareCache, merge, owned_by, uses_profile

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def minutes(n: float) -> dt.timedelta:
    return dt.timedelta(minutes=n)


def test_a_window_starts_when_first_seen_and_ends_after_its_duration() -> None:
    status, active, left = window(10, None, T0)
    assert status == {"startTime": "2026-12-01T12:00:00Z", "endTime": "2026-12-01T12:10:00Z", "duration": 10}
    assert active
    assert left == 600
    assert window(10, status, T0 + minutes(9))[1:] == (True, 60)
    assert window(10, status, T0 + minutes(10))[1:] == (False, 0)


def test_a_new_duration_moves_the_end_of_a_running_window() -> None:
    status, *_ = window(10, None, T0)
    longer, active, left = window(30, status, T0 + minutes(5))
    assert longer["startTime"] == status["startTime"]
    assert longer["endTime"] == "2026-12-01T12:30:00Z"
    assert (active, left) == (True, 25 * 60)
    shorter, active, _ = window(3, status, T0 + minutes(5))  # start + 3 is past: it ends now
    assert shorter["endTime"] == "2026-12-01T12:03:00Z"
    assert not active


def test_a_new_duration_after_the_window_ended_restarts_it() -> None:
    status, *_ = window(10, None, T0)
    again, active, left = window(20, status, T0 + minutes(60))
    assert again["startTime"] == "2026-12-01T13:00:00Z"
    assert (active, left) == (True, 20 * 60)
    same, active, _ = window(10, status, T0 + minutes(60))  # unchanged duration: stays ended
    assert same == status
    assert not active


def modeling_policy(duration: int = 10, **meta: Any) -> dict[str, Any]:
    doc = helpers.policy("web", "ns", mode="BehaviorModeling", meta={"generation": 1, **meta})
    doc["spec"]["policy"]["modelingOptions"] = {"duration": duration}
    return doc


def did_policy(annotations: dict[str, str] | None = None) -> dict[str, Any]:
    doc = helpers.policy("web", "ns", mode="DefenseInDepth", meta={"generation": 2, "annotations": annotations or {}})
    doc["spec"]["policy"]["defenseInDepth"] = {"appArmor": {"profileType": "BehaviorModel"}}
    return doc


def model(*paths: str) -> Model:
    behavior = Behavior()
    for path in paths:
        behavior.add(FileRule(path, "r"))
    return Model(digest(behavior), tuple(f"{p} r," for p in paths), {"rules": len(paths)})


def test_behavior_modeling_collects_while_the_window_is_open() -> None:
    p = plan(modeling_policy(), {}, None, None, T0)
    assert p.inputs is not None
    assert p.inputs.modeling
    assert p.active
    assert p.recheck_after == 600
    assert p.modeling is not None
    ended = plan(modeling_policy(), {"modeling": p.modeling}, None, model("/a"), T0 + minutes(11))
    assert ended.inputs is not None
    assert not ended.inputs.modeling
    assert ended.recheck_after is None
    assert ended.model is not None
    assert ended.model["rules"] == 1


def test_defense_in_depth_enforces_the_model_it_was_switched_with() -> None:
    first = model("/a")
    p = plan(did_policy(), {}, None, first, T0)
    assert p.inputs is not None
    assert p.inputs.model_rules == ("/a r,",)
    assert p.model_sha256 == first.sha256
    assert p.condition is not None
    assert p.condition["reason"] == "ModelEnforced"


def test_a_changed_model_waits_for_acceptance() -> None:
    first, second = model("/a"), model("/a", "/b")
    ap = {"spec": {"modelSha256": first.sha256}}
    held = plan(did_policy(), {}, ap, second, T0)
    assert held.hold
    assert held.condition is not None
    assert held.condition["reason"] == "ModelChanged"
    assert second.sha256 in held.condition["message"]
    assert held.model is not None
    assert held.model["enforcedSha256"] == first.sha256
    stale_accept = plan(did_policy({api.ACCEPT_MODEL_ANNOTATION: first.sha256}), {}, ap, second, T0)
    assert stale_accept.hold  # accepting an older digest accepts nothing newer
    accepted = plan(did_policy({api.ACCEPT_MODEL_ANNOTATION: second.sha256}), {}, ap, second, T0)
    assert not accepted.hold
    assert accepted.model_sha256 == second.sha256


def test_no_model_is_an_error_unless_a_profile_already_enforces_one() -> None:
    p = plan(did_policy(), {}, None, None, T0)
    assert p.inputs is not None
    assert p.inputs.model_rules is None  # the compile reports ModelMissing
    kept = plan(did_policy(), {}, {"spec": {"modelSha256": "f" * 64}}, None, T0)
    assert kept.hold
    assert kept.condition is not None
    assert kept.condition["reason"] == "ModelMissing"


def test_other_modes_have_no_behaviour_plan() -> None:
    p = plan(helpers.vpol("web"), {}, None, model("/a"), T0)
    assert p.inputs is None
    assert p.modeling is None
    assert not p.hold


def share(node: str, data: dict[str, Any], records: int = 1) -> dict[str, Any]:
    return {
        "metadata": {"name": f"varmor-ns-web.{node}", "uid": f"uid-{node}", "resourceVersion": "1"},
        "spec": {"nodeName": node, "profileName": "varmor-ns-web", "records": records, "lostRecords": 2},
        "storageType": "CRDInternal",
        "data": {"dynamicResult": {"appArmor": data}},
    }


def test_merge_sums_nodes_and_refuses_what_no_profile_may_hold() -> None:
    hostile = {"files": [{"path": "/etc/x r, /** rwlk", "permissions": "r"}, {"path": "/ok", "permissions": "r"}]}
    merged, nodes = merge(
        [
            share("b", {"files": [{"path": "/ok", "permissions": "r", "count": 2}]}, records=2),
            share("a", hostile),
            share("c", {"unknown": []}),
        ],
        ShareCache(),
    )
    assert merged.rules == {FileRule("/ok", "r"): 3}
    assert merged.lost == 6  # every share's loss, the refused one's too
    by_node = {n["nodeName"]: n for n in nodes}
    assert by_node["a"]["refusedRules"] == 1
    assert by_node["a"]["rules"] == 1
    assert by_node["c"]["refused"].startswith("unreadable: ")  # nothing merged
    assert [n["nodeName"] for n in nodes] == ["a", "b", "c"]


def test_counts_saturate_so_a_node_cannot_overflow_the_model() -> None:
    huge = share("a", {"files": [{"path": "/ok", "permissions": "r", "count": 2**63 - 1}]}, records=2**63 - 1)
    merged, _ = merge([huge, share("b", {"files": [{"path": "/ok", "permissions": "r", "count": 5}]})], ShareCache())
    assert merged.rules[FileRule("/ok", "r")] == MAX_COUNT
    assert merged.records == MAX_COUNT


def test_a_share_counts_only_when_its_profiles_current_armorprofile_owns_it() -> None:
    owned = share("a", {})
    owned["metadata"]["ownerReferences"] = [{"kind": "ArmorProfile", "name": "varmor-ns-web", "uid": "ap-1"}]
    assert owned_by(owned, "ap-1")
    assert not owned_by(owned, "ap-2")  # a newer ArmorProfile of that name
    assert not owned_by(share("a", {}), "ap-1")
    renamed = {**owned, "spec": {**owned["spec"], "profileName": "varmor-other-web"}}
    assert not owned_by(renamed, "ap-1")


def test_a_node_counts_when_a_pod_on_it_uses_the_profile() -> None:
    def pod(profile: str | None, annotation: bool = False) -> dict[str, Any]:
        ctx = (
            {"appArmorProfile": {"type": "Localhost", "localhostProfile": profile}}
            if profile and not annotation
            else {}
        )
        meta: dict[str, Any] = {"name": "p", "namespace": "ns"}
        if profile and annotation:
            meta["annotations"] = {f"{api.K8S_APPARMOR_ANNOTATION_PREFIX}app": f"localhost/{profile}"}
        return {"metadata": meta, "spec": {"containers": [{"name": "app", "securityContext": ctx}]}}

    assert uses_profile(pod("varmor-ns-web"), "varmor-ns-web")
    assert uses_profile(pod("varmor-ns-web", annotation=True), "varmor-ns-web")
    assert not uses_profile(pod("varmor-ns-other"), "varmor-ns-web")
    assert not uses_profile(pod(None), "varmor-ns-web")
    assert not uses_profile({"spec": "not a pod"}, "varmor-ns-web")
