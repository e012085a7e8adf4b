"""VarmorPolicy and VarmorClusterPolicy: the user's spec (vArmor's schema) and the leader's status.

Pure; see `varmor.models` for the conventions every model follows.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from msgspec import UNSET, Meta, UnsetType

from varmor import api
from varmor.models.base import (
    Condition,
    Enforcer,
    Int32,
    Int64,
    KindName,
    KubeObject,
    PolicyMode,
    PolicyPhase,
    TargetKind,
    Wire,
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
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


# -- target ------------------------------------------------------------------------
class SelectorRequirement(Wire):
    """A label selector requirement."""

    key: Annotated[str, Meta(description="The label key.")]
    operator: Annotated[
        Literal["In", "NotIn", "Exists", "DoesNotExist"], Meta(description="How the key relates to the values.")
    ]
    values: (
        Annotated[
            list[Annotated[str, Meta(description="A value.")]],
            Meta(description="Values for In and NotIn; empty for Exists and DoesNotExist.", max_length=256),
        ]
        | UnsetType
    ) = UNSET


# The wire shape of a metav1.LabelSelector; matching (and its checks) is
# varmor.admission.selector.LabelSelector's job. Named apart so that stays the one definition.
class Selector(Wire):
    """Selects workloads by the workload object's own labels (not its pod template's)."""

    match_labels: (
        Annotated[dict[str, str], Meta(description="Labels the workload must carry, all of them.")] | UnsetType
    ) = UNSET
    match_expressions: (
        Annotated[
            list[SelectorRequirement],
            Meta(description="Requirements the workload's labels must meet, all of them.", max_length=64),
        ]
        | UnsetType
    ) = UNSET


class Target(Wire):
    """The workloads the policy protects."""

    kind: Annotated[TargetKind, Meta(description="The kind of workload.")]
    name: (
        Annotated[
            str,
            Meta(
                description="The workload's name (in the policy's namespace; any namespace for a cluster policy).",
                max_length=253,
                min_length=1,
                pattern=DNS_SUBDOMAIN_PATTERN,
            ),
        ]
        | UnsetType
    ) = UNSET
    # Atomic: a selector is replaced whole, never merged key by key.
    selector: Annotated[Selector, Meta(extra_json_schema={"x-kubernetes-map-type": "atomic"})] | UnsetType = UNSET
    containers: (
        Annotated[
            list[Annotated[str, Meta(description="A container name.", max_length=63, pattern=DNS_LABEL_PATTERN)]],
            Meta(
                description="Names of the containers to confine (regular, init, sidecar or ephemeral); "
                "empty means every container of the pod.",
                max_length=64,
            ),
        ]
        | UnsetType
    ) = UNSET


# A policy's target is also checked by the API server: name XOR selector, and immutable
# (changing it would move the profile to other workloads under the same name).
PolicyTarget = Annotated[
    Target,
    Meta(
        extra_json_schema={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.name) != has(self.selector)",
                    "message": "exactly one of target.name and target.selector must be set",
                },
                {"rule": "self == oldSelf", "message": "target is immutable: create a new policy instead"},
            ]
        }
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
    app_armor_raw_rules: (
        Annotated[
            list[RawRules],
            Meta(
                description="Raw AppArmor rules. Each is one rule ending in ','; no blocks, includes or "
                "profile changes.",
                max_length=MAX_TARGETS,
            ),
        ]
        | UnsetType
    ) = UNSET
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
            "profile. EnhanceProtect: a base profile plus the chosen rules."
        ),
    ]
    enhance_protect: EnhanceProtect | UnsetType = UNSET
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
                    }
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


class PolicyCondition(Condition):
    """A condition."""

    observed_generation: (
        Annotated[Int64, Meta(description="The policy generation the condition was computed for.")] | UnsetType
    ) = UNSET


DESIRED_DESCRIPTION = "Supported nodes with a ready agent that still heartbeats."


class PolicyStatus(Wire):
    """Written by the varmor leader only."""

    profile_name: (
        Annotated[
            str,
            Meta(description="The AppArmor profile attached to the target; set once the leader accepted the policy."),
        ]
        | UnsetType
    ) = UNSET
    ready: (
        Annotated[
            bool, Meta(description="True when every supported node with a ready agent has loaded the current profile.")
        ]
        | UnsetType
    ) = UNSET
    phase: Annotated[PolicyPhase, Meta(description="Pending, Protecting or Error.")] | UnsetType = UNSET
    observed_generation: Annotated[Int64, Meta(description="The generation the leader last processed.")] | UnsetType = (
        UNSET
    )
    desired_number_loaded: Annotated[Int32, Meta(description=DESIRED_DESCRIPTION)] | UnsetType = UNSET
    current_number_loaded: (
        Annotated[Int32, Meta(description="Nodes that loaded the current profile content.")] | UnsetType
    ) = UNSET
    # Found by the leader's audit, written by the policy controller with the rest of the status.
    unprotected_workloads: (
        Annotated[
            Int32,
            Meta(description="Selected workloads with a container that runs without the profile (see Unprotected)."),
        ]
        | UnsetType
    ) = UNSET
    conditions: (
        Annotated[
            list[PolicyCondition],
            Meta(
                description="Created, Updated, Ready, and Conflict, Unprotected, Rollout when they apply.",
                max_length=32,
                extra_json_schema={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
            ),
        ]
        | UnsetType
    ) = UNSET


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
