"""The two modes built on behaviour: BehaviorModeling (watch in complain mode, build a
model) and DefenseInDepth (deny by default, allowing the model or a custom profile).
Parsed and checked here (pure); `varmor.profile` builds them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from varmor.models.policy import MAX_MODELING_MINUTES
from varmor.policy.fields import PolicyError, bool_field, list_field, mapping, only, string
from varmor.profile.custom import custom_rules
from varmor.profile.raw import RawRuleError, check_raw_rules

ProfileType = Literal["BehaviorModel", "Custom"]


@dataclass(frozen=True)
class DefenseInDepth:
    profile_type: ProfileType
    custom_rules: tuple[str, ...] = ()  # validated (Custom)
    raw_rules: tuple[str, ...] = ()  # validated appArmorRawRules, container-wide
    allow_violations: bool = False


def modeling_minutes(raw: Any) -> int:
    path = "spec.policy.modelingOptions"
    options = mapping(raw, path)
    only(options, ("duration",), path)
    duration = options.get("duration")
    if not isinstance(duration, int) or isinstance(duration, bool) or not 1 <= duration <= MAX_MODELING_MINUTES:
        raise PolicyError(f"{path}.duration", f"must be a whole number of minutes from 1 to {MAX_MODELING_MINUTES}")
    return duration


def defense_in_depth(raw: Any, warnings: list[str]) -> DefenseInDepth:
    """spec.policy.defenseInDepth; only `appArmor` (vArmor's other enforcers are refused)."""
    path = "spec.policy.defenseInDepth"
    did = mapping(raw, path)
    for other in ("seccomp", "bpf", "networkProxy"):
        if did.get(other) is not None:
            raise PolicyError(f"{path}.{other}", "belongs to another enforcer; varmor is AppArmor")
    only(did, ("appArmor", "allowViolations", "seccomp", "bpf", "networkProxy"), path)
    apath = f"{path}.appArmor"
    aa = mapping(did.get("appArmor"), apath)
    only(aa, ("profileType", "customProfile", "appArmorRawRules"), apath)
    profile_type = aa.get("profileType")
    if profile_type not in ("BehaviorModel", "Custom"):
        raise PolicyError(f"{apath}.profileType", "must be BehaviorModel or Custom")
    custom: tuple[str, ...] = ()
    if profile_type == "Custom":
        try:
            checked = custom_rules(string(aa.get("customProfile"), f"{apath}.customProfile"))
        except RawRuleError as exc:
            raise PolicyError(f"{apath}.customProfile", str(exc)) from None
        custom = checked.rules
        warnings += [f"{apath}.customProfile: {w}" for w in checked.warnings]
    elif aa.get("customProfile") is not None:
        warnings.append(f"{apath}.customProfile is ignored with profileType BehaviorModel")
    raws: list[str] = []
    for i, group in enumerate(list_field(aa.get("appArmorRawRules"), f"{apath}.appArmorRawRules")):
        gpath = f"{apath}.appArmorRawRules[{i}]"
        entry = mapping(group, gpath)
        only(entry, ("rules", "targets"), gpath)
        if entry.get("targets"):
            raise PolicyError(
                f"{gpath}.targets", "is not supported in DefenseInDepth: rules apply to the whole container"
            )
        try:
            checked = check_raw_rules(string(entry.get("rules"), f"{gpath}.rules"))
        except RawRuleError as exc:
            raise PolicyError(f"{gpath}.rules", str(exc)) from None
        raws += checked.rules
        warnings += [f"{gpath}.rules: {w}" for w in checked.warnings]
    return DefenseInDepth(
        profile_type=profile_type,
        custom_rules=custom,
        raw_rules=tuple(dict.fromkeys(raws)),
        allow_violations=bool_field(did.get("allowViolations"), f"{path}.allowViolations"),
    )
