"""The validating decision: every policy compiled at admission, under the budget and the
deadline, with a bounded queue that answers busy at once and a verdict cache that makes a
repeated slow or failing policy cost nothing."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.helpers import policy, slow_rule, wait_for
from varmor import api
from varmor.admission.review import GroupVersionKind, ValidationRequest
from varmor.parser import CompileBudget
from varmor.webhook.validate import BUSY, PolicyValidator, Verdict


def request(obj: dict[str, Any], operation: str = "CREATE") -> ValidationRequest:
    return ValidationRequest(
        uid="u1", gvk=GroupVersionKind(kind=obj["kind"], group=api.GROUP), operation=operation, obj=obj
    )


def raw_policy(name: str, rules: str) -> dict[str, Any]:
    return policy(name, "demo", target_name="web", enhance={"appArmorRawRules": [{"rules": rules}]})


def targets_policy(name: str, target: str) -> dict[str, Any]:
    group = {"rules": ["disable-curl"], "targets": [target]}
    return policy(name, "demo", target_name="web", enhance={"attackProtectionRules": [group]})


async def test_every_policy_is_compiled_not_only_raw_rules() -> None:
    validator = PolicyValidator("varmor")
    for i, doc in enumerate(
        [policy("rd", "demo", target_name="web"), targets_policy("t", "/usr/bin/app"), raw_policy("r", "deny /x r,")]
    ):
        verdict = await validator.validate(request(doc))
        assert verdict.allowed, verdict
        assert validator.compiles == i + 1
    # A target that would make an uncompilable child profile never gets through.
    verdict = await validator.validate(request(targets_policy("bad", "/usr/bin/x{")))
    assert not verdict.allowed


async def test_over_budget_policy_is_refused_and_remembered() -> None:
    validator = PolicyValidator("varmor", budget=CompileBudget(cpu_seconds=1), deadline=30)
    doc = raw_policy("slow", slow_rule())
    verdict = await validator.validate(request(doc))
    assert (verdict.allowed, verdict.result) == (False, "over_budget")
    assert "CompileBudgetExceeded" in verdict.message
    assert "appArmorRawRules" in verdict.message
    compiles = validator.compiles
    assert await validator.validate(request(doc)) == verdict
    assert validator.compiles == compiles  # the repeat cost no compile


async def test_deadline_refuses_and_the_queue_answers_busy_at_once() -> None:
    validator = PolicyValidator("varmor", budget=CompileBudget(cpu_seconds=600), deadline=60, slots=1, waiting=0)
    slow = asyncio.create_task(validator.validate(request(raw_policy("slow", slow_rule(20)))))
    await wait_for(lambda: validator.queued == 1)
    busy = await validator.validate(request(raw_policy("other", "deny /etc/shadow r,")))
    assert busy == Verdict(False, BUSY, (), "busy", code=429)
    slow.cancel()
    await asyncio.gather(slow, return_exceptions=True)
    assert validator.queued == 0
    # Within its deadline or refused: never allowed because the compile was slow.
    quick = PolicyValidator("varmor", budget=CompileBudget(cpu_seconds=600), deadline=0.5)
    verdict = await quick.validate(request(raw_policy("slow", slow_rule(20))))
    assert (verdict.allowed, verdict.result) == (False, "over_budget")
    assert "did not finish within 0.5 s" in verdict.message


async def test_hostile_shapes_are_refused_not_raised() -> None:
    validator = PolicyValidator("varmor")
    doc = policy("p", "demo", target_name="web")
    for spec in ([], "x" * 100_000, {"target": {"kind": "Pod", "name": "x" * 100_000}, "policy": {}}, {"target": 1}):
        verdict = await validator.validate(request({**doc, "spec": spec}))
        assert not verdict.allowed
    old = {**doc, "spec": "not a mapping"}
    update = ValidationRequest(
        uid="u", gvk=GroupVersionKind(kind=doc["kind"], group=api.GROUP), operation="UPDATE", obj=doc, old_obj=old
    )
    assert not (await validator.validate(update)).allowed
