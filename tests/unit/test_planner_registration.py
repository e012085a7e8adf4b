"""Pure parts around the planner: dynamic registration, the unprotected audit, status patches."""

from __future__ import annotations

import base64
import copy
from typing import Any

from varmor import api
from varmor.webhook.audit import audit, is_protected
from varmor.webhook.jsonpatch import apply_patch
from varmor.webhook.leader import unprotected_patch
from varmor.webhook.planner import plan_patch
from varmor.webhook.registration import (
    Registration,
    differs,
    mutating_configuration,
    scopes,
    validating_configuration,
)

REG = Registration(name="varmor", namespace="varmor", excluded_namespaces=("kube-system", "varmor"))


def pol(name: str, kind: str, namespace: str | None, profile: str | None = "p") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "resourceVersion": "7"}
    if namespace:
        meta["namespace"] = namespace
    doc: dict[str, Any] = {
        "kind": "VarmorPolicy" if namespace else "VarmorClusterPolicy",
        "metadata": meta,
        "spec": {"target": {"kind": kind, "selector": {"matchLabels": {"app": "web"}}}},
    }
    if profile:
        doc["status"] = {"profileName": f"varmor-{namespace}-{name}" if profile == "p" else profile}
    return doc


def test_no_policies_register_nothing() -> None:
    config = mutating_configuration(REG, [], b"CA")
    assert config["webhooks"] == []
    assert config["metadata"]["name"] == "varmor"


def test_rules_and_namespaces_narrow_to_policies() -> None:
    policies = [pol("a", "Deployment", "team-a"), pol("b", "Deployment", "team-b"), pol("c", "Pod", "varmor")]
    assert scopes(policies) == {"Deployment": frozenset({"team-a", "team-b"}), "Pod": frozenset({"varmor"})}
    config = mutating_configuration(REG, policies, b"CA")
    # Pod policy only in the (always excluded) install namespace: no pods webhook at all.
    assert [w["name"] for w in config["webhooks"]] == ["deployments.mutate.varmor.org"]
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
    (hook,) = config["webhooks"]
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


def dep(name: str, ns: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"template": {"spec": {"containers": [{"name": "app"}]}}},
    }


def test_audit_counts_selected_but_unprotected_workloads() -> None:
    policies = [pol("web", "Deployment", "team-a"), pol("new", "Deployment", "team-b", profile=None)]
    bare = dep("bare", "team-a", {"app": "web"})
    patched = apply_patch(dep("ok", "team-a", {"app": "web"}), plan_patch("Deployment", bare, "varmor-team-a-web"))
    legacy = apply_patch(bare, plan_patch("Deployment", bare, "varmor-team-a-web", use_field=False))
    legacy["metadata"]["name"] = "legacy"
    other = dep("other", "team-a", {"app": "db"})
    pending = dep("pending", "team-b", {"app": "web"})
    deleting = dep("gone", "team-a", {"app": "web"})
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    result = audit(policies, {"Deployment": [bare, patched, legacy, other, pending, deleting]})
    assert result.per_policy == {("team-a", "web"): 1, ("team-b", "new"): 1}
    assert result.per_kind["Deployment"] == 2
    assert result.examples[("team-a", "web")] == ("Deployment team-a/bare",)
    assert is_protected("Deployment", legacy, "varmor-team-a-web")
    assert not is_protected("Deployment", bare, "varmor-team-a-web")


def test_unprotected_patch_is_guarded_and_minimal() -> None:
    policy = pol("web", "Deployment", "team-a")
    policy["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    patch = unprotected_patch(policy, 2, ("Deployment team-a/x",), "2026-01-01T00:00:00Z")
    assert patch is not None
    assert patch["metadata"] == {"resourceVersion": "7"}
    assert patch["status"]["unprotectedWorkloads"] == 2
    ready, unprotected = patch["status"]["conditions"]
    assert ready == {"type": "Ready", "status": "True"}
    assert unprotected["status"] == "True"
    assert "team-a/x" in unprotected["message"]
    policy["status"] |= patch["status"]
    assert unprotected_patch(policy, 2, ("Deployment team-a/x",), "later") is None
    fixed = unprotected_patch(policy, 0, (), "2026-01-02T00:00:00Z")
    assert fixed is not None
    assert fixed["status"]["conditions"][-1]["status"] == "False"
    assert unprotected_patch(pol("clean", "Pod", "a"), 0, (), "t") is None
