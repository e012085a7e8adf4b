"""ArmorBehavior (one node's share of a profile's behaviour, written by that node's agent)
and ArmorProfileModel (the leader's merge of the shares; no owner, so it outlives its policy).

Pure; see `varmor.models` for the conventions every model follows. The behaviour lists are
`varmor.behavior.model`'s wire form; `varmor.behavior.codec` reads and writes `data`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import UNSET, Meta, UnsetType

from varmor import api
from varmor.models.base import Condition, Int64, KindName, KubeObject, Timestamp, Wire

StorageType = Literal["CRDInternal", "CRDInternalCompressed"]
MAX_ITEMS = 100_000
_COUNT = Annotated[Int64, Meta(description="Audit records behind this rule.")]
_WORD = Annotated[str, Meta(max_length=64)]
_PATH = Annotated[str, Meta(max_length=4096)]


class ExecItem(Wire):
    """An executed program."""

    path: _PATH
    count: _COUNT = 0


class FileItem(Wire):
    """A file rule."""

    path: _PATH
    permissions: Annotated[str, Meta(max_length=8, description="Permissions (r w a l k m).")]
    owner: bool | UnsetType = UNSET
    count: _COUNT = 0


class CapabilityItem(Wire):
    """A capability used."""

    name: _WORD
    count: _COUNT = 0


class NetworkItem(Wire):
    """A socket created or used."""

    family: _WORD
    type: _WORD | UnsetType = UNSET
    protocol: _WORD | UnsetType = UNSET
    count: _COUNT = 0


class SignalItem(Wire):
    """A signal sent or received."""

    access: _WORD
    signal: _WORD
    peer: Annotated[str, Meta(max_length=256)]
    count: _COUNT = 0


class PtraceItem(Wire):
    """A ptrace access."""

    access: _WORD
    peer: Annotated[str, Meta(max_length=256)]
    count: _COUNT = 0


class MountItem(Wire):
    """A mount operation."""

    operation: _WORD
    fstype: _WORD | UnsetType = UNSET
    source: _PATH | UnsetType = UNSET
    mountpoint: _PATH | UnsetType = UNSET
    flags: Annotated[str, Meta(max_length=1024)] | UnsetType = UNSET
    count: _COUNT = 0


def _items(what: str) -> Meta:
    return Meta(description=what, max_length=MAX_ITEMS)


class AppArmorBehavior(Wire):
    """What the profile's processes did, as AppArmor rules."""

    executions: Annotated[list[ExecItem], _items("Programs executed.")] | UnsetType = UNSET
    files: Annotated[list[FileItem], _items("Files accessed.")] | UnsetType = UNSET
    capabilities: Annotated[list[CapabilityItem], _items("Capabilities.")] | UnsetType = UNSET
    networks: Annotated[list[NetworkItem], _items("Sockets.")] | UnsetType = UNSET
    signals: Annotated[list[SignalItem], _items("Signals.")] | UnsetType = UNSET
    ptraces: Annotated[list[PtraceItem], _items("ptrace accesses.")] | UnsetType = UNSET
    mounts: Annotated[list[MountItem], _items("Mounts.")] | UnsetType = UNSET


class DynamicResult(Wire):
    """Behaviour observed at run time (vArmor's name)."""

    app_armor: AppArmorBehavior | UnsetType = UNSET


class BehaviorData(Wire):
    """Either the rules (CRDInternal) or their gzip+base64 JSON (CRDInternalCompressed)."""

    dynamic_result: DynamicResult | UnsetType = UNSET
    compressed: (
        Annotated[str, Meta(description="base64 of gzip of dynamicResult's JSON.", max_length=1_500_000)] | UnsetType
    ) = UNSET


class RecordCounts(Wire):
    """How many audit records went where."""

    records: Annotated[Int64, Meta(description="Records folded in.")] = 0
    lost_records: Annotated[
        Int64, Meta(description="Records the node's kernel dropped (rate limits) while collecting.")
    ] = 0
    excluded_records: Annotated[
        Int64, Meta(description="Records left out: the container runtime's own start-up, unusable names.")
    ] = 0


