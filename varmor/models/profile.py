"""ArmorProfile: the profile a policy compiled to (spec) and how many nodes loaded it (status).

Pure; see `varmor.models` for the conventions every model follows.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import UNSET, Meta, UnsetType

from varmor import api
from varmor.models.base import Condition, Enforcer, Int32, KindName, KubeObject, ProfileMode, Wire
from varmor.models.policystatus import DESIRED_DESCRIPTION
from varmor.models.target import Target


class Profile(Wire):
    """The AppArmor profile agents load on every node."""

    name: Annotated[
        str, Meta(description="The profile name; equals the object's name.", max_length=api.MAX_PROFILE_NAME)
    ]
    enforcer: Annotated[Enforcer, Meta(description="The enforcer.")]
    mode: Annotated[ProfileMode, Meta(description="How agents load it.")]
    app_armor: Annotated[str, Meta(description="The full profile text.")]
    sha256: Annotated[str, Meta(description="Hex SHA-256 of the profile text (UTF-8).", pattern="^[0-9a-f]{64}$")]


class BehaviorModelingSpec(Wire):
    """Whether agents collect this profile's behaviour (vArmor's field)."""

    enable: Annotated[bool, Meta(description="Collect the profile's ALLOWED records into ArmorBehaviors.")] = False
    duration: Annotated[Int32, Meta(description="The policy's modelingOptions.duration, in minutes.")] = 0


class ArmorProfileSpec(Wire):
    """The profile a policy compiled to, and where it applies. Written by the leader only."""

    target: Target
    profile: Profile
    update_existing_workloads: Annotated[bool, Meta(description="Copied from the policy.")] = False
    behavior_modeling: BehaviorModelingSpec | UnsetType = UNSET
    model_sha256: (
        Annotated[str, Meta(description="DefenseInDepth: the behaviour model digest the profile enforces.")] | UnsetType
    ) = UNSET


class NodeCondition(Condition):
    """A condition."""

    node_name: Annotated[str, Meta(description="The node this condition is about.")] | UnsetType = UNSET


class ArmorProfileStatus(Wire):
    """Aggregated from ArmorNode objects by the leader."""

    desired_number_loaded: Annotated[Int32, Meta(description=DESIRED_DESCRIPTION)] | UnsetType = UNSET
    current_number_loaded: (
        Annotated[Int32, Meta(description="Nodes reporting this profile loaded at spec.profile.sha256.")] | UnsetType
    ) = UNSET
    # Spec and status are separate writes: this says which content the counts are about.
    observed_sha256: (
        Annotated[
            str,
            Meta(
                description="The spec.profile.sha256 the counts and conditions refer to; while it differs from "
                "spec.profile.sha256 they describe the previous content."
            ),
        ]
        | UnsetType
    ) = UNSET
    observed_generation: (
        Annotated[Int32, Meta(description="The generation specResourceVersion is about.")] | UnsetType
    ) = UNSET
    spec_resource_version: (
        Annotated[
            str,
            Meta(
                description="The resourceVersion at which the leader first saw this generation's spec: a node "
                "counts as having loaded it once its ArmorNode watermark reaches it (docs/contracts.md)."
            ),
        ]
        | UnsetType
    ) = UNSET
    conditions: (
        Annotated[
            list[NodeCondition],
            Meta(
                description="One entry per failed, unsupported, stale or lost (AgentLost) node, at most 10 per "
                "reason (the policy's Ready condition gives the counts).",
                max_length=40,
                extra_json_schema={"x-kubernetes-list-type": "atomic"},
            ),
        ]
        | UnsetType
    ) = UNSET


class ArmorProfile(KubeObject, kw_only=True):
    """ArmorProfile is a compiled policy (internal, written by the varmor leader)."""

    kind: KindName = api.ARMOR_PROFILE.kind
    spec: ArmorProfileSpec | UnsetType = UNSET
    status: ArmorProfileStatus | UnsetType = UNSET


# Agents refuse an ArmorProfile whose name differs from its profile's; the API server too.
ArmorProfileRoot = Annotated[
    ArmorProfile,
    Meta(
        extra_json_schema={
            "x-kubernetes-validations": [
                {"rule": "self.metadata.name == self.spec.profile.name", "message": "name must equal spec.profile.name"}
            ]
        }
    ),
]
