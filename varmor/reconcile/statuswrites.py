"""The leader's two status writes, ArmorProfile and policy: merge patches on the status
subresource, counted, tolerating an object deleted meanwhile (its next event re-runs the
reconcile)."""

from __future__ import annotations

from typing import Any

from varmor import api
from varmor.clock import now_rfc3339
from varmor.kube import paths
from varmor.kube.client import JSON, ApiException
from varmor.kube.kube import MERGE_PATCH, Kube
from varmor.reconcile import metrics
from varmor.reconcile.status import Liveness, ProfileStatus, aggregate, armor_profile_status


async def write_profile_status(
    kube: Kube, ap: JSON, nodes: list[JSON], liveness: Liveness, last: dict[str, Any]
) -> ProfileStatus:
    """Aggregate the nodes' reports into `ap`'s status; write it when it differs from what
    this leader last wrote (`last`, by uid: the cache may lag its own writes)."""
    meta, spec = ap["metadata"], ap["spec"]
    ps = aggregate(meta["name"], meta["namespace"], spec["profile"]["sha256"], nodes, liveness)
    previous = last.get(meta["uid"]) or ap.get("status") or {}
    body = armor_profile_status(ps, previous, now_rfc3339())
    last[meta["uid"]] = body
    if any(previous.get(k) != v for k, v in body.items()):
        path = paths.custom_path(api.ARMOR_PROFILE, meta["namespace"], meta["name"]) + "/status"
        try:
            await kube.request("PATCH", path, body={"status": body}, content_type=MERGE_PATCH)
            metrics.STATUS_WRITES.labels("armorprofile").inc()
        except ApiException as exc:
            if exc.status != 404:
                raise
    return ps


async def patch_policy_status(kube: Kube, kind: str, ns: str, name: str, patch: JSON) -> None:
    resource = api.VARMOR_CLUSTER_POLICY if kind == api.VARMOR_CLUSTER_POLICY.kind else api.VARMOR_POLICY
    path = paths.custom_path(resource, ns or None, name) + "/status"
    try:
        await kube.request("PATCH", path, body={"status": patch}, content_type=MERGE_PATCH)
        metrics.STATUS_WRITES.labels("policy").inc()
    except ApiException as exc:
        if exc.status != 404:
            raise
