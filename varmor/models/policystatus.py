"""VarmorPolicy and VarmorClusterPolicy status: written by the varmor leader only.

Pure; see `varmor.models` for the conventions every model follows.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import UNSET, Meta, UnsetType

from varmor.models.base import Condition, Int32, Int64, PolicyPhase, Timestamp, Wire


class PolicyCondition(Condition):
    """A condition."""

    observed_generation: (
        Annotated[Int64, Meta(description="The policy generation the condition was computed for.")] | UnsetType
    ) = UNSET


DESIRED_DESCRIPTION = "Supported nodes with a ready agent that still heartbeats."


class ModelingStatus(Wire):
    """The BehaviorModeling window (leader-written)."""

    start_time: Annotated[Timestamp, Meta(description="When modelling (last) started.")]
    end_time: Annotated[Timestamp, Meta(description="When it ends: startTime + duration.")]
    duration: Annotated[Int32, Meta(description="The modelingOptions.duration the window was computed for.")]


class ModelStatus(Wire):
    """The policy's behaviour model (ArmorProfileModel of the same name as the profile)."""

    sha256: Annotated[str, Meta(description="Digest of the model's rules as last merged.")] | UnsetType = UNSET
    rules: Annotated[Int32, Meta(description="Rules in the model.")] | UnsetType = UNSET
    records: Annotated[Int64, Meta(description="Audit records folded into the model.")] | UnsetType = UNSET
    lost_records: (
        Annotated[
            Int64,
            Meta(
                description="Records the nodes' kernels dropped while modelling (rate limits): the model may lack them."
            ),
        ]
        | UnsetType
    ) = UNSET
    nodes: (
        Annotated[
            list[Annotated[str, Meta(description="A node name.")]],
            Meta(description="Nodes that contributed (at most 64 listed).", max_length=64),
        ]
        | UnsetType
    ) = UNSET
    enforced_sha256: (
        Annotated[str, Meta(description="DefenseInDepth/BehaviorModel: the model digest the profile enforces.")]
        | UnsetType
    ) = UNSET


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
    modeling: ModelingStatus | UnsetType = UNSET
    model: ModelStatus | UnsetType = UNSET
    conditions: (
        Annotated[
            list[PolicyCondition],
            Meta(
                description="Created, Updated, Ready, and Conflict, Unprotected, Rollout, Model when they apply.",
                max_length=32,
                extra_json_schema={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
            ),
        ]
        | UnsetType
    ) = UNSET
