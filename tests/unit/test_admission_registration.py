"""Pure parts around the planner: dynamic registration, the unprotected audit, status patches."""

from __future__ import annotations

import base64
import copy
import datetime as dt
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import helpers
from tests.helpers import deployment
from varmor import api
from varmor.admission.jsonpatch import apply_patch
from varmor.admission.planner import plan_patch
from varmor.admission.registration import (
    EPHEMERAL_WEBHOOK,
    MAX_LISTED_NAMESPACES,
    MAX_SELECTOR_BYTES,
    MAX_SELECTOR_ENTRIES,
    NAMESPACE_LABEL,
    Registration,
    differs,
    mutating_configuration,
    scopes,
    validating_configuration,
)
from varmor.admission.selection import select_policy
from varmor.admission.selector import compile_selector
from varmor.certs import pki
from varmor.reconcile.audit import AuditResult, audit, findings_of, is_protected
from varmor.reconcile.status import Outcome, policy_status, status_patch

REG = Registration(name="varmor", namespace="varmor", excluded_namespaces=("kube-system", "varmor"))


def pol(name: str, kind: str, namespace: str | None, profile: str | None = "p") -> dict[str, Any]:
    """A policy for `app: web` (cluster-scoped when `namespace` is None); `profile="p"`:
    accepted under the leader's name for it."""
    return helpers.policy(
        name,
        namespace,
        kind,
        cluster=namespace is None,
        selector={"matchLabels": {"app": "web"}},
        profile=f"varmor-{namespace}-{name}" if profile == "p" else profile,
        meta={"resourceVersion": "7"},
    )


def kind_hooks(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The entries for the target kinds (all but the ephemeral containers' one)."""
    return [w for w in config["webhooks"] if w["name"] != EPHEMERAL_WEBHOOK]


def test_no_policies_register_nothing() -> None:
    config = mutating_configuration(REG, [], b"CA")
    assert config["webhooks"] == []
    assert config["metadata"]["name"] == "varmor"


def test_rules_and_namespaces_narrow_to_policies() -> None:
    policies = [pol("a", "Deployment", "team-a"), pol("b", "Deployment", "team-b"), pol("c", "Pod", "varmor")]
    assert scopes(policies) == {"Deployment": frozenset({"team-a", "team-b"}), "Pod": frozenset({"varmor"})}
    config = mutating_configuration(REG, policies, b"CA")
    # Pod policy only in the (always excluded) install namespace: no pods webhook at all.
    assert [w["name"] for w in config["webhooks"]] == ["deployments.mutate.varmor.org", EPHEMERAL_WEBHOOK]
    hook = config["webhooks"][0]
    assert hook["rules"][0]["resources"] == ["deployments"]
    assert hook["rules"][0]["operations"] == ["CREATE", "UPDATE"]
    assert hook["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "varmor"]},
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]},
    ]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["timeoutSeconds"] == 5
    assert hook["sideEffects"] == "None"
    assert hook["clientConfig"]["service"] == {
        "namespace": "varmor",
        "name": "varmor-webhook",
        "path": "/mutate",
        "port": 443,
    }
    assert base64.b64decode(hook["clientConfig"]["caBundle"]) == b"CA"


def test_cluster_policy_opens_every_namespace_but_the_excluded() -> None:
    config = mutating_configuration(REG, [pol("a", "Pod", "team-a"), pol("c", "Pod", None)], b"CA")
    (hook,) = kind_hooks(config)
    assert hook["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "varmor"]}
    ]
    assert hook["rules"][0]["operations"] == ["CREATE"]


def test_url_mode_owner_and_policy_knobs() -> None:
    reg = Registration(name="v", namespace="ns", url="https://127.0.0.1:8443", failure_policy="Fail", timeout_seconds=3)
    owner = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "name": "v-manager", "uid": "u"}
    config = validating_configuration(reg, b"CA", owner)
    (hook,) = config["webhooks"]
    assert hook["clientConfig"]["url"] == "https://127.0.0.1:8443/validate"
    assert "service" not in hook["clientConfig"]
    assert hook["failurePolicy"] == "Fail"
    assert hook["timeoutSeconds"] == 3
    assert config["metadata"]["ownerReferences"] == [owner]
    assert set(hook["rules"][0]["resources"]) == {"varmorpolicies", "varmorclusterpolicies"}


