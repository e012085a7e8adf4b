"""Shared wire types: the camelCase base, metadata, owner references, closed sets, timestamps.

Pure; see `varmor.models` for the conventions every model follows.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from varmor import api

TargetKind = Literal["Deployment", "StatefulSet", "DaemonSet", "Pod"]  # == api.TARGET_KINDS (tested)
PolicyMode = Literal["AlwaysAllow", "RuntimeDefault", "EnhanceProtect", "BehaviorModeling", "DefenseInDepth"]
ProfileMode = Literal["enforce", "complain"]
Enforcer = Literal["AppArmor"]
PolicyPhase = Literal["Pending", "Protecting", "Modeling", "Completed", "Error"]
NodePhase = Literal["Supported", "Unsupported"]
ConditionStatus = Literal["True", "False", "Unknown"]

# The CRD's `type: string, format: date-time`; kept a string, as the API server returns it
# (`varmor.clock.parse_time` reads it), so a round trip never reformats a timestamp.
Timestamp = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]
Int32 = Annotated[int, Meta(ge=0, extra_json_schema={"format": "int32"})]
Int64 = Annotated[int, Meta(ge=0, extra_json_schema={"format": "int64"})]
# Every kind redeclares `kind` with its own default; this keeps the description on each.
KindName = Annotated[str, Meta(description="The REST resource this object represents.")]


class Wire(Struct, rename="camel"):
    """Field names in camelCase on the wire, as Kubernetes spells them."""


# -- shared ------------------------------------------------------------------------
class OwnerReference(Wire):
    """An owner reference: the policy owning an ArmorProfile, the Node owning an ArmorNode."""

    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool | UnsetType = UNSET
    block_owner_deletion: bool | UnsetType = UNSET


class ObjectMeta(Wire):
    """The metadata fields varmor reads or writes. Others (managedFields, ...) are ignored when
    decoding: update stored objects from the dict they were read as, not from the model."""

    name: str | UnsetType = UNSET
    generate_name: str | UnsetType = UNSET
    namespace: str | UnsetType = UNSET
    uid: str | UnsetType = UNSET
    resource_version: str | UnsetType = UNSET
    generation: int | UnsetType = UNSET
    creation_timestamp: Timestamp | UnsetType = UNSET
    deletion_timestamp: Timestamp | UnsetType = UNSET
    labels: dict[str, str] | UnsetType = UNSET
    annotations: dict[str, str] | UnsetType = UNSET
    owner_references: list[OwnerReference] | UnsetType = UNSET
    finalizers: list[str] | UnsetType = UNSET


class Condition(Wire):
    """The fields every condition has (metav1.Condition's, less what varmor does not use)."""

    type: Annotated[str, Meta(description="The condition type.")]
    status: Annotated[ConditionStatus, Meta(description="True, False or Unknown.")]
    reason: Annotated[str, Meta(description="A CamelCase word naming the cause.")] | UnsetType = UNSET
    message: Annotated[str, Meta(description="What happened, and what to do about it.")] | UnsetType = UNSET
    last_transition_time: Annotated[Timestamp, Meta(description="When the status last changed.")] | UnsetType = UNSET


class KubeObject(Wire, kw_only=True):
    """The envelope every object has. The CRD generator keeps only the types of these three
    fields (Kubernetes fixes their schema): no defaults, metadata just `type: object`."""

    api_version: Annotated[str, Meta(description="The versioned schema of this object.")] = api.API_VERSION
    kind: KindName
    metadata: ObjectMeta = msgspec.field(default_factory=ObjectMeta)
