"""ArmorNode: what one node's agent has loaded, written by that agent only.

Pure; see `varmor.models` for the conventions every model follows.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from msgspec import UNSET, Meta, UnsetType

from varmor import api
from varmor.models.base import Condition, Int32, KindName, KubeObject, NodePhase, ProfileMode, Timestamp, Wire


class LoadedProfile(Wire):
    """A profile loaded in the node's kernel."""

    namespace: Annotated[str, Meta(description="The ArmorProfile's namespace.")] | UnsetType = UNSET
    sha256: Annotated[str, Meta(description="The content hash it was loaded at.")] | UnsetType = UNSET
    mode: Annotated[ProfileMode, Meta(description="How it was loaded.")] | UnsetType = UNSET


class LoadException(Wire):
    """A profile this node has not loaded at the content it last received."""

    state: Annotated[
        Literal["Loading", "Failed"], Meta(description="Loading: still being loaded; Failed: the load failed.")
    ]
    namespace: Annotated[str, Meta(description="The ArmorProfile's namespace.")] | UnsetType = UNSET
    sha256: (
        Annotated[str, Meta(description="The first 16 hex digits of the content's sha256.", max_length=64)] | UnsetType
    ) = UNSET
    message: (
        Annotated[str, Meta(description="Why (at most 160 bytes; the agent's log has the whole text).")] | UnsetType
    ) = UNSET


class FailedProfile(Wire):
    """A profile the node failed to load."""

    namespace: Annotated[str, Meta(description="The ArmorProfile's namespace.")] | UnsetType = UNSET
    sha256: Annotated[str, Meta(description="The content hash that failed.")] | UnsetType = UNSET
    message: Annotated[str, Meta(description="The parser's message.")] | UnsetType = UNSET


# Atomic maps: the agent rewrites them whole, and the API server then tracks one managed
# field per map instead of three per profile (a 200-profile write costs a fraction of the CPU).
_ATOMIC_MAP: Final = {"x-kubernetes-map-type": "atomic"}


class ArmorNodeStatus(Wire):
    """Written by the node's agent only."""

    phase: Annotated[NodePhase, Meta(description="Whether this node can load AppArmor profiles.")] | UnsetType = UNSET
    reason: Annotated[str, Meta(description="Why the node is Unsupported.")] | UnsetType = UNSET
    parser_version: Annotated[str, Meta(description="apparmor_parser version.")] | UnsetType = UNSET
    agent_version: Annotated[str, Meta(description="varmor agent version.")] | UnsetType = UNSET
    ready: Annotated[bool, Meta(description="The agent finished its initial sync.")] | UnsetType = UNSET
    loaded: (
        Annotated[Int32, Meta(description="How many varmor profiles this node's kernel holds from the agent.")]
        | UnsetType
    ) = UNSET
    watermark: (
        Annotated[
            str,
            Meta(
                description="Every ArmorProfile version this agent received with a resourceVersion up to this one "
                "is loaded here, unless its profile is listed in exceptions (docs/contracts.md).",
                pattern="^[1-9][0-9]*$",
            ),
        ]
        | UnsetType
    ) = UNSET
    exceptions: (
        Annotated[
            dict[str, LoadException],
            Meta(
                description="Profiles up to the watermark not loaded at the content received, keyed by profile "
                "name: still loading (at most 8) or failed (at most 64).",
                extra_json_schema={"maxProperties": api.MAX_LOADING_EXCEPTIONS + api.MAX_FAILED_EXCEPTIONS},
            ),
        ]
        | UnsetType
    ) = UNSET
    profiles: (
        Annotated[
            dict[str, LoadedProfile],
            Meta(
                description="Deprecated (agents before the load report): loaded profiles, keyed by profile name.",
                extra_json_schema=_ATOMIC_MAP,
            ),
        ]
        | UnsetType
    ) = UNSET
    failures: (
        Annotated[
            dict[str, FailedProfile],
            Meta(
                description="Deprecated (agents before the load report): failed profiles, keyed by profile name.",
                extra_json_schema=_ATOMIC_MAP,
            ),
        ]
        | UnsetType
    ) = UNSET
    conditions: (
        Annotated[
            list[Condition],
            Meta(
                description="Node-level conditions, once there is one to report: ProfileDirWritable (False while "
                "writes to the profile directory fail, e.g. NoSpace or ReadOnly; the agent retries by itself).",
                max_length=8,
                extra_json_schema={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
            ),
        ]
        | UnsetType
    ) = UNSET
    last_update_time: Annotated[Timestamp, Meta(description="When the agent last wrote this status.")] | UnsetType = (
        UNSET
    )
    heartbeat_time: (
        Annotated[
            Timestamp,
            Meta(
                description="When the agent last said it is alive (renewed every --agent-heartbeat seconds, 60 by "
                "default). The leader treats a node whose heartbeat is older than --agent-lost-after (180 s) as "
                "AgentLost: not counted, not blocking Ready. Absent: an agent without heartbeats, always counted."
            ),
        ]
        | UnsetType
    ) = UNSET


class ArmorNode(KubeObject, kw_only=True):
    """ArmorNode is what one node's varmor agent has loaded (written by that agent only)."""

    kind: KindName = api.ARMOR_NODE.kind
    status: ArmorNodeStatus | UnsetType = UNSET