def test_differs_ignores_server_defaults_only() -> None:
    desired = mutating_configuration(REG, [pol("a", "Pod", "team-a")], b"CA")
    served = copy.deepcopy(desired)
    served["metadata"] |= {"resourceVersion": "1", "uid": "x", "generation": 1}
    served["metadata"]["labels"]["extra"] = "x"
    served["webhooks"][0]["clientConfig"]["service"]["port"] = 443
    assert not differs(served, desired)
    assert differs(served, mutating_configuration(REG, [pol("a", "Pod", "team-b")], b"CA"))
    assert differs(served, mutating_configuration(REG, [pol("a", "Pod", "team-a")], b"CA2"))
    assert differs({"metadata": {"name": "varmor"}}, desired) is True
    empty = mutating_configuration(REG, [], b"CA")
    assert not differs({"metadata": {"name": "varmor", "labels": {api.MANAGED_BY_LABEL: "varmor"}}}, empty)


def test_audit_counts_selected_but_unprotected_workloads() -> None:
    policies = [pol("web", "Deployment", "team-a"), pol("new", "Deployment", "team-b", profile=None)]
    bare = deployment("bare", {"app": "web"}, namespace="team-a")
    patched = apply_patch(
        deployment("ok", {"app": "web"}, namespace="team-a"), plan_patch("Deployment", bare, "varmor-team-a-web")
    )
    legacy = apply_patch(bare, plan_patch("Deployment", bare, "varmor-team-a-web", use_field=False))
    legacy["metadata"]["name"] = "legacy"
    other = deployment("other", {"app": "db"}, namespace="team-a")
    pending = deployment("pending", {"app": "web"}, namespace="team-b")
    deleting = deployment("gone", {"app": "web"}, namespace="team-a")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    result = audit(policies, {"Deployment": [bare, patched, legacy, other, pending, deleting]})
    assert result.per_policy == {("team-a", "web"): 1, ("team-b", "new"): 1}
    assert result.per_kind["Deployment"] == 2
    assert result.examples[("team-a", "web")] == ("Deployment team-a/bare: container app runs without a profile",)
    assert is_protected("Deployment", legacy, "varmor-team-a-web")
    assert not is_protected("Deployment", bare, "varmor-team-a-web")


KEY = ("team-a", "web")


def unprotected(count: int, *examples: str) -> AuditResult:
    return AuditResult(per_policy={KEY: count}, examples={KEY: examples})


def audited_status(policy: dict[str, Any], result: AuditResult, key: tuple[str, str], now: str) -> dict[str, Any]:
    """The status the policy controller writes after this audit (it is the one writer)."""
    status = policy.get("status") or {}
    findings = findings_of(result, ("VarmorPolicy", *key))
    return policy_status(Outcome(generation=1, findings=findings), status, now, current=status)


def audit_conditions_of(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"] if c["type"] in ("Unprotected", "Conflict")}


def test_unprotected_findings_are_written_with_the_status_and_only_on_change() -> None:
    policy = pol("web", "Deployment", "team-a")
    first = audited_status(policy, unprotected(2, "Deployment team-a/x"), KEY, "2026-01-01T00:00:00Z")
    assert first["unprotectedWorkloads"] == 2
    condition = audit_conditions_of(first)["Unprotected"]
    assert condition["status"] == "True"
    assert "team-a/x" in condition["message"]
    policy["status"] = first
    again = audited_status(policy, unprotected(2, "Deployment team-a/x"), KEY, "later")
    assert status_patch(again, first) is None  # an unchanged audit writes nothing
    fixed = audited_status(policy, unprotected(0), KEY, "2026-01-02T00:00:00Z")
    assert fixed["unprotectedWorkloads"] == 0
    assert audit_conditions_of(fixed)["Unprotected"]["status"] == "False"  # turns False, never vanishes
    clean = audited_status(pol("clean", "Pod", "a"), AuditResult(), ("a", "clean"), "t")
    assert audit_conditions_of(clean) == {}


def test_a_policy_that_loses_workloads_to_another_gets_a_conflict_condition() -> None:
    by_name = sel_pol("by-name", "Deployment", "team-a", name="web")  # a name match takes precedence
    by_label = sel_pol("by-label", "Deployment", "team-a", selector={"matchLabels": {"app": "web"}})
    result = audit([by_name, by_label], {"Deployment": [deployment("web", {"app": "web"}, namespace="team-a")]})
    assert result.lost == {("team-a", "by-name"): 0, ("team-a", "by-label"): 1}
    assert result.lost_examples[("team-a", "by-label")] == ("Deployment team-a/web",)
    status = audited_status(by_label, result, ("team-a", "by-label"), "2026-01-01T00:00:00Z")
    conflict = audit_conditions_of(status)["Conflict"]
    assert conflict["status"] == "True"
    assert conflict["reason"] == "LostToPolicy"
    assert "team-a/web" in conflict["message"]
    winner = audited_status(by_name, result, ("team-a", "by-name"), "2026-01-01T00:00:00Z")
    assert list(audit_conditions_of(winner)) == ["Unprotected"]  # the winner only learns of its gap
    # Once the targets are disjoint the condition turns False (it does not just vanish).
    by_label["status"] = status
    resolved = audit([by_name, by_label], {"Deployment": [deployment("api", {"app": "api"}, namespace="team-a")]})
    later = audited_status(by_label, resolved, ("team-a", "by-label"), "2026-01-02T00:00:00Z")
    conflict = audit_conditions_of(later)["Conflict"]
    assert (conflict["status"], conflict["reason"]) == ("False", "NoConflict")


def sel_pol(policy_name: str, kind: str, namespace: str | None, **target: Any) -> dict[str, Any]:
    doc = pol(policy_name, kind, namespace)
    doc["spec"]["target"] = {"kind": kind, **target}
    return doc


def hooks_for(
    policies: list[dict[str, Any]], limit: int = MAX_LISTED_NAMESPACES, *, ephemeral: bool = False
) -> list[tuple[Any, list[dict[str, Any]]]]:
    """(objectSelector, namespace expressions) per webhook entry (with `ephemeral`, the
    ephemeral containers' one last)."""
    config = mutating_configuration(REG, policies, b"CA", max_listed_namespaces=limit)
    return [
        (w["objectSelector"], w["namespaceSelector"]["matchExpressions"])
        for w in (config["webhooks"] if ephemeral else kind_hooks(config))
    ]


NOT_EXCLUDED = {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "varmor"]}