class PodRecords(Wire):
    """A pod whose processes' records are in the share (or model)."""

    namespace: Annotated[str, Meta(max_length=253, description="'(another namespace)' when not to be named.")]
    name: Annotated[str, Meta(max_length=253)]
    container: Annotated[str, Meta(max_length=253)] | UnsetType = UNSET
    image: Annotated[str, Meta(max_length=4096)] | UnsetType = UNSET
    records: Annotated[Int64, Meta(description="Records from this pod.")] = 0


_PODS = Meta(description="The pods the records came from (at most 64 named).", max_length=65)


class ArmorBehaviorSpec(RecordCounts, kw_only=True):
    """Whose share this is."""

    unattributed_records: Annotated[
        Int64, Meta(description="Records whose pod the agent could not name (the process had exited).")
    ] = 0
    pods: Annotated[list[PodRecords], _PODS] | UnsetType = UNSET

    node_name: Annotated[str, Meta(description="The node that collected it.", max_length=253)]
    profile_name: Annotated[str, Meta(description="The profile.", max_length=api.MAX_PROFILE_NAME)]
    update_time: Annotated[Timestamp, Meta(description="When the agent last wrote it.")] | UnsetType = UNSET


class ArmorBehavior(KubeObject, kw_only=True):
    """ArmorBehavior is one node's share of a profile's behaviour (written by that node's agent only)."""

    kind: KindName = api.ARMOR_BEHAVIOR.kind
    spec: ArmorBehaviorSpec | UnsetType = UNSET
    storage_type: StorageType = "CRDInternal"
    data: BehaviorData | UnsetType = UNSET


# An agent writes only `<profile>.<its node>`: the name says whose share it is.
ArmorBehaviorRoot = Annotated[
    ArmorBehavior,
    Meta(
        extra_json_schema={
            "x-kubernetes-validations": [
                {
                    "rule": "self.metadata.name == self.spec.profileName + '.' + self.spec.nodeName",
                    "message": "name must be <spec.profileName>.<spec.nodeName>",
                }
            ]
        }
    ),
]


class NodeShare(RecordCounts, kw_only=True):
    """One node's contribution."""

    node_name: Annotated[str, Meta(description="The node.", max_length=253)]
    rules: Annotated[Int64, Meta(description="Rules in its share.")] = 0
    refused_rules: Annotated[Int64, Meta(description="Rules refused as unsafe to write into a profile.")] = 0
    refused: (
        Annotated[
            str,
            Meta(
                max_length=512,
                description="Why the whole share was not merged (unreadable, not owned by the ArmorProfile, "
                "or no pod on the node uses the profile).",
            ),
        ]
        | UnsetType
    ) = UNSET


class ArmorProfileModelStatus(RecordCounts):
    """Written by the leader."""

    pods: Annotated[list[PodRecords], _PODS] | UnsetType = UNSET

    sha256: Annotated[str, Meta(description="Digest of the merged rules.")] | UnsetType = UNSET
    rules: Annotated[Int64, Meta(description="Rules in the model.")] = 0
    size: Annotated[Int64, Meta(description="Bytes of the model's JSON (before compression).")] = 0
    nodes: Annotated[list[NodeShare], Meta(description="Contributing nodes.", max_length=10000)] | UnsetType = UNSET
    conditions: Annotated[list[Condition], Meta(description="Stored (False: TooLarge).", max_length=8)] | UnsetType = (
        UNSET
    )
    update_time: Annotated[Timestamp, Meta(description="When the leader last merged.")] | UnsetType = UNSET


class ArmorProfileModel(KubeObject, kw_only=True):
    """ArmorProfileModel is a policy's behaviour model, merged from every node's ArmorBehavior."""

    kind: KindName = api.ARMOR_PROFILE_MODEL.kind
    storage_type: StorageType = "CRDInternal"
    data: BehaviorData | UnsetType = UNSET
    status: ArmorProfileModelStatus | UnsetType = UNSET
