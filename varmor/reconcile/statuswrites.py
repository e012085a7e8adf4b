"""The leader's two status writes, ArmorProfile and policy: merge patches on the status
subresource, counted, tolerating an object deleted meanwhile (its next event re-runs the
reconcile).

Every status write is conditional on the resourceVersion it was computed from (the patch
carries `metadata.resourceVersion`; 409 when the object moved on): a write computed from
an old view, such as a previous leader's that arrived late, can never overwrite a newer
one. `Written` says which version that is, and which status to compare with."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from varmor import api
from varmor.clock import now_rfc3339
from varmor.kube import paths
from varmor.kube.client import JSON, ApiException
from varmor.kube.errors import TemporaryError
from varmor.kube.kube import MERGE_PATCH, Kube
from varmor.reconcile import metrics
from varmor.reconcile.nodecounts import ProfileStatus
from varmor.reconcile.status import armor_profile_status

KEEP_VERSIONS = 8


class Written:
    """What this leader last wrote to each object's status (by uid), and the versions of
    the object known to hold it: the one it was computed from and those our writes made.

    The informer cache lags our own writes, so comparing with it would repeat them: while
    the cached object is at a known version we compare with our memory. Any other version
    was written by someone else since (an operator; a previous leader's write that arrived
    late): we compare with what it holds, so whatever we disagree with is written again."""

    def __init__(self) -> None:
        self._by_uid: dict[str, tuple[tuple[str, ...], JSON]] = {}

    def _known(self, obj: Mapping[str, Any]) -> tuple[tuple[str, ...], JSON] | None:
        meta = obj["metadata"]
        entry = self._by_uid.get(str(meta.get("uid", "")))
        return entry if entry is not None and meta.get("resourceVersion") in entry[0] else None

    def previous(self, obj: Mapping[str, Any]) -> JSON:
        known = self._known(obj)
        return known[1] if known is not None else dict(obj.get("status") or {})

    def version(self, obj: Mapping[str, Any]) -> str:
        """The resourceVersion our next write to `obj` is conditional on: the newest known."""
        known = self._known(obj)
        return known[0][-1] if known is not None else str(obj["metadata"].get("resourceVersion", ""))

    def remember(self, obj: Mapping[str, Any], status: JSON, written: str | None = None) -> None:
        """`obj`'s status is now `status`, at `written` (the version our write made) or,
        without a write, at the version `obj` is at."""
        known = self._known(obj)
        versions = known[0] if known is not None else (str(obj["metadata"].get("resourceVersion", "")),)
        if written:
            versions = (*versions, written)[-KEEP_VERSIONS:]
        self._by_uid[str(obj["metadata"]["uid"])] = (versions, status)

    def moved(self, obj: Mapping[str, Any]) -> None:
        """Our own write of something else (the spec) returned `obj`: a version to know
        if its status is the one we remember (so nobody else wrote it since)."""
        entry, version = self._by_uid.get(str(obj["metadata"].get("uid", ""))), obj["metadata"].get("resourceVersion")
        if entry is not None and version not in entry[0] and (obj.get("status") or {}) == entry[1]:
            self._by_uid[str(obj["metadata"]["uid"])] = ((*entry[0], str(version))[-KEEP_VERSIONS:], entry[1])

    def forget(self, uid: str) -> None:
        self._by_uid.pop(uid, None)


async def _patch_status(kube: Kube, path: str, obj: Mapping[str, Any], status: JSON, written: Written) -> str | None:
    """Merge-patch `status`, conditional on `written.version(obj)`; returns the new
    resourceVersion, or None when the object is gone."""
    body = {"metadata": {"resourceVersion": written.version(obj)}, "status": status}
    try:
        result = await kube.request("PATCH", path + "/status", body=body, content_type=MERGE_PATCH)
    except ApiException as exc:
        if exc.status == 409:
            raise TemporaryError(f"{path} changed while its status was computed; computing again") from None
        if exc.status != 404:
            raise
        return None
    return str(result["metadata"]["resourceVersion"])


def only_progress(previous: Mapping[str, Any], body: Mapping[str, Any]) -> bool:
    """Whether `body` differs from `previous` only by currentNumberLoaded, and not onto or
    off desiredNumberLoaded (readiness is unchanged)."""
    if {k for k, v in body.items() if previous.get(k) != v} != {"currentNumberLoaded"}:
        return False
    desired = body.get("desiredNumberLoaded")
    return (previous.get("currentNumberLoaded") == desired) == (body.get("currentNumberLoaded") == desired)


async def write_profile_status(
    kube: Kube, ap: JSON, ps: ProfileStatus, spec: tuple[int, int] | None, written: Written, *, hold: bool = False
) -> Literal["held", "written", "unchanged"]:
    """Write `ps` (and `spec`: the generation and resourceVersion it is about) to `ap`'s
    status when it differs from what it holds (as far as `written` knows). With `hold`, a
    change of progress alone (`only_progress`) is not written ("held").

    Why hold: every ArmorProfile write reaches every agent's watch (they watch the spec),
    so during a burst the counts are refreshed at an interval, not per node report; the
    policy's status, which nobody but its readers watches, is always current."""
    meta = ap["metadata"]
    previous = written.previous(ap)
    body = armor_profile_status(ps, previous, now_rfc3339(), spec)
    if hold and only_progress(previous, body):
        return "held"
    version = None
    result: Literal["written", "unchanged"] = "unchanged"
    if any(previous.get(k) != v for k, v in body.items()):
        result = "written"
        path = paths.custom_path(api.ARMOR_PROFILE, meta["namespace"], meta["name"])
        if (version := await _patch_status(kube, path, ap, body, written)) is not None:
            metrics.STATUS_WRITES.labels("armorprofile").inc()
    written.remember(ap, {**previous, **body}, version)
    return result


async def patch_policy_status(kube: Kube, policy: JSON, patch: JSON | None, status: JSON, written: Written) -> None:
    """Write `patch` (None: nothing changed) to the policy's status, which then is `status`."""
    version = None
    if patch is not None:
        meta = policy["metadata"]
        path = paths.policy_path(policy.get("kind", api.VARMOR_POLICY.kind), meta.get("namespace"), meta["name"])
        if (version := await _patch_status(kube, path, policy, patch, written)) is not None:
            metrics.STATUS_WRITES.labels("policy").inc()
    written.remember(policy, status, version)
