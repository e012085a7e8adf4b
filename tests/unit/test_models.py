"""The typed models accept every object varmor writes today and encode it back unchanged,
and they agree with the closed sets the code uses (so the code can move onto them)."""

from __future__ import annotations

import ast
import copy
import datetime as dt
import hashlib
import typing
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from varmor import api, crdgen, loadreport, models, policy
from varmor.admission.selector import OPERATORS
from varmor.loadreport import Ledger
from varmor.models import ArmorNode, ArmorNodeStatus, ArmorProfile, ArmorProfileStatus, PolicyStatus, VarmorPolicy
from varmor.nodeexec import state
from varmor.nodeexec.state import Desired, Failed, Loaded, NodeState, node_status, outcome
from varmor.reconcile import status as rstatus
from varmor.reconcile.findings import Findings, audit_conditions
from varmor.reconcile.profiles import desired_armor_profile
from varmor.reconcile.rollout import Job, Report, rollout_condition
from varmor.reconcile.status import Outcome, ProfileStatus, aggregate, armor_profile_status, policy_status
from varmor.rules import load_catalog

ROOT = Path(__file__).resolve().parents[2]
NOW = "2026-11-28T13:00:00Z"
LATER = "2026-11-28T13:05:00Z"
TEXT = "profile varmor-demo-web flags=(attach_disconnected,mediate_deleted) {\n  file,\n}\n"
SHA = hashlib.sha256(TEXT.encode()).hexdigest()


def roundtrip(obj: Any, tp: Any) -> Any:
    return msgspec.to_builtins(msgspec.convert(obj, tp))


def policy_docs() -> list[dict[str, Any]]:
    paths = [ROOT / "examples" / "demo-policy.yaml", *sorted((ROOT / "tests" / "unit" / "golden").glob("*.yaml"))]
    return [yaml.safe_load(p.read_text(encoding="utf-8")) for p in paths]


def demo_policy(**spec: Any) -> dict[str, Any]:
    doc = policy_docs()[0]
    doc["metadata"]["uid"] = "0b7f0a51-1d46-4a4e-9d55-2d0d1b5a8f00"
    doc["spec"].update(spec)
    return doc


def with_crd_defaults(obj: Any, schema: dict[str, Any]) -> Any:
    """`obj` as the API server stores it: defaults filled in wherever the parent exists."""
    if isinstance(obj, dict) and "properties" in schema:
        out = {}
        for key, sub in schema["properties"].items():
            if key in obj:
                out[key] = with_crd_defaults(obj[key], sub)
            elif "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
        return {**obj, **out}
    if isinstance(obj, list) and "items" in schema:
        return [with_crd_defaults(v, schema["items"]) for v in obj]
    return obj


def crd_schema(kind: str) -> dict[str, Any]:
    crd = next(c for c in crdgen.crds() if c["spec"]["names"]["kind"] == kind)
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


# -- closed sets agree with the code ---------------------------------------------------
def test_closed_sets_agree_with_the_code() -> None:
    assert typing.get_args(models.TargetKind) == api.TARGET_KINDS
    assert typing.get_args(models.PolicyMode) == policy.MODES
    assert typing.get_args(models.ProfileMode) == state.MODES
    assert typing.get_args(models.PolicyPhase) == typing.get_args(rstatus.Phase)
    assert set(models.CATEGORY_FIELDS) == {rule.category for rule in load_catalog()}
    operator = msgspec.structs.fields(models.SelectorRequirement)[1]
    assert typing.get_args(typing.get_args(operator.type)[0]) == OPERATORS


def test_kinds_cover_every_resource() -> None:
    resources = [r for r, _ in models.KINDS]
    assert resources == [
        api.VARMOR_POLICY,
        api.VARMOR_CLUSTER_POLICY,
        api.ARMOR_PROFILE,
        api.ARMOR_NODE,
        api.ARMOR_BEHAVIOR,
        api.ARMOR_PROFILE_MODEL,
    ]
    assert VarmorPolicy().kind == api.VARMOR_POLICY.kind
    assert msgspec.to_builtins(ArmorNode()) == {"apiVersion": api.API_VERSION, "kind": "ArmorNode", "metadata": {}}


# -- ArmorProfile --------------------------------------------------------------------
@pytest.mark.parametrize("update_existing", [False, True])
def test_desired_armor_profile_round_trips(update_existing: bool) -> None:
    body = desired_armor_profile(
        demo_policy(updateExistingWorkloads=update_existing), "varmor-demo-web", "demo", TEXT, "enforce", SHA
    )
    assert roundtrip(body, ArmorProfile) == body
    decoded = msgspec.convert(body, ArmorProfile)
    assert isinstance(decoded.spec, models.ArmorProfileSpec)
    assert decoded.spec.profile.sha256 == SHA
    assert decoded.spec.update_existing_workloads is update_existing
    refs = decoded.metadata.owner_references
    assert not isinstance(refs, msgspec.UnsetType)
    assert refs[0].controller is True
    assert refs[0].kind == api.VARMOR_POLICY.kind


