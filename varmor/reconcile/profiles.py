"""What a policy's ArmorProfile and status events should be (pure): the ArmorProfile
body with its owner reference, the update that touches only varmor's fields, and the
Events a status transition deserves. The controller (policies.py) does the I/O."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from varmor import api
from varmor.events import Severity
from varmor.models import (
    ArmorProfile,
    ArmorProfileSpec,
    BehaviorModelingSpec,
    ObjectMeta,
    OwnerReference,
    Profile,
    ProfileMode,
    Target,
)

PolicyKey = tuple[str, str, str]  # (kind, namespace or "", name)
ROLLOUT_FINALIZER = "varmor.org/rollout"
POLICY_KIND_LABEL = "varmor.org/policy-kind"
JSON = dict[str, Any]
POLICY_KINDS = (api.VARMOR_POLICY.kind, api.VARMOR_CLUSTER_POLICY.kind)


def policy_key(obj: Mapping[str, Any]) -> PolicyKey:
    meta = obj.get("metadata", {})
    kind = obj.get("kind") or api.VARMOR_POLICY.kind
    ns = "" if kind == api.VARMOR_CLUSTER_POLICY.kind else str(meta.get("namespace") or "")
    return kind, ns, str(meta["name"])


def owner_key(ap: Mapping[str, Any]) -> tuple[PolicyKey, str] | None:
    """(policy key, policy uid) of an ArmorProfile's controlling policy; None when it has
    none or its metadata is not an ObjectMeta (an object varmor did not write)."""
    meta = ap.get("metadata") or {}
    try:
        refs = msgspec.convert(meta.get("ownerReferences") or [], list[OwnerReference])
    except msgspec.ValidationError:
        return None
    for ref in refs:
        if ref.controller is True and ref.kind in POLICY_KINDS:
            ns = "" if ref.kind == api.VARMOR_CLUSTER_POLICY.kind else str(meta.get("namespace") or "")
            return (ref.kind, ns, ref.name), ref.uid
    return None


def profile_identity(ap: Mapping[str, Any] | None) -> tuple[str, bool] | None:
    """(uid, whether a cluster policy owns it) of an ArmorProfile, or None."""
    if ap is None:
        return None
    meta = ap.get("metadata") or {}
    cluster = (meta.get("labels") or {}).get(POLICY_KIND_LABEL) == api.VARMOR_CLUSTER_POLICY.kind
    return str(meta.get("uid")), cluster


def desired_armor_profile(
    policy: Mapping[str, Any],
    profile_name: str,
    namespace: str,
    text: str,
    mode: ProfileMode,
    sha256: str,
    *,
    modeling: bool = False,
    model_sha256: str | None = None,
) -> JSON:
    """The ArmorProfile a policy compiles to (pure), as the API's JSON. `modeling`: agents
    collect its behaviour; `model_sha256`: the model it enforces (DefenseInDepth)."""
    meta = policy["metadata"]
    spec = policy.get("spec") or {}
    kind = policy.get("kind", api.VARMOR_POLICY.kind)
    update_existing = bool(spec.get("updateExistingWorkloads"))
    body = ArmorProfile(
        metadata=ObjectMeta(
            name=profile_name,
            namespace=namespace,
            labels={api.MANAGED_BY_LABEL: "varmor", POLICY_KIND_LABEL: kind},
            owner_references=[
                OwnerReference(
                    api_version=api.API_VERSION,
                    kind=kind,
                    name=meta["name"],
                    uid=meta["uid"],
                    controller=True,
                    block_owner_deletion=True,
                )
            ],
            # Lets the leader roll workloads back before the profile disappears from nodes.
            finalizers=[ROLLOUT_FINALIZER] if update_existing else msgspec.UNSET,
        ),
        spec=ArmorProfileSpec(
            target=msgspec.convert(spec.get("target") or {}, Target),
            profile=Profile(name=profile_name, enforcer="AppArmor", mode=mode, app_armor=text, sha256=sha256),
            update_existing_workloads=update_existing,
            behavior_modeling=_behavior_modeling(spec, modeling),
            model_sha256=model_sha256 or msgspec.UNSET,
        ),
    )
    built: JSON = msgspec.to_builtins(body)
    return built


def _behavior_modeling(spec: Mapping[str, Any], modeling: bool) -> BehaviorModelingSpec | msgspec.UnsetType:
    """vArmor's spec.behaviorModeling, on BehaviorModeling policies only."""
    pol = spec.get("policy") or {}
    if pol.get("mode") != "BehaviorModeling":
        return msgspec.UNSET
    duration = (pol.get("modelingOptions") or {}).get("duration")
    return BehaviorModelingSpec(enable=modeling, duration=duration if isinstance(duration, int) else 0)


def merged_for_update(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> JSON | None:
    """`existing` with the fields we own set from `desired`, or None if already equal.
    Keeps others' labels, finalizers and owner references."""
    meta = dict(existing.get("metadata") or {})
    want = desired["metadata"]
    labels = {**(meta.get("labels") or {}), **want["labels"]}
    finalizers = [f for f in meta.get("finalizers") or [] if f != ROLLOUT_FINALIZER]
    finalizers += want.get("finalizers", [])
    refs = [r for r in meta.get("ownerReferences") or [] if not r.get("controller")] + want["ownerReferences"]
    if (
        existing.get("spec") == desired["spec"]
        and meta.get("labels") == labels
        and (meta.get("finalizers") or []) == finalizers
        and meta.get("ownerReferences") == refs
    ):
        return None
    meta.update(labels=labels, ownerReferences=refs)
    if finalizers:
        meta["finalizers"] = finalizers
    else:
        meta.pop("finalizers", None)
    return {**existing, "metadata": meta, "spec": desired["spec"]}


def transition_events(previous: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[Severity, str, str]]:
    """One Event per condition that changed reason (state changes only, never per pass)."""
    old = {c.get("type"): c for c in previous.get("conditions") or []}
    out: list[tuple[Severity, str, str]] = []
    for cond in new.get("conditions") or []:
        before = old.get(cond["type"])
        if before is not None and before.get("reason") == cond.get("reason") and before.get("status") == cond["status"]:
            continue
        if cond["type"] == "Created" and cond["status"] == "True":
            continue  # the ProfileCreated event already says it
        if cond["type"] == "Updated" and cond["status"] == "True":
            continue
        etype: Severity = (
            "Normal" if cond["status"] == "True" or cond.get("reason") in ("Loading", "Processing") else "Warning"
        )
        event = (etype, str(cond.get("reason") or cond["type"]), str(cond.get("message") or ""))
        if event not in out:  # an invalid policy fails Created and Ready for one reason
            out.append(event)
    return out
