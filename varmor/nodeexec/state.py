"""Pure agent logic: which ArmorProfile a profile name should load, what the node has,
and the ArmorNode status that reports it. No I/O."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from varmor import api
from varmor.loadreport import LoadException, Report
from varmor.nodeexec.files import is_varmor_name
from varmor.profile.trust import check_profile_text

JSON = dict[str, Any]
MODES = ("enforce", "complain")
POLICY_KINDS = (api.VARMOR_POLICY.kind, api.VARMOR_CLUSTER_POLICY.kind)


@dataclass(frozen=True)
class PolicyRef:
    kind: str
    name: str
    namespace: str  # "" for VarmorClusterPolicy
    uid: str

    def may_name(self, pod_namespace: str) -> bool:
        """Whether this policy's Events may name a pod: its own namespace's, or any for a
        cluster policy (whose owner administers the cluster). A pod in another tenant's
        namespace that runs under this tenant's profile stays invisible to that tenant."""
        return self.kind == api.VARMOR_CLUSTER_POLICY.kind or self.namespace == pod_namespace


@dataclass(frozen=True)
class Desired:
    """An ArmorProfile that this node should have loaded."""

    name: str
    namespace: str
    text: str
    sha256: str
    mode: str
    policy: PolicyRef | None = None
    uid: str = ""  # the ArmorProfile's (behaviour shares are owned by it)
    modeling: bool = False  # BehaviorModeling: collect its ALLOWED records (complain mode only)


@dataclass(frozen=True)
class Loaded:
    namespace: str
    sha256: str
    mode: str


@dataclass(frozen=True)
class Failed:
    namespace: str
    sha256: str
    message: str


@dataclass
class NodeState:
    """What this node's kernel has from varmor, as far as the agent knows it exactly."""

    loaded: dict[str, Loaded] = field(default_factory=dict)
    failures: dict[str, Failed] = field(default_factory=dict)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def policy_ref(obj: Mapping[str, Any]) -> PolicyRef | None:
    """The policy an ArmorProfile belongs to (its controller owner reference)."""
    meta = obj.get("metadata", {})
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") in POLICY_KINDS and ref.get("controller", True):
            namespace = meta.get("namespace", "") if ref["kind"] == api.VARMOR_POLICY.kind else ""
            return PolicyRef(ref["kind"], ref.get("name", ""), namespace, ref.get("uid", ""))
    return None


def validate(obj: Mapping[str, Any]) -> Desired | Failed:
    """An ArmorProfile as something to load, or why it cannot be loaded. Strict on
    purpose: a profile name outside `varmor-*`, a text whose hash does not match, or a text
    that could do more than varmor's builder writes (`trust.check_profile_text`) never
    reaches the kernel."""
    meta = obj.get("metadata", {})
    spec = obj.get("spec", {}) or {}
    profile = spec.get("profile", {}) or {}
    name, namespace = meta.get("name", ""), meta.get("namespace", "")
    text = profile.get("appArmor") or ""
    actual = sha256_text(text)
    declared = profile.get("sha256") or actual

    def fail(message: str) -> Failed:
        return Failed(namespace, declared, message)

    if profile.get("name") != name:
        return fail(f"spec.profile.name {profile.get('name')!r} differs from the object name {name!r}")
    if not is_varmor_name(name):
        return fail(f"profile name {name!r} is not a varmor profile name (varmor-*, at most 63 characters)")
    if profile.get("enforcer", "AppArmor") != "AppArmor":
        return fail(f"enforcer {profile.get('enforcer')!r} is not AppArmor")
    mode = profile.get("mode", "enforce")
    if mode not in MODES:
        return fail(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if not text.strip():
        return fail("spec.profile.appArmor is empty")
    if declared != actual:
        return fail(f"spec.profile.sha256 {declared} does not match the text's sha256 {actual}")
    refused = check_profile_text(name, text, mode)
    if refused is not None:
        return fail(f"refused to load: {refused}")
    modeling = mode == "complain" and bool((spec.get("behaviorModeling") or {}).get("enable") is True)
    return Desired(name, namespace, text, actual, mode, policy_ref(obj), str(meta.get("uid") or ""), modeling)


def _age(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata", {})
    return meta.get("creationTimestamp") or "", meta.get("uid") or ""


def choose(objects: Iterable[Mapping[str, Any]]) -> tuple[Desired | None, list[Failed]]:
    """The ArmorProfile to load for one profile name, plus failures for the rest. Objects
    being deleted count as gone. Two valid objects with one name (the leader prevents it,
    but the agent must not flip between them): the oldest wins (creationTimestamp, uid)."""
    live = sorted((o for o in objects if not o.get("metadata", {}).get("deletionTimestamp")), key=_age)
    winner: Desired | None = None
    rejected: list[Failed] = []
    for obj in live:
        result = validate(obj)
        if isinstance(result, Failed):
            rejected.append(result)
        elif winner is None:
            winner = result
        else:
            rejected.append(
                Failed(
                    result.namespace,
                    result.sha256,
                    f"profile name conflict: {result.name} is already loaded from ArmorProfile "
                    f"{winner.namespace}/{winner.name}, which is older",
                )
            )
    return winner, rejected


def outcome(state: NodeState, desired: Mapping[str, Desired], name: str) -> LoadException | None:
    """What the load report says of profile `name` once its last sync finished: nothing
    when its received content is loaded (or it is gone), else a failure or still loading."""
    failure = state.failures.get(name)
    if failure is not None:
        return LoadException("Failed", failure.namespace, failure.sha256, failure.message)
    want = desired.get(name)
    if want is None or state.loaded.get(name) == Loaded(want.namespace, want.sha256, want.mode):
        return None
    return LoadException("Loading", want.namespace, want.sha256)


REMOVED_OUTSIDE = "it was removed from the kernel outside varmor, and the agent is loading it again"


def missing_reason(state: NodeState, desired: Mapping[str, Desired], name: str, *, synced: bool) -> str:
    """Why profile `name`, which the kernel does not have, is missing (for a pod waiting
    for it)."""
    if not synced:
        return "the agent is still loading this node's profiles after its start"
    if (failure := state.failures.get(name)) is not None:
        return f"it failed to load here: {failure.message}"
    if name in state.loaded:
        return REMOVED_OUTSIDE
    if name not in desired:
        return "no ArmorProfile of that name has reached this node (its policy does not exist, or not yet)"
    return "the agent is loading it"


def node_status(
    *,
    supported: bool,
    reason: str,
    parser_version: str,
    agent_version: str,
    ready: bool,
    report: Report,
    loaded: int = 0,
    conditions: Iterable[JSON] = (),
) -> JSON:
    """The ArmorNode status (docs/contracts.md), without lastUpdateTime so that two
    statuses compare equal when nothing changed."""
    status: JSON = {
        "phase": "Supported" if supported else "Unsupported",
        "parserVersion": parser_version,
        "agentVersion": agent_version,
        "ready": ready,
        "loaded": loaded,
        **report.to_json(),
    }
    if not supported:
        status["reason"] = reason
    if conditions := list(conditions):
        status["conditions"] = conditions
    return status