def ns_in(*names: str) -> dict[str, Any]:
    return {"key": "kubernetes.io/metadata.name", "operator": "In", "values": list(names)}


def test_object_selectors_narrow_to_the_policies_selectors() -> None:
    web = {"matchLabels": {"app": "web"}}
    db = {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["db"]}, {"key": "x", "operator": "Exists"}]}
    policies = [
        sel_pol("a", "Pod", "team-a", selector=web),
        sel_pol("b", "Pod", "team-b", selector=web),
        sel_pol("c", "Pod", "team-b", selector=db),
    ]
    assert hooks_for(policies) == [
        (db, [NOT_EXCLUDED, ns_in("team-b")]),  # entries in the order of their selectors' JSON
        (web, [NOT_EXCLUDED, ns_in("team-a", "team-b")]),
    ]
    names = [w["name"] for w in kind_hooks(mutating_configuration(REG, policies, b"CA"))]
    assert names == ["pods.mutate.varmor.org", "pods-1.mutate.varmor.org"]


def test_name_targets_take_their_namespaces_whole_and_cluster_ones_everything() -> None:
    web = {"matchLabels": {"app": "web"}}
    policies = [
        sel_pol("byname", "Deployment", "team-a", name="web"),
        sel_pol("a", "Deployment", "team-a", selector=web),  # covered by the name target's entry
        sel_pol("b", "Deployment", "team-b", selector=web),
    ]
    assert hooks_for(policies) == [({}, [NOT_EXCLUDED, ns_in("team-a")]), (web, [NOT_EXCLUDED, ns_in("team-b")])]
    cluster_selector = sel_pol("cs", "Deployment", None, selector=web)
    covered = {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["kube-system", "team-a", "varmor"]}
    assert hooks_for([*policies, cluster_selector]) == [({}, [NOT_EXCLUDED, ns_in("team-a")]), (web, [covered])]
    assert hooks_for([*policies, sel_pol("all", "Deployment", None, selector={})]) == [({}, [NOT_EXCLUDED])]


def test_too_many_distinct_selectors_fall_back_to_one_entry_per_kind() -> None:
    policies = [sel_pol(f"p{i}", "Pod", f"ns-{i % 3}", selector={"matchLabels": {"app": f"a{i}"}}) for i in range(9)]
    assert hooks_for(policies) == [({}, [NOT_EXCLUDED, ns_in("ns-0", "ns-1", "ns-2")])]
    assert len(hooks_for(policies[:8])) == 8


