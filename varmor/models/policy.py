"""VarmorPolicy and VarmorClusterPolicy: the user's spec (vArmor's schema) and the leader's status.

Pure; see `varmor.models` for the conventions every model follows.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from msgspec import UNSET, Meta, UnsetType

from varmor import api
from varmor.models.base import (
    Enforcer,
    KindName,
    KubeObject,
    PolicyMode,
    Wire,
)
from varmor.models.policystatus import PolicyStatus
from varmor.models.target import (
    PolicyTarget,
)
from varmor.rules import load_catalog

MAX_RULE_ID = 64
MAX_RULES = 256
MAX_TARGETS = 64
MAX_PATH = 4096
# Where each catalog category's IDs go in spec.policy.enhanceProtect.
CATEGORY_FIELDS: Final = {
    "hardening": "hardeningRules",
    "attack-protection": "attackProtectionRules",
    "vul-mitigation": "vulMitigationRules",
}


def _catalog_ids(category: str) -> list[str]:
    """Accepted spellings of one category: IDs plus aliases, normalised and sorted."""
    return sorted({i for rule in load_catalog() if rule.category == category for i in (rule.id, *rule.aliases)})


def _rule_id(category: str) -> Meta:
    """A rule ID of one category, checked by CEL against the catalog so that the API server
    rejects unknown IDs (and known IDs in the wrong list, which vArmor silently ignores)
    even when varmor is down. vArmor matches IDs case-insensitively with `_` for `-`; the
    rule normalises the same way and leaves the stored spelling alone."""
    literal = "[" + ", ".join(f"'{i}'" for i in _catalog_ids(category)) + "]"
    field = CATEGORY_FIELDS[category]
    message = (
        f"'unknown {category} rule ID \"' + self + '\": {field} accepts only built-in "
        f"{category} rules (see `varmor rules list`)'"
    )
    return Meta(
        description=f"A built-in {category} rule ID (case-insensitive; `_` may stand for `-`).",
        max_length=MAX_RULE_ID,
        extra_json_schema={
            "x-kubernetes-validations": [
                {"rule": f"self.lowerAscii().replace('_', '-') in {literal}", "messageExpression": message}
            ]
        },
    )


HardeningRuleId = Annotated[str, _rule_id("hardening")]
AttackProtectionRuleId = Annotated[str, _rule_id("attack-protection")]
VulMitigationRuleId = Annotated[str, _rule_id("vul-mitigation")]
# An absolute executable path, globs as the profile builder writes them unquoted; nothing with
# a meaning in profile text (quotes, commas, braces, comments, whitespace, control characters).
# The last character is from the same class (not `/`). varmor.policy checks the same grammar.
EXECUTABLE_CHARS = r"A-Za-z0-9._+\-*?\[\]:~%="
EXECUTABLE_PATTERN = rf"^/[{EXECUTABLE_CHARS}/]*[{EXECUTABLE_CHARS}]$"
ExecutablePath = Annotated[
    str,
    Meta(
        description="An absolute executable path: letters, digits and . _ + - / * ? [ ] : ~ % = only "
        "(AppArmor globs allowed; no quotes, commas, braces, #, whitespace or control characters).",
        max_length=MAX_PATH,
        pattern=EXECUTABLE_PATTERN,
    ),
]


# -- VarmorPolicy / VarmorClusterPolicy ----------------------------------------------
class AttackProtectionRules(Wire):
    """A set of attack protection rules and the executables they apply to."""

    rules: Annotated[
        list[AttackProtectionRuleId],
        Meta(description="Built-in attack protection rule IDs.", min_length=1, max_length=MAX_RULES),
    ]
    targets: (
        Annotated[
            list[ExecutablePath],
            Meta(
                description="Executables (absolute paths) the rules apply to, with their descendants; "
                "empty means the whole container.",
                max_length=MAX_TARGETS,
            ),
        ]
        | UnsetType
    ) = UNSET


class RawRules(Wire):
    """Raw AppArmor rules and the executables they apply to."""

    rules: Annotated[str, Meta(description="AppArmor rules, one per line, each ending in ','.", min_length=1)]
    targets: (
        Annotated[
            list[ExecutablePath],
            Meta(description="Executables (absolute paths) the rules apply to; empty: all.", max_length=MAX_TARGETS),
        ]
        | UnsetType
    ) = UNSET


# appArmorRawRules, in EnhanceProtect and DefenseInDepth alike.
RawRulesList = Annotated[
    list[RawRules],
    Meta(
        description="Raw AppArmor rules. Each is one rule ending in ','; no blocks, includes or profile changes.",
        max_length=MAX_TARGETS,
    ),
]


class EnhanceProtect(Wire):
    """Rules added to the base profile in EnhanceProtect mode."""

    hardening_rules: (
        Annotated[
            list[HardeningRuleId],
            Meta(
                description="Built-in hardening rules (privileged-container escapes, capabilities, exploit vectors).",
                max_length=MAX_RULES,
            ),
        ]
        | UnsetType
    ) = UNSET
    attack_protection_rules: (
        Annotated[
            list[AttackProtectionRules],
            Meta(
                description="Built-in attack protection rules, optionally only for some executables.",
                max_length=MAX_TARGETS,
            ),
        ]
        | UnsetType
    ) = UNSET
    vul_mitigation_rules: (
        Annotated[
            list[VulMitigationRuleId],
            Meta(description="Built-in vulnerability mitigation rules.", max_length=MAX_RULES),
        ]
        | UnsetType
    ) = UNSET
    app_armor_raw_rules: RawRulesList | UnsetType = UNSET
    privileged: Annotated[
        bool, Meta(description="Build on the AlwaysAllow base (for privileged containers) instead of RuntimeDefault.")
    ] = False
    audit_violations: Annotated[bool, Meta(description="Log violations of the rules to the kernel audit log.")] = False
    allow_violations: Annotated[
        bool,
        Meta(
            description="Allow violations instead of blocking them (observation mode; with auditViolations, logs them)."
        ),
    ] = False


MAX_MODELING_MINUTES = 7 * 24 * 60
MAX_CUSTOM_PROFILE = 64 * 1024  # == varmor.profile.raw_lex.MAX_RAW_TEXT: its rules pass that check


class ModelingOptions(Wire):
    """How long BehaviorModeling collects."""

    duration: Annotated[
        int,
        Meta(
            ge=1,
            le=MAX_MODELING_MINUTES,
            description="Minutes to collect behaviour for, from when modelling starts. Changed while Modeling: "
            "the window ends at start + the new duration (at once if that is past). Changed once Completed: "
            "modelling restarts and adds to the model.",
        ),
    ]


class DefenseInDepthAppArmor(Wire):
    """The deny-by-default AppArmor profile of DefenseInDepth."""

    profile_type: Annotated[
        Literal["BehaviorModel", "Custom"],
        Meta(
            description="BehaviorModel: allow what the policy's behaviour model holds, deny the rest. Custom: "
            "customProfile's rules."
        ),
    ]
    custom_profile: (
        Annotated[
            str,
            Meta(
                description="Custom: the profile's rules, alone or inside one `profile NAME [flags=(...)] { }` "
                "block. Each rule passes the raw-rule checks; the name is always the policy's profile name.",
                max_length=MAX_CUSTOM_PROFILE,
            ),
        ]
        | UnsetType
    ) = UNSET
    app_armor_raw_rules: RawRulesList | UnsetType = UNSET


DefenseInDepthAppArmorField = Annotated[
    DefenseInDepthAppArmor,
    Meta(
        extra_json_schema={
            "x-kubernetes-validations": [
                {
                    "rule": "self.profileType != 'Custom' || has(self.customProfile)",
                    "message": "customProfile is required when profileType is Custom",
                }
            ]
        }
    ),
]


class DefenseInDepth(Wire):
    """Deny by default: only what the model (or the custom profile) allows."""

    app_armor: DefenseInDepthAppArmorField
    allow_violations: Annotated[
        bool, Meta(description="Load the profile in complain mode: log what it would deny (ALLOWED), block nothing.")
    ] = False


class PolicyRules(Wire):
    """How to confine the target."""

    enforcer: Annotated[
        Enforcer,
        Meta(
            description="The confinement mechanism. varmor implements AppArmor only; other vArmor enforcers are "
            "rejected rather than silently ignored."
        ),
    ]
    mode: Annotated[
        PolicyMode,
        Meta(
            description="AlwaysAllow: an allow-all placeholder. RuntimeDefault: the container runtime's default "
            "profile. EnhanceProtect: a base profile plus the chosen rules. BehaviorModeling: watch (complain "
            "mode) and build a behaviour model. DefenseInDepth: deny by default, allowing the model or a custom "
            "profile."
        ),
    ]
    enhance_protect: EnhanceProtect | UnsetType = UNSET
    modeling_options: ModelingOptions | UnsetType = UNSET
    defense_in_depth: DefenseInDepth | UnsetType = UNSET
    allow_opt_out: Annotated[
        bool,
        Meta(
            description="Whether workload owners may opt containers out: with the opt-out annotations "
            "(container.apparmor.security.beta.varmor.org/<c> or container.apparmor.security.beta.kubernetes.io/<c> "
            "set to unconfined) or securityContext.appArmorProfile type Unconfined. False (the default): the "
            "profile overrides them. Either way opted-out containers count as unprotected in the status."
        ),
    ] = False


class PolicySpec(Wire):
    """What to protect and how."""

    target: PolicyTarget
    policy: Annotated[
        PolicyRules,
        Meta(
            extra_json_schema={
                "x-kubernetes-validations": [
                    {
                        "rule": "self.mode != 'EnhanceProtect' || has(self.enhanceProtect)",
                        "message": "policy.enhanceProtect is required when mode is EnhanceProtect",
                    },
                    {
                        "rule": "self.mode != 'BehaviorModeling' || has(self.modelingOptions)",
                        "message": "policy.modelingOptions.duration is required when mode is BehaviorModeling",
                    },
                    {
                        "rule": "self.mode != 'DefenseInDepth' || has(self.defenseInDepth)",
                        "message": "policy.defenseInDepth is required when mode is DefenseInDepth",
                    },
                ]
            }
        ),
    ]
    update_existing_workloads: Annotated[
        bool,
        Meta(
            description="Roll matching Deployments, StatefulSets and DaemonSets when the policy is created or "
            "deleted, so running workloads gain (or lose) the profile. Bare Pods are reported, never killed."
        ),
    ] = False


# Leaving BehaviorModeling while it collects would drop the model half-built (vArmor refuses
# it too): end the window by lowering modelingOptions.duration instead.
_STAY_WHILE_MODELING: Final = {
    "x-kubernetes-validations": [
        {
            "rule": "!has(oldSelf.status) || !has(oldSelf.status.phase) || oldSelf.status.phase != 'Modeling' "
            "|| self.spec.policy.mode == 'BehaviorModeling'",
            "message": "spec.policy.mode cannot leave BehaviorModeling while the policy is Modeling; "
            "lower spec.policy.modelingOptions.duration to end modelling first",
        }
    ]
}


class VarmorPolicy(KubeObject, kw_only=True):
    """VarmorPolicy confines its namespace's workloads with an AppArmor profile built from chosen rules.
    Wire-compatible with vArmor's AppArmor policies."""

    kind: KindName = api.VARMOR_POLICY.kind
    spec: PolicySpec | UnsetType = UNSET
    status: PolicyStatus | UnsetType = UNSET


class VarmorClusterPolicy(KubeObject, kw_only=True):
    """VarmorClusterPolicy confines every namespace's workloads with an AppArmor profile built from chosen
    rules. Wire-compatible with vArmor's AppArmor policies."""

    kind: KindName = api.VARMOR_CLUSTER_POLICY.kind
    spec: PolicySpec | UnsetType = UNSET
    status: PolicyStatus | UnsetType = UNSET


VarmorPolicyRoot = Annotated[VarmorPolicy, Meta(extra_json_schema=_STAY_WHILE_MODELING)]
VarmorClusterPolicyRoot = Annotated[VarmorClusterPolicy, Meta(extra_json_schema=_STAY_WHILE_MODELING)]
