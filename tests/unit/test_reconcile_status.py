"""Status math: counts, per-node conditions and readiness from ArmorNode objects only."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import SHA, loaded, node
from varmor.reconcile.status import (
    Outcome,
    ProfileStatus,
    aggregate,
    armor_profile_status,
    phase,
    policy_status,
    status_patch,
)

OLD = "b" * 64
NOW = "2026-11-28T13:00:00Z"
LATER = "2026-11-28T14:00:00Z"


def test_all_loaded_is_ready() -> None:
    ps = aggregate("varmor-demo-web", "demo", SHA, [node("n1", profiles=loaded()), node("n2", profiles=loaded())])
    assert (ps.desired, ps.current, ps.conditions, ps.ready) == (2, 2, (), True)


def test_unsupported_nodes_are_listed_but_do_not_block() -> None:
    nodes = [
        node("n1", profiles=loaded()),
        node("n2", phase="Unsupported", reason="AppArmor is not enabled"),
    ]
    ps = aggregate("varmor-demo-web", "demo", SHA, nodes)
    assert (ps.desired, ps.current, ps.ready) == (1, 1, True)
    assert ps.nodes("Unsupported") == ["n2"]
    assert ps.conditions[0].message == "AppArmor is not enabled"
    status = policy_status(Outcome(1, "varmor-demo-web", profile_created=True, profile=ps), None, NOW)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert "n2" in ready["message"]


def test_no_supported_nodes_is_not_ready() -> None:
    ps = aggregate("varmor-demo-web", "demo", SHA, [node("n1", phase="Unsupported")])
    assert (ps.desired, ps.ready) == (0, False)
    status = policy_status(Outcome(1, "p", profile_created=True, profile=ps), None, NOW)
    assert status["phase"] == "Pending"
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["reason"] == "NoSupportedNodes"


def test_agents_not_ready_are_not_desired() -> None:
    ps = aggregate("varmor-demo-web", "demo", SHA, [node("n1", profiles=loaded()), node("n2", ready=False)])
    assert (ps.desired, ps.current, ps.ready) == (1, 1, True)


def test_failure_at_current_hash_is_load_failed_with_parser_message() -> None:
    failures = {"varmor-demo-web": {"namespace": "demo", "sha256": SHA, "message": "apparmor_parser: syntax error"}}
    ps = aggregate("varmor-demo-web", "demo", SHA, [node("n1", profiles=loaded()), node("n2", failures=failures)])
    assert (ps.desired, ps.current, ps.failed, ps.ready) == (2, 1, ["n2"], False)
    status = policy_status(Outcome(3, "p", profile_created=True, profile=ps), None, NOW)
    assert status["phase"] == "Error"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "LoadFailed"
    assert "syntax error" in ready["message"]
    body = armor_profile_status(ps, None, NOW)
    assert body["conditions"] == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "LoadFailed",
            "message": "apparmor_parser: syntax error",
            "nodeName": "n2",
            "lastTransitionTime": NOW,
        }
    ]


def test_old_failure_with_current_load_counts_as_current() -> None:
    failures = {"varmor-demo-web": {"namespace": "demo", "sha256": OLD, "message": "old"}}
    ps = aggregate("varmor-demo-web", "demo", SHA, [node("n1", profiles=loaded(), failures=failures)])
    assert (ps.current, ps.conditions) == (1, ())


def test_stale_hash_is_visible_and_not_current() -> None:
    ps = aggregate("varmor-demo-web", "demo", SHA, [node("n1", profiles=loaded(OLD)), node("n2", profiles=loaded())])
    assert (ps.desired, ps.current, ps.ready) == (2, 1, False)
    assert ps.nodes("Stale") == ["n1"]
    status = policy_status(Outcome(2, "p", profile_created=True, profile=ps), None, NOW)
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["reason"] == "Stale"


def test_same_name_from_another_namespace_is_not_ours() -> None:
    ps = aggregate("varmor-demo-web", "demo", SHA, [node("n1", profiles=loaded(ns="other"))])
    assert (ps.current, ps.pending) == (0, ("n1",))


def test_pending_nodes_named_in_message() -> None:
    ps = aggregate("varmor-demo-web", "demo", SHA, [node("n1", profiles=loaded()), node("n2")])
    status = policy_status(Outcome(1, "p", profile_created=True, profile=ps), None, NOW)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["reason"], status["ready"]) == ("Loading", False)
    assert "1/2" in ready["message"]
    assert "n2" in ready["message"]


def test_invalid_policy_is_error_without_profile_name() -> None:
    o = Outcome(1, None, error_reason="Invalid", error_message="spec.x: bad")
    status = policy_status(o, None, NOW)
    assert "profileName" not in status
    assert (status["phase"], status["ready"]) == ("Error", False)
    created = next(c for c in status["conditions"] if c["type"] == "Created")
    assert (created["status"], created["reason"], created["message"]) == ("False", "Invalid", "spec.x: bad")


def test_invalid_update_keeps_previous_profile_in_force() -> None:
    ps = ProfileStatus(1, 1)
    o = Outcome(2, "p", error_reason="Invalid", error_message="bad", profile_created=True, profile=ps)
    status = policy_status(o, None, NOW)
    assert status["phase"] == "Error"
    assert status["ready"] is True
    assert status["profileName"] == "p"
    updated = next(c for c in status["conditions"] if c["type"] == "Updated")
    assert updated["status"] == "False"
    assert "previous profile stays in force" in updated["message"]


def test_transition_times_move_only_on_change_and_foreign_conditions_survive() -> None:
    ps = ProfileStatus(1, 1)
    first = policy_status(Outcome(1, "p", profile_created=True, profile=ps), None, NOW)
    first["conditions"].append({"type": "Unprotected", "status": "True", "reason": "WebhookDown"})
    first["unprotectedWorkloads"] = 2
    again = policy_status(Outcome(1, "p", profile_created=True, profile=ps), first, LATER)
    assert status_patch(again, first) is None  # nothing changed: no write needed
    worse = policy_status(Outcome(1, "p", profile_created=True, profile=ProfileStatus(2, 1)), first, LATER)
    times = {c["type"]: c.get("lastTransitionTime") for c in worse["conditions"]}
    assert times["Created"] == NOW
    assert times["Ready"] == LATER
    patch = status_patch(worse, first)
    assert patch is not None
    assert "unprotectedWorkloads" not in patch  # an audit finding carried unchanged is not rewritten
    assert set(patch) == {"desiredNumberLoaded", "conditions", "ready", "phase"}
    assert any(c["type"] == "Unprotected" for c in worse["conditions"])


def test_the_audits_condition_comes_from_the_api_not_the_leaders_memory() -> None:
    """Before its first audit, a (new) leader carries the audit's condition as the API has
    it: what the previous leader found must not be dropped until the next audit."""
    ps = ProfileStatus(1, 1)
    written = policy_status(Outcome(1, "p", profile_created=True, profile=ps), None, NOW)
    unprotected = {"type": "Unprotected", "status": "True", "reason": "AdmittedWithoutProfile", "message": "1"}
    current = {**written, "conditions": [*written["conditions"], unprotected], "unprotectedWorkloads": 1}
    worse = policy_status(Outcome(1, "p", profile_created=True, profile=ProfileStatus(2, 1)), written, LATER, current)
    assert unprotected in worse["conditions"]
    # ...and once the audit says all is protected, that is what the leader carries.
    fixed = {**unprotected, "status": "False", "reason": "AllProtected"}
    current = {**current, "conditions": [*written["conditions"], fixed]}
    again = policy_status(Outcome(1, "p", profile_created=True, profile=ps), worse, LATER, current)
    assert [c for c in again["conditions"] if c["type"] == "Unprotected"] == [fixed]


def test_armor_profile_condition_times_are_stable() -> None:
    ps = aggregate("varmor-demo-web", "demo", SHA, [node("n1", phase="Unsupported", reason="r")])
    first = armor_profile_status(ps, None, NOW)
    assert armor_profile_status(ps, first, LATER) == first


_node_states = st.sampled_from(["current", "stale", "failed", "pending", "unsupported", "not-ready"])


@given(st.lists(_node_states, max_size=12))
def test_counts_are_consistent(states: list[str]) -> None:
    nodes = []
    for i, s in enumerate(states):
        name = f"n{i:02d}"
        if s == "current":
            nodes.append(node(name, profiles=loaded()))
        elif s == "stale":
            nodes.append(node(name, profiles=loaded(OLD)))
        elif s == "failed":
            nodes.append(node(name, failures={"varmor-demo-web": {"namespace": "demo", "sha256": SHA, "message": "x"}}))
        elif s == "pending":
            nodes.append(node(name))
        elif s == "unsupported":
            nodes.append(node(name, phase="Unsupported"))
        else:
            nodes.append(node(name, ready=False))
    ps = aggregate("varmor-demo-web", "demo", SHA, nodes)
    count = states.count
    assert ps.desired == len(states) - count("unsupported") - count("not-ready")
    assert ps.current == count("current")
    assert len(ps.conditions) == count("stale") + count("failed") + count("unsupported")
    assert ps.ready == (ps.desired > 0 and count("current") == ps.desired)
    o = Outcome(1, "p", profile_created=True, profile=ps)
    assert (phase(o) == "Error") == (count("failed") > 0)
    # Order of ArmorNodes never changes the result.
    assert aggregate("varmor-demo-web", "demo", SHA, list(reversed(nodes))) == ps


def test_status_patch_clears_fields_no_longer_set() -> None:
    accepted = policy_status(Outcome(1, "p", profile_created=True, profile=ProfileStatus(1, 1)), None, NOW)
    rejected = policy_status(Outcome(2, None, error_reason="ProfileNameConflict", error_message="m"), accepted, LATER)
    patch = status_patch(rejected, accepted)
    assert patch is not None
    assert patch["profileName"] is None


def test_armor_profile_status_names_the_content_its_counts_are_about() -> None:
    """Spec and status are written separately: a reader compares observedSha256 with
    spec.profile.sha256 before trusting the counts."""
    ps = aggregate("varmor-demo-web", "demo", SHA, [node("n1", profiles=loaded())])
    assert armor_profile_status(ps, None, NOW)["observedSha256"] == SHA