def test_armor_profile_by_name_with_containers_round_trips() -> None:
    target = {"kind": "StatefulSet", "name": "db", "containers": ["db", "sidecar"]}
    body = desired_armor_profile(demo_policy(target=target), "varmor-demo-db", "demo", TEXT, "complain", SHA)
    assert roundtrip(body, ArmorProfile) == body


def node(name: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"phase": "Supported", "ready": True, **status}}


def test_armor_profile_status_round_trips() -> None:
    entry = {"namespace": "demo", "sha256": SHA, "mode": "enforce"}
    nodes = [
        node("n1", profiles={"varmor-demo-web": entry}),
        node("n2", failures={"varmor-demo-web": {"namespace": "demo", "sha256": SHA, "message": "parser: bad"}}),
        node("n3", profiles={"varmor-demo-web": {**entry, "sha256": "0" * 64}}),
        node("n4", phase="Unsupported", reason="AppArmor is not enabled"),
        node("n5", heartbeatTime="2026-11-28T12:00:00Z"),
        node("n6"),
    ]
    liveness = rstatus.Liveness(now=dt.datetime(2026, 11, 28, 13, 0, tzinfo=dt.UTC))
    ps = aggregate("varmor-demo-web", "demo", SHA, nodes, liveness)
    assert {c.reason for c in ps.conditions} == {"LoadFailed", "Stale", "Unsupported", "AgentLost"}
    first = armor_profile_status(ps, None, NOW)
    again = armor_profile_status(ps, first, LATER)
    for status in (first, again, armor_profile_status(ProfileStatus(0, 0), None, NOW)):
        assert roundtrip(status, ArmorProfileStatus) == status
    body = desired_armor_profile(demo_policy(), "varmor-demo-web", "demo", TEXT, "enforce", SHA)
    body["status"] = first
    assert roundtrip(body, ArmorProfile) == body


# -- ArmorNode -----------------------------------------------------------------------
def report_of(st: NodeState) -> loadreport.Report:
    """The load report an agent writes for `st` (every profile received at resourceVersion 7)."""
    ledger = Ledger()
    desired = {}
    for name, p in st.loaded.items():
        ledger.received(
            ("x", name), {"metadata": {"resourceVersion": "7", "generation": 1, "namespace": p.namespace}}, False
        )
        desired[name] = Desired(name, p.namespace, "", p.sha256, p.mode)
        ledger.settle(name, ledger.begin(name))
    for name in st.failures:
        ledger.received(("x", name), {"metadata": {"resourceVersion": "8", "generation": 1}}, False)
        ledger.settle(name, ledger.begin(name))
    return ledger.report(lambda name: outcome(st, desired, name))


def node_state() -> NodeState:
    return NodeState(
        loaded={"varmor-demo-web": Loaded("demo", SHA, "enforce"), "varmor-b-x": Loaded("b", SHA, "complain")},
        failures={"varmor-demo-bad": Failed("demo", "f" * 64, "apparmor_parser: syntax error")},
    )


@pytest.mark.parametrize(
    ("supported", "ready", "st"),
    [(True, True, node_state()), (True, False, NodeState()), (False, True, NodeState())],
)
def test_node_status_round_trips(supported: bool, ready: bool, st: NodeState) -> None:
    written = node_status(
        supported=supported,
        reason="AppArmor is not enabled: /sys/module/apparmor/parameters/enabled is N",
        parser_version="3.0.8",
        agent_version="0.1.0",
        ready=ready,
        report=report_of(st),
    )
    assert roundtrip(written, ArmorNodeStatus) == written
    # What the StatusWriter sends: the status plus its two timestamps.
    sent = {**written, "lastUpdateTime": NOW, "heartbeatTime": NOW}
    assert roundtrip(sent, ArmorNodeStatus) == sent
    # The whole ArmorNode as the agent creates it (owned by its Node) and then reports.
    body = {
        "apiVersion": api.API_VERSION,
        "kind": api.ARMOR_NODE.kind,
        "metadata": {
            "name": "node-1",
            "labels": {api.MANAGED_BY_LABEL: "varmor"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "node-1", "uid": "u-1"}],
        },
        "status": sent,
    }
    assert roundtrip(body, ArmorNode) == body
    decoded = msgspec.convert(body, ArmorNode)
    assert isinstance(decoded.status, ArmorNodeStatus)
    assert decoded.status.phase == ("Supported" if supported else "Unsupported")


