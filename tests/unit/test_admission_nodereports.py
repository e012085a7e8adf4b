"""An agent writes only its own node's ArmorNode: the rule, its registration, and the
validating webhook's answer (for clusters without ValidatingAdmissionPolicy)."""

from __future__ import annotations

import asyncio

import orjson

from varmor.admission.nodereports import (
    NODE_CLAIM,
    POD_NAME_CLAIM,
    POD_UID_CLAIM,
    PodClaim,
    node_report_refusal,
    pod_claim,
    pod_to_look_up,
)
from varmor.admission.registration import Registration, validating_configuration
from varmor.admission.review import parse_validation_review
from varmor.webhook.validate import PolicyValidator

AGENT = "system:serviceaccount:varmor:varmor-agent"


def test_an_agent_reports_only_for_the_node_its_token_is_bound_to() -> None:
    assert node_report_refusal(AGENT, {NODE_CLAIM: ["node-a"]}, "node-a", {AGENT}) is None
    assert "not 'node-b'" in (node_report_refusal(AGENT, {NODE_CLAIM: ["node-a"]}, "node-b", {AGENT}) or "")
    assert "no authentication" in (node_report_refusal(AGENT, {}, "node-a", {AGENT}) or "")
    assert node_report_refusal(AGENT, {NODE_CLAIM: ["a", "b"]}, "a", {AGENT}) is not None
    assert node_report_refusal("admin", {}, "node-b", {AGENT}) is None  # not an agent: RBAC decides


POD = {POD_NAME_CLAIM: ["varmor-agent-x1"], POD_UID_CLAIM: ["uid-1"]}


def test_before_1_30_the_node_of_the_bound_pod_stands_for_the_missing_node_claim() -> None:
    assert pod_claim(AGENT, POD) == PodClaim("varmor", "varmor-agent-x1", "uid-1")
    assert pod_claim("admin", POD) is None  # only ServiceAccounts have bound pods
    assert pod_claim(AGENT, {POD_NAME_CLAIM: ["p"]}) is None  # a name without its uid names nothing
    assert pod_to_look_up(AGENT, POD, {AGENT}) == PodClaim("varmor", "varmor-agent-x1", "uid-1")
    assert pod_to_look_up(AGENT, {**POD, NODE_CLAIM: ["node-a"]}, {AGENT}) is None  # the claim wins
    assert pod_to_look_up("system:serviceaccount:varmor:other", POD, {AGENT}) is None
    assert node_report_refusal(AGENT, POD, "node-a", {AGENT}, pod_node="node-a") is None
    assert "not 'node-b'" in (node_report_refusal(AGENT, POD, "node-b", {AGENT}, pod_node="node-a") or "")
    assert "no bound pod on a node" in (node_report_refusal(AGENT, POD, "node-a", {AGENT}, pod_node="") or "")
    # A node claim is never overridden by a pod lookup's answer.
    assert node_report_refusal(AGENT, {NODE_CLAIM: ["node-a"]}, "node-b", {AGENT}, pod_node="node-b") is not None


def test_the_guard_is_registered_only_when_asked_and_fails_closed() -> None:
    plain = validating_configuration(Registration("varmor", "varmor"), b"ca")
    assert [w["name"] for w in plain["webhooks"]] == ["policies.validate.varmor.org"]
    guarded = validating_configuration(Registration("varmor", "varmor", node_report_accounts=(AGENT,)), b"ca")
    hook = guarded["webhooks"][1]
    assert hook["name"] == "armornodes.validate.varmor.org"
    assert hook["failurePolicy"] == "Fail"
    assert hook["rules"][0]["resources"] == ["armornodes", "armornodes/status"]
    assert hook["rules"][1]["resources"] == ["armorbehaviors"]
    assert AGENT in hook["matchConditions"][0]["expression"]


def review(name: str, claim: list[str] | None, user: str = AGENT, extra: dict[str, list[str]] | None = None) -> bytes:
    extra = {**({NODE_CLAIM: claim} if claim is not None else {}), **(extra or {})}
    return orjson.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u1",
                "kind": {"group": "crd.varmor.org", "version": "v1beta1", "kind": "ArmorNode"},
                "operation": "UPDATE",
                "name": name,
                "subResource": "status",
                "userInfo": {"username": user, "groups": ["system:serviceaccounts"], "extra": extra},
                "object": {"metadata": {"name": name}},
            },
        }
    )


def test_the_validating_webhook_refuses_another_nodes_report() -> None:
    validator = PolicyValidator("varmor", node_report_accounts=frozenset({AGENT}))

    def verdict(body: bytes) -> tuple[bool, int]:
        result = asyncio.run(validator.validate(parse_validation_review(body)))
        return result.allowed, result.code

    assert verdict(review("node-a", ["node-a"]))[0]
    assert verdict(review("node-b", ["node-a"])) == (False, 403)
    assert verdict(review("node-a", None)) == (False, 403)
    assert verdict(review("node-b", None, user="system:admin"))[0]


def test_the_validating_webhook_asks_where_the_bound_pod_runs_and_refuses_when_it_cannot_tell() -> None:
    asked: list[PodClaim] = []

    async def pod_node(claim: PodClaim) -> str:
        asked.append(claim)
        if claim.uid == "broken":
            raise ConnectionError
        return "node-a"

    validator = PolicyValidator("varmor", node_report_accounts=frozenset({AGENT}), pod_node=pod_node)

    def verdict(body: bytes) -> tuple[bool, int]:
        result = asyncio.run(validator.validate(parse_validation_review(body)))
        return result.allowed, result.code

    assert verdict(review("node-a", None, extra=POD))[0]
    assert verdict(review("node-b", None, extra=POD)) == (False, 403)
    assert verdict(review("node-a", None, extra={**POD, POD_UID_CLAIM: ["broken"]})) == (False, 503)
    assert verdict(review("node-a", ["node-a"], extra=POD))[0]
    assert len(asked) == 3  # not for a request that carries the node claim
