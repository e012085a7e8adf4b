"""Typed models of varmor's four kinds: the wire contracts of docs/contracts.md, in one place.

Pure: msgspec Structs, no I/O. They are the only source of the CRD schemas
(`varmor.crdschema` turns them into OpenAPI v3 structural schemas), so a field, its limits,
its enum and its CEL rules are declared once, and code reading or writing an object can
decode it into the same types (`msgspec.convert(obj, ArmorProfile)`) instead of spelling
keys again. Conventions, so that a decoded object encodes back to the same dict
(`msgspec.to_builtins`):

* an optional field defaults to `UNSET` and is omitted while unset: the API server stores
  what was written, so an explicit `[]`, `{}` or `false` survives a round trip;
* a field the CRD defaults (`default: false`) defaults to that value and is always encoded,
  as the API server fills it in on every object it returns (a desired spec built from the
  model then compares equal to the stored one);
* `Meta(description=...)` (or the Struct's docstring) is what `kubectl explain` shows;
  `extra_json_schema` carries the Kubernetes extensions (`x-kubernetes-*`, CEL rules).
"""

from __future__ import annotations

from typing import Any, Final

from varmor import api
from varmor.models.base import (
    ConditionStatus,
    Enforcer,
    NodePhase,
    ObjectMeta,
    OwnerReference,
    PolicyMode,
    PolicyPhase,
    ProfileMode,
    TargetKind,
)
from varmor.models.behavior import ArmorBehavior, ArmorBehaviorRoot, ArmorProfileModel
from varmor.models.node import ArmorNode, ArmorNodeStatus, FailedProfile, LoadedProfile
from varmor.models.policy import (
    CATEGORY_FIELDS,
    AttackProtectionRules,
    EnhanceProtect,
    PolicyRules,
    PolicySpec,
    RawRules,
    VarmorClusterPolicy,
    VarmorClusterPolicyRoot,
    VarmorPolicy,
    VarmorPolicyRoot,
)
from varmor.models.policystatus import ModelingStatus, ModelStatus, PolicyCondition, PolicyStatus
from varmor.models.profile import (
    ArmorProfile,
    ArmorProfileRoot,
    ArmorProfileSpec,
    ArmorProfileStatus,
    BehaviorModelingSpec,
    NodeCondition,
    Profile,
)
from varmor.models.target import Selector, SelectorRequirement, Target

# Each kind with the type its CRD schema is generated from, in the order `varmor crds` writes them.
KINDS: Final[tuple[tuple[api.Resource, Any], ...]] = (
    (api.VARMOR_POLICY, VarmorPolicyRoot),
    (api.VARMOR_CLUSTER_POLICY, VarmorClusterPolicyRoot),
    (api.ARMOR_PROFILE, ArmorProfileRoot),
    (api.ARMOR_NODE, ArmorNode),
    (api.ARMOR_BEHAVIOR, ArmorBehaviorRoot),
    (api.ARMOR_PROFILE_MODEL, ArmorProfileModel),
)

__all__ = [
    "CATEGORY_FIELDS",
    "KINDS",
    "ArmorBehavior",
    "ArmorNode",
    "ArmorNodeStatus",
    "ArmorProfile",
    "ArmorProfileModel",
    "ArmorProfileRoot",
    "ArmorProfileSpec",
    "ArmorProfileStatus",
    "AttackProtectionRules",
    "BehaviorModelingSpec",
    "ConditionStatus",
    "Enforcer",
    "EnhanceProtect",
    "FailedProfile",
    "LoadedProfile",
    "ModelStatus",
    "ModelingStatus",
    "NodeCondition",
    "NodePhase",
    "ObjectMeta",
    "OwnerReference",
    "PolicyCondition",
    "PolicyMode",
    "PolicyPhase",
    "PolicyRules",
    "PolicySpec",
    "PolicyStatus",
    "Profile",
    "ProfileMode",
    "RawRules",
    "Selector",
    "SelectorRequirement",
    "Target",
    "TargetKind",
    "VarmorClusterPolicy",
    "VarmorPolicy",
]
