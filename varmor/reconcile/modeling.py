"""What the behaviour modes add to a policy's reconcile (pure): the modelling window, the
model a DefenseInDepth profile may enforce, and the status fields and condition saying so.

- **The window.** Modelling starts when the leader first sees the policy in BehaviorModeling
  (`status.modeling.startTime`) and ends `duration` minutes later. A new duration while
  Modeling moves the end (to now, if start + duration is past); a new duration once the
  window ended restarts it, adding to the model. Outside BehaviorModeling there is no
  window, so switching back starts a new one.
- **Accepting a model.** A DefenseInDepth/BehaviorModel profile is built from the model
  as it is when the policy switches (its digest goes into the ArmorProfile's
  `spec.modelSha256`). A model that changes later (late shares, another modelling round)
  changes nothing until the policy's `varmor.org/accept-model` annotation names the new
  digest: enforced behaviour never widens or narrows behind the user's back. Meanwhile the
  profile keeps the enforced model's rules (read back from the ArmorProfile's text), so
  spec changes still apply, and the `Model` condition says why. An annotation present at
  the switch must name the model as it is then (`varmor model export` writes the digest
  the user reviewed); with none, the switch enforces the model as it is.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from varmor import api
from varmor.clock import parse_time, rfc3339
from varmor.profile.deny_default import BehaviorInputs, model_section

JSON = dict[str, Any]


@dataclass(frozen=True)
class Model:
    """A policy's merged model as the leader has it: digest, rule lines, status counts."""

    sha256: str
    rules: tuple[str, ...]
    status: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BehaviorPlan:
    inputs: BehaviorInputs | None = None  # None: not a behaviour mode
    hold: bool = False  # keep the ArmorProfile as it is (an unaccepted model change)
    model_sha256: str | None = None  # the digest the profile is built from
    modeling: JSON | None = None  # status.modeling
    model: JSON | None = None  # status.model
    condition: JSON | None = None  # the Model condition
    recheck_after: float | None = None  # seconds until the window ends
    active: bool = False  # modelling now


def window(minutes: int, previous: Mapping[str, Any] | None, now: dt.datetime) -> tuple[JSON, bool, float]:
    """status.modeling for `minutes`, whether modelling is on, and the seconds left."""
    previous = previous or {}
    start, end = parse_time(previous.get("startTime")), parse_time(previous.get("endTime"))
    if start is None or end is None:
        start = now
    elif previous.get("duration") != minutes:
        start = start if now < end else now  # running: move the end; ended: restart
    end = start + dt.timedelta(minutes=minutes) if previous.get("duration") != minutes or end is None else end
    status = {"startTime": rfc3339(start), "endTime": rfc3339(end), "duration": minutes}
    left = (end - now).total_seconds()
    return status, left > 0, max(left, 0.0)


def _model_status(model: Model | None, enforced: str | None) -> JSON | None:
    if model is None:
        return {"enforcedSha256": enforced} if enforced else None
    s = model.status
    out: JSON = {
        "sha256": model.sha256,
        "rules": int(s.get("rules") or 0),
        "records": int(s.get("records") or 0),
        "lostRecords": int(s.get("lostRecords") or 0),
        "nodes": [str(n.get("nodeName")) for n in (s.get("nodes") or [])[:64] if isinstance(n, Mapping)],
    }
    if enforced:
        out["enforcedSha256"] = enforced
    return out


def _condition(status: str, reason: str, message: str, generation: int) -> JSON:
    return {"type": "Model", "status": status, "reason": reason, "message": message, "observedGeneration": generation}


def plan(
    policy: Mapping[str, Any],
    previous: Mapping[str, Any],
    armor_profile: Mapping[str, Any] | None,
    model: Model | None,
    now: dt.datetime,
) -> BehaviorPlan:
    """The behaviour modes' part of reconciling `policy` (its JSON), given the status last
    written, its ArmorProfile (if any) and its model (if any)."""
    pol = (policy.get("spec") or {}).get("policy") or {}
    mode = pol.get("mode")
    generation = int(policy["metadata"].get("generation") or 0)
    if mode == "BehaviorModeling":
        minutes = (pol.get("modelingOptions") or {}).get("duration")
        if not isinstance(minutes, int) or isinstance(minutes, bool) or minutes < 1:
            return BehaviorPlan(inputs=BehaviorInputs(modeling=False))  # invalid: the compile says why
        modeling, active, left = window(minutes, previous.get("modeling"), now)
        return BehaviorPlan(
            inputs=BehaviorInputs(modeling=active),
            modeling=modeling,
            model=_model_status(model, None),
            recheck_after=left if active else None,
            active=active,
        )
    did = (pol.get("defenseInDepth") or {}).get("appArmor") or {}
    if mode != "DefenseInDepth" or did.get("profileType") != "BehaviorModel":
        return BehaviorPlan()
    spec = (armor_profile or {}).get("spec") or {}
    enforced = spec.get("modelSha256") if isinstance(spec.get("modelSha256"), str) else None
    accepted = ((policy["metadata"].get("annotations") or {}).get(api.ACCEPT_MODEL_ANNOTATION) or "").strip()
    status = _model_status(model, enforced)
    kept = model_section(str((spec.get("profile") or {}).get("appArmor") or "")) if enforced else None
    if model is None and enforced is None:
        return BehaviorPlan(inputs=BehaviorInputs(model_rules=None), model=status)  # compile: ModelMissing
    if model is not None and (model.sha256 == enforced or accepted == model.sha256 or (not accepted and not enforced)):
        status = {**(status or {}), "enforcedSha256": model.sha256}
        message = f"enforcing the behaviour model {model.sha256[:12]} ({len(model.rules)} rules)"
        return BehaviorPlan(
            inputs=BehaviorInputs(model_rules=model.rules),
            model_sha256=model.sha256,
            model=status,
            condition=_condition("True", "ModelEnforced", message, generation),
        )
    if model is None:
        reason, message = (
            "ModelMissing",
            "the behaviour model is gone; the profile keeps enforcing the model it was built from",
        )
    elif enforced:
        reason, message = (
            "ModelChanged",
            (
                f"the behaviour model changed to {model.sha256[:12]} since the profile was built from "
                f"{enforced[:12]}; the profile keeps enforcing {enforced[:12]} until the new model is accepted: "
                f"`varmor model accept --sha256 {model.sha256}` (the {api.ACCEPT_MODEL_ANNOTATION} annotation)"
            ),
        )
    else:
        reason, message = (
            "ModelNotAccepted",
            (
                f"the policy accepts model {accepted[:12]} ({api.ACCEPT_MODEL_ANNOTATION}), but the model is "
                f"{model.sha256[:12]}: review it (`varmor model show`) and accept that digest"
            ),
        )
    condition = _condition("False", reason, message, generation)
    if kept is not None:  # the enforced model, rebuilt around the current spec
        inputs = BehaviorInputs(model_rules=kept)
        return BehaviorPlan(inputs=inputs, model_sha256=enforced, model=status, condition=condition)
    return BehaviorPlan(hold=True, model=status, condition=condition)
