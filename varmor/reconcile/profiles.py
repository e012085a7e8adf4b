"""What a policy's ArmorProfile and status events should be (pure): the ArmorProfile
body with its owner reference, the update that touches only varmor's fields, and the
Events a status transition deserves. The controller (policies.py) does the I/O."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from varmor import api
from varmor.events import Severity
from varmor.kube.client import JSON

PolicyKey = tuple[str, str, str]  # (kind, namespace or "", name)
ROLLOUT_FINALIZER = "varmor.org/rollout"
POLICY_KIND_LABEL = "varmor.org/policy-kind"


def policy_key(obj: Mapping[str, Any]) -> PolicyKey:
    meta = obj.get("metadata", {})
    kind = obj.get("kind") or api.VARMOR_POLICY.kind
    ns = "" if kind == api.VARMOR_CLUSTER_POLICY.kind else str(meta.get("namespace") or "")
    return kind, ns, str(meta["name"])


def owner_key(ap: Mapping[str, Any]) -> tuple[PolicyKey, str] | None:
    """(policy key, policy uid) of an ArmorProfile's controlling policy."""
    meta = ap.get("metadata", {})
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") in (api.VARMOR_POLICY.kind, api.VARMOR_CLUSTER_POLICY.kind):
            ns = "" if ref["kind"] == api.VARMOR_CLUSTER_POLICY.kind else str(meta.get("namespace") or "")
            return (ref["kind"], ns, ref["name"]), str(ref.get("uid") or "")
    return None


def desired_armor_profile(
    policy: Mapping[str, Any], profile_name: str, namespace: str, text: str, mode: str, sha256: str
) -> JSON:
    """The ArmorProfile a policy compiles to (pure)."""
    meta = policy["metadata"]
    spec = policy.get("spec") or {}
    update_existing = bool(spec.get("updateExistingWorkloads"))
    body: JSON = {
        "apiVersion": api.API_VERSION,
        "kind": api.ARMOR_PROFILE.kind,
        "metadata": {
            "name": profile_name,
            "namespace": namespace,
            "labels": {api.MANAGED_BY_LABEL: "varmor", POLICY_KIND_LABEL: policy.get("kind", api.VARMOR_POLICY.kind)},
            "ownerReferences": [
                {
                    "apiVersion": api.API_VERSION,
                    "kind": policy.get("kind", api.VARMOR_POLICY.kind),
                    "name": meta["name"],
                    "uid": meta["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "target": spec.get("target") or {},
            "profile": {"name": profile_name, "enforcer": "AppArmor", "mode": mode, "appArmor": text, "sha256": sha256},
            "updateExistingWorkloads": update_existing,
        },
    }
    if update_existing:
        # Lets the leader roll workloads back before the profile disappears from nodes.
        body["metadata"]["finalizers"] = [ROLLOUT_FINALIZER]
    return body


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


def changed_profiles(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> set[str] | None:
    """Profile names whose entries differ between two versions of an ArmorNode, or None
    when the node as a whole changed (appeared, went away, phase or readiness)."""
    if old is None or new is None:
        return None
    os_, ns_ = old.get("status") or {}, new.get("status") or {}
    if os_.get("phase") != ns_.get("phase") or os_.get("ready") != ns_.get("ready"):
        return None
    changed: set[str] = set()
    for field in ("profiles", "failures"):
        a, b = os_.get(field) or {}, ns_.get(field) or {}
        changed.update(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return changed


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