# -- VarmorPolicy / VarmorClusterPolicy ----------------------------------------------
@pytest.mark.parametrize("doc", policy_docs(), ids=lambda d: d["metadata"]["name"])
def test_policies_decode_and_encode_as_the_api_server_stores_them(doc: dict[str, Any]) -> None:
    tp = models.VarmorClusterPolicy if doc["kind"] == api.VARMOR_CLUSTER_POLICY.kind else VarmorPolicy
    stored = with_crd_defaults(doc, crd_schema(doc["kind"]))
    assert roundtrip(doc, tp) == stored
    assert roundtrip(stored, tp) == stored


def policy_statuses() -> list[dict[str, Any]]:
    """Statuses the leader writes, from every kind of outcome, with the audit's and the
    rollout's conditions and counters folded in as the controller does."""
    ready = ProfileStatus(2, 2, sha256=SHA)
    failed = ProfileStatus(2, 1, (rstatus.NodeCondition("n2", "LoadFailed", "bad"),), sha256=SHA)
    job = Job("create", "u", ("VarmorPolicy", "demo", "web"), "u", {"kind": "Deployment"}, "varmor-demo-web", 3)
    rollout = rollout_condition(job, Report(rolled=["web"], unchanged=1))
    outcomes = [
        Outcome(1, "varmor-demo-web", profile_created=True, profile=ready),
        Outcome(2, "varmor-demo-web", profile_created=True, profile=failed),
        Outcome(1, "varmor-demo-web", profile_created=True, profile=ProfileStatus(0, 0)),
        Outcome(1, None, error_reason="Invalid", error_message="spec.policy.mode: bad"),
        Outcome(3, "varmor-demo-web", "Invalid", "bad", profile_created=True, profile=ready),
        Outcome(3, "varmor-demo-web", profile_created=True, profile=ready, extra_conditions=(rollout,)),
    ]
    out = []
    for o in outcomes:
        first = policy_status(o, None, NOW)
        audit = audit_conditions(Findings(unprotected=2, unprotected_examples=("Pod/a",), lost=1), {}, NOW)
        current = {**first, "unprotectedWorkloads": 2, "conditions": first["conditions"] + audit}
        out += [first, current, policy_status(o, first, LATER, current)]
    return out


@pytest.mark.parametrize("written", policy_statuses())
def test_policy_status_round_trips(written: dict[str, Any]) -> None:
    assert roundtrip(written, PolicyStatus) == written
    body = {**demo_policy(), "status": written}
    assert roundtrip(body, VarmorPolicy) == with_crd_defaults(body, crd_schema("VarmorPolicy"))


# -- the models validate like the CRD ------------------------------------------------
@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "profile", "sha256"), "not-hex"),
        (("spec", "profile", "mode"), "kill"),
        (("spec", "profile", "name"), "varmor-" + "x" * 63),
        (("spec", "target", "kind"), "CronJob"),
        (("status", "desiredNumberLoaded"), -1),
        (("status", "conditions"), [{"type": "Ready", "status": "Maybe"}]),
    ],
)
def test_models_reject_what_the_schema_rejects(path: tuple[str, ...], value: Any) -> None:
    body = desired_armor_profile(demo_policy(), "varmor-demo-web", "demo", TEXT, "enforce", SHA)
    body["status"] = {}
    leaf = body
    for key in path[:-1]:
        leaf = leaf[key]
    leaf[path[-1]] = value
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(body, ArmorProfile)


def test_attack_protection_rules_need_at_least_one_rule() -> None:
    doc = demo_policy()
    doc["spec"]["policy"]["enhanceProtect"]["attackProtectionRules"] = [{"rules": []}]
    with pytest.raises(msgspec.ValidationError, match="attackProtectionRules"):
        msgspec.convert(doc, VarmorPolicy)


# -- the models stay pure -------------------------------------------------------------
def test_models_import_only_api_and_rules_from_varmor() -> None:
    allowed = {"varmor", "varmor.api", "varmor.rules"}
    for path in (ROOT / "varmor" / "models").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                if name == "varmor":  # `from varmor import api`
                    assert isinstance(node, ast.ImportFrom)
                    assert {a.name for a in node.names} <= {"api"}, path
                elif name.startswith("varmor"):
                    assert name in allowed or name.startswith("varmor.models"), (path, name)
                else:
                    assert name.split(".")[0] in {"__future__", "typing", "msgspec"}, (path, name)
