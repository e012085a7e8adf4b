"""A policy's target: the workloads it protects (kind, name or selector, containers).

Pure; see `varmor.models` for the conventions every model follows.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import UNSET, Meta, UnsetType

from varmor.models.base import TargetKind, Wire

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
