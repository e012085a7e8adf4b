"""Profiles of the behaviour modes (pure): BehaviorModeling's watching profile, and
DefenseInDepth's deny-by-default profile from a model or a custom profile.

- **BehaviorModeling, while modelling:** `abstractions/base` and nothing else, in complain
  mode, so every other access is logged as ALLOWED and becomes the model. The base is
  there because every process needs it (the loader, libc, /dev/null): recording it would
  only add noise, and the enforcing profile carries it anyway.
- **BehaviorModeling, once modelling has ended:** the AlwaysAllow body, enforced (as
  vArmor): nothing logged, nothing blocked, until the policy switches to DefenseInDepth.
- **DefenseInDepth:** `BASELINE` (below: the base, and the runtime's stop signals), then
  the model's rules or
  the custom profile's, then `appArmorRawRules`. Anything else is denied. `allowViolations`
  loads it in complain mode instead (nothing blocked, what it would deny logged ALLOWED).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from varmor.profile import templates

if TYPE_CHECKING:
    from varmor.policy import Policy

# What complain mode never logs, so no model holds it:
# - what the modelling profile itself allows: abstractions/base (the loader, libc,
#   /dev/null), since complain mode logs only what a profile does not allow;
# - the stop signals: the runtime and the kubelet signal the workload when the pod ends,
#   after modelling, and AppArmor checks the receiver too; a refused stop signal leaves a
#   pod kill(2) cannot stop. From the peers containerd's default profile admits (runc and
#   crun are labelled by name where the distribution gives them a profile).
BASE = ("#include <abstractions/base>",)
BASELINE = (*BASE, *(f"{rule}," for rule in templates.RUNTIME_SIGNALS))


@dataclass(frozen=True)
class BehaviorInputs:
    """What the behaviour modes' text depends on besides the policy: whether the modelling
    window is open, and (DefenseInDepth/BehaviorModel) the model's validated rule lines."""

    modeling: bool = False
    model_rules: tuple[str, ...] | None = None


MODEL_SECTION = "# The behaviour model"


def model_section(text: str) -> tuple[str, ...] | None:
    """The model's rule lines in a profile this module wrote (None: it holds no model), so
    the leader can rebuild a profile around the model it enforces while a newer model
    waits for acceptance."""
    lines = text.splitlines()
    marker = f"  {MODEL_SECTION}"
    if marker not in lines:
        return None
    rules: list[str] = []
    for line in lines[lines.index(marker) + 1 :]:
        if not line.startswith("  ") or not line.strip():
            break
        rules.append(line[2:])
    return tuple(rules)


class ModelMissing(ValueError):
    """DefenseInDepth/BehaviorModel without a model to enforce (yet)."""


def body(policy: Policy, inputs: BehaviorInputs) -> tuple[list[str], bool]:
    """The profile body and whether it is loaded in complain mode."""
    if policy.mode == "BehaviorModeling":
        if inputs.modeling:
            return [*BASE, "", "# BehaviorModeling: everything else is logged (complain mode) and modelled"], True
        return [*BASE, "", "# BehaviorModeling has ended: AlwaysAllow", *templates.always_allow_body()], False
    did = policy.defense_in_depth
    assert did is not None, "DefenseInDepth policies carry defense_in_depth"
    lines = [*BASELINE]
    if did.profile_type == "BehaviorModel":
        if inputs.model_rules is None:
            raise ModelMissing("no behaviour model for this policy yet: model it with mode BehaviorModeling first")
        lines += ["", MODEL_SECTION, *inputs.model_rules]
    else:
        lines += ["", "# Custom profile", *_rules(did.custom_rules)]
    if did.raw_rules:
        lines += ["", "# Custom rules", *_rules(did.raw_rules)]
    return lines, did.allow_violations


def _rules(rules: Sequence[str]) -> list[str]:
    return [f"{rule}," for rule in rules]