def test_namespace_lists_are_bounded_by_widening_the_largest_first() -> None:
    """Past the bound, the entry listing the most namespaces (the first of equals) selects by
    the exclusion list alone, keeping its objectSelector, until the rest fit."""
    web = {"matchLabels": {"app": "web"}}
    policies = [
        sel_pol("d", "Deployment", "a", selector=web),
        *(sel_pol(f"p{ns}", "Pod", ns, selector=web) for ns in ("a", "b", "c")),
    ]
    assert hooks_for(policies, 7, ephemeral=True) == [
        (web, [NOT_EXCLUDED, ns_in("a")]),
        (web, [NOT_EXCLUDED, ns_in("a", "b", "c")]),
        ({}, [NOT_EXCLUDED, ns_in("a", "b", "c")]),
    ]
    assert hooks_for(policies, 4, ephemeral=True) == [
        (web, [NOT_EXCLUDED, ns_in("a")]),
        (web, [NOT_EXCLUDED]),  # the Pod entry came before the ephemeral one (3 names each)
        ({}, [NOT_EXCLUDED, ns_in("a", "b", "c")]),
    ]
    assert hooks_for(policies, 0, ephemeral=True) == [
        (web, [NOT_EXCLUDED]),
        (web, [NOT_EXCLUDED]),
        ({}, [NOT_EXCLUDED]),
    ]


def test_a_widened_catch_all_replaces_its_kinds_other_entries() -> None:
    web = {"matchLabels": {"app": "web"}}
    policies = [
        *(sel_pol(f"n{ns}", "Pod", ns, name="web") for ns in ("a", "b", "c")),
        sel_pol("s", "Pod", "d", selector=web),
    ]
    assert hooks_for(policies) == [({}, [NOT_EXCLUDED, ns_in("a", "b", "c")]), (web, [NOT_EXCLUDED, ns_in("d")])]
    # 3 + 1 + 4 (ephemeral) names: the ephemeral entry goes first, then the catch-all.
    assert hooks_for(policies, 4, ephemeral=True) == [
        ({}, [NOT_EXCLUDED, ns_in("a", "b", "c")]),
        (web, [NOT_EXCLUDED, ns_in("d")]),
        ({}, [NOT_EXCLUDED]),
    ]
    assert hooks_for(policies, 3, ephemeral=True) == [({}, [NOT_EXCLUDED]), ({}, [NOT_EXCLUDED])]
    # A selector entry for every namespace but the catch-all's lists the same names: the
    # catch-all comes first, widens, and takes the whole kind.
    cluster = [*policies[:3], sel_pol("cs", "Pod", None, selector=web)]
    covered = {"key": NAMESPACE_LABEL, "operator": "NotIn", "values": ["a", "b", "c", "kube-system", "varmor"]}
    assert hooks_for(cluster) == [({}, [NOT_EXCLUDED, ns_in("a", "b", "c")]), (web, [covered])]
    assert hooks_for(cluster, 5) == [({}, [NOT_EXCLUDED])]


def test_ten_thousand_namespaces_stay_far_below_the_object_size_limit() -> None:
    """One policy in each of 10,000 namespaces (names of the longest kind): unbounded, the
    pods and ephemeral entries would list every name (over 1.3 MB); bounded, they select by
    exclusion and the configuration is a few kilobytes."""
    policies = [
        sel_pol(f"p{i}", "Pod", f"{i:05d}-" + "n" * 57, selector={"matchLabels": {"app": f"a{i}"}})
        for i in range(10_000)
    ]
    unbounded = mutating_configuration(REG, policies, b"CA", max_listed_namespaces=10**6)
    assert len(orjson.dumps(unbounded)) > 1_300_000
    config = mutating_configuration(REG, policies, b"CA")
    assert [(w["objectSelector"], w["namespaceSelector"]["matchExpressions"]) for w in config["webhooks"]] == [
        ({}, [NOT_EXCLUDED]),
        ({}, [NOT_EXCLUDED]),
    ]
    assert len(orjson.dumps(config)) < 4096


def test_the_largest_configuration_the_bounds_allow_stays_under_200_kb() -> None:
    """Every kind at 8 selectors just under the selector budget, 1,000 namespaces of 63
    characters listed, 33 entries, a real CA certificate: the documented ceiling."""
    ca = pki.new_ca("registration-test", dt.timedelta(hours=1)).cert_pem
    policies = []
    for k, kind in enumerate(api.TARGET_KINDS):
        for s in range(8):
            values = [f"v{k}-{s}-{j:03d}-" + "x" * 10 for j in range(88)]
            selector = {"matchExpressions": [{"key": "app", "operator": "In", "values": values}]}
            policies += [
                sel_pol(f"p{k}-{s}-{n}", kind, f"{(k * 8 + s) * 40 + n:05d}-" + "n" * 57, selector=selector)
                for n in range(40)
            ]
    config = mutating_configuration(REG, policies, ca)
    assert len(config["webhooks"]) == 4 * MAX_SELECTOR_ENTRIES + 1
    assert len(orjson.dumps(config)) < 200 * 1024
    assert len(orjson.dumps(mutating_configuration(REG, policies, ca, max_listed_namespaces=10**6))) > 250 * 1024


def test_large_selectors_fall_back_to_one_entry_per_kind() -> None:
    big = [
        {"matchExpressions": [{"key": "app", "operator": "In", "values": [f"{c}{i:04d}" for i in range(1200)]}]}
        for c in "ab"
    ]
    assert len(orjson.dumps(big[0])) > MAX_SELECTOR_BYTES / 2
    policies = [sel_pol(f"p{i}", "Pod", "a", selector=sel) for i, sel in enumerate(big)]
    assert hooks_for(policies) == [({}, [NOT_EXCLUDED, ns_in("a")])]
    assert hooks_for(policies[:1]) == [(big[0], [NOT_EXCLUDED, ns_in("a")])]


labels_st = st.dictionaries(st.sampled_from(["app", "tier", "x"]), st.sampled_from(["web", "db"]), max_size=3)
selectors_st = st.one_of(
    st.just({}),
    st.builds(lambda m: {"matchLabels": m}, labels_st),
    st.builds(
        lambda key, op, values: {
            "matchExpressions": [{"key": key, "operator": op, **({"values": values} if values else {})}]
        },
        st.sampled_from(["app", "tier"]),
        st.sampled_from(["In", "NotIn"]),
        st.lists(st.sampled_from(["web", "db"]), min_size=1, max_size=2, unique=True),
    ),
    st.builds(
        lambda key, op: {"matchExpressions": [{"key": key, "operator": op}]},
        st.sampled_from(["app", "x"]),
        st.sampled_from(["Exists", "DoesNotExist"]),
    ),
)
namespaces_st = st.sampled_from(["team-a", "team-b", "varmor", None])


@st.composite
def policy_sets(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for i in range(draw(st.integers(0, 11))):
        ns = draw(namespaces_st)
        if draw(st.integers(0, 4)) == 0:
            out.append(sel_pol(f"p{i}", "Pod", ns, name=draw(st.sampled_from(["web", "db"]))))
        else:
            out.append(sel_pol(f"p{i}", "Pod", ns, selector=draw(selectors_st)))
    return out


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return compile_selector(selector)(labels)


@settings(max_examples=400, deadline=None)
@given(
    policies=policy_sets(),
    labels=labels_st,
    namespace=st.sampled_from(["team-a", "team-b", "other"]),
    limit=st.sampled_from([0, 1, 2, 3, MAX_LISTED_NAMESPACES]),
)
def test_every_object_a_policy_selects_is_sent_to_the_webhook(
    policies: list[dict[str, Any]], labels: dict[str, str], namespace: str, limit: int
) -> None:
    """The safety property of narrowing: the API server's selectors never hide an object
    from varmor that a policy would select (a hidden one would run unconfined), also once
    the namespace bound (`limit`) widens entries."""
    obj = {"metadata": {"name": "web", "labels": labels}, "spec": {"containers": [{"name": "c"}]}}
    selection = select_policy(policies, "Pod", obj, namespace)
    sent = any(
        _matches(object_selector, labels) and _matches({"matchExpressions": ns_exprs}, {NAMESPACE_LABEL: namespace})
        for object_selector, ns_exprs in hooks_for(policies, limit)
    )
    if selection.selected:
        assert sent, (policies, labels, namespace)


def test_ephemeral_containers_are_sent_from_every_namespace_with_a_policy() -> None:
    """`kubectl debug` adds them through pods/ephemeralcontainers; a workload policy's Pods
    carry its profile, not its selector, so the entry takes every Pod there."""
    config = mutating_configuration(REG, [pol("a", "Deployment", "team-a"), pol("b", "Pod", "team-b")], b"CA")
    (hook,) = [w for w in config["webhooks"] if w["name"] == EPHEMERAL_WEBHOOK]
    assert hook["rules"] == [
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["UPDATE"],
            "resources": ["pods/ephemeralcontainers"],
            "scope": "Namespaced",
        }
    ]
    assert hook["objectSelector"] == {}
    assert hook["namespaceSelector"]["matchExpressions"] == [NOT_EXCLUDED, ns_in("team-a", "team-b")]
    cluster = mutating_configuration(REG, [pol("a", "Deployment", "team-a"), pol("c", "StatefulSet", None)], b"CA")
    (everywhere,) = [w for w in cluster["webhooks"] if w["name"] == EPHEMERAL_WEBHOOK]
    assert everywhere["namespaceSelector"]["matchExpressions"] == [NOT_EXCLUDED]
    assert mutating_configuration(REG, [], b"CA")["webhooks"] == []
