"""`updateExistingWorkloads`: roll matching workloads when a policy arrives or goes.

On create (once the profile is loaded on every node, so new pods can start), patch the
pod template of each matching Deployment, StatefulSet or DaemonSet with the planner's
profile fields plus `controller.varmor.org/restartedAt`; the workload controller then
rolls its pods. On delete (the ArmorProfile is held by a finalizer until this is done,
so the profile stays loaded meanwhile), remove the fields the same way.

* Pods are never deleted. Bare Pods (target kind Pod) are listed in the policy's Rollout
  condition: they stay as they are until someone recreates them.
* A namespaced policy only lists its own namespace; a cluster policy skips kube-system
  and varmor's namespace, as the webhook does.
* Writes are rate-limited by one token bucket for the whole leader.
* Idempotent across failover: a workload that already has (or no longer has) the
  profile is not touched again, so a re-run restarts nothing twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from varmor import api
from varmor.admission import planner
from varmor.admission.jsonpatch import apply_patch
from varmor.admission.selection import PolicyIndex
from varmor.admission.selector import LabelSelector
from varmor.clock import now_rfc3339
from varmor.kube import paths
from varmor.kube.client import JSON, ApiException
from varmor.kube.kube import JSON_PATCH, Kube
from varmor.kube.workqueue import WorkQueue
from varmor.reconcile import metrics
from varmor.reconcile.policies import PolicyController
from varmor.reconcile.profiles import ROLLOUT_FINALIZER, PolicyKey, owner_key, policy_key

log = logging.getLogger(__name__)

Action = Literal["create", "delete"]
EXCLUDED_NAMESPACES = ("kube-system",)
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
MAX_NAMES = 10


class TokenBucket:
    """`rate` writes per second on average, bursts of up to `burst`."""

    def __init__(self, rate: float, burst: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self.clock = clock
        self.tokens = float(self.burst)
        self.updated = clock()
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        async with self._lock:
            while True:
                now = self.clock()
                self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


@dataclass(frozen=True)
class Job:
    action: Action
    uid: str  # the policy's uid (create) or the ArmorProfile's (delete)
    policy_key: PolicyKey
    policy_uid: str
    target: Mapping[str, Any]
    profile_name: str
    generation: int = 0
    profile: JSON | None = None  # the ArmorProfile, for delete


@dataclass
class Report:
    rolled: list[str]
    unchanged: int = 0
    other_policy: int = 0
    bare_pods: list[str] | None = None
    failed: list[str] | None = None


def _names(names: list[str]) -> str:
    more = len(names) - MAX_NAMES
    return ", ".join(names[:MAX_NAMES]) + (f" and {more} more" if more > 0 else "")


def rollout_condition(job: Job, report: Report) -> JSON:
    """The policy's Rollout condition for a finished create rollout."""
    kind = job.target.get("kind", "")
    if report.bare_pods is not None:
        pods = report.bare_pods
        if pods:
            reason = "PodsNotRestarted"
            message = (
                f"{len(pods)} matching Pod(s) started before the policy and stay unprotected until recreated "
                f"(varmor never deletes pods): {_names(pods)}"
            )
        else:
            reason, message = "NothingToRoll", "every matching Pod already carries the profile"
    elif report.failed:
        reason = "RolloutFailed"
        message = f"could not patch {len(report.failed)} {kind}(s): {_names(report.failed)}"
    elif report.rolled:
        reason = "RolledOut"
        message = f"rolled {len(report.rolled)} {kind}(s): {_names(report.rolled)}"
    else:
        reason, message = "NothingToRoll", f"no running {kind} needed the profile"
    extras = []
    if report.unchanged:
        extras.append(f"{report.unchanged} already protected")
    if report.other_policy:
        extras.append(f"{report.other_policy} selected by another policy")
    if extras:
        message += f" ({'; '.join(extras)})"
    return {
        "type": "Rollout",
        "status": "False" if report.failed else "True",
        "reason": reason,
        "message": message,
        "observedGeneration": job.generation,
    }


class Rollouts:
    """A queue of rollout jobs and the worker that patches workloads."""

    def __init__(
        self,
        controller: PolicyController,
        *,
        qps: float = 2.0,
        burst: int = 5,
        concurrency: int = 2,
    ) -> None:
        self.controller = controller
        self.kube: Kube = controller.kube
        self.bucket = TokenBucket(qps, burst)
        self.jobs: dict[tuple[Action, str], Job] = {}
        self.done: set[tuple[Action, str]] = set()
        self.queue: WorkQueue[tuple[Action, str]] = WorkQueue(self._process, concurrency=concurrency, name="rollouts")
        controller.on_ready = self.policy_ready
        controller.on_profile_deleting = self.profile_deleting

    # -- scheduling (called from the policy controller) -----------------------------
    def policy_ready(self, policy: JSON, ap: JSON) -> None:
        spec = policy.get("spec") or {}
        if not spec.get("updateExistingWorkloads"):
            return
        conditions = (policy.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Rollout" for c in conditions):
            return  # done already (possibly by a previous leader)
        meta = policy["metadata"]
        key: tuple[Action, str] = ("create", meta["uid"])
        if key in self.done or key in self.jobs:
            return
        self.jobs[key] = Job(
            action="create",
            uid=meta["uid"],
            policy_key=policy_key(policy),
            policy_uid=meta["uid"],
            target=spec.get("target") or {},
            profile_name=ap["metadata"]["name"],
            generation=int(meta.get("generation") or 0),
        )
        self.queue.add(key)

    def profile_deleting(self, ap: JSON) -> None:
        owner = owner_key(ap)
        meta = ap["metadata"]
        key: tuple[Action, str] = ("delete", meta["uid"])
        if key in self.jobs:
            return
        self.jobs[key] = Job(
            action="delete",
            uid=meta["uid"],
            policy_key=owner[0] if owner else (api.VARMOR_POLICY.kind, meta.get("namespace", ""), ""),
            policy_uid=owner[1] if owner else "",
            target=(ap.get("spec") or {}).get("target") or {},
            profile_name=meta["name"],
            profile=ap,
        )
        self.queue.add(key)

    # -- work -----------------------------------------------------------------------
    async def _process(self, key: tuple[Action, str]) -> None:
        job = self.jobs.get(key)
        if job is None:
            return
        report = await self._roll(job)
        if job.action == "create":
            if report.failed:
                raise RuntimeError(f"rollout of {job.profile_name} incomplete: {report.failed}")
            self.controller.set_extra_condition(job.policy_uid, rollout_condition(job, report), job.policy_key)
            self.done.add(key)
        else:
            assert job.profile is not None
            if report.failed:
                raise RuntimeError(f"rollback of {job.profile_name} incomplete: {report.failed}")
            if report.rolled:
                await self.kube.event(
                    job.profile, "Normal", "RolledBack", f"removed the profile from {_names(report.rolled)}"
                )
            await self.remove_finalizer(job.profile)
        self.jobs.pop(key, None)

    async def _roll(self, job: Job) -> Report:
        kind = str(job.target.get("kind", ""))
        policy_ns = job.policy_key[1]
        query: dict[str, str] = {}
        if job.target.get("name"):
            query["fieldSelector"] = f"metadata.name={job.target['name']}"
        elif job.target.get("selector") is not None:
            selector = LabelSelector.parse(job.target["selector"]).query()
            if selector:
                query["labelSelector"] = selector
        listing = await self.kube.request("GET", paths.workload_path(kind, policy_ns or None), query=query)
        report = Report(rolled=[])
        excluded = {*EXCLUDED_NAMESPACES, self.controller.settings.install_namespace}
        objs = []
        for obj in listing.get("items", []):
            obj_ns = obj["metadata"].get("namespace", "")
            if policy_ns and obj_ns != policy_ns:
                continue  # never outside a namespaced policy's own namespace
            if not policy_ns and obj_ns in excluded:
                continue
            obj.setdefault("kind", kind)
            objs.append(obj)
        if kind == "Pod":
            report.bare_pods = [
                f"{o['metadata']['namespace']}/{o['metadata']['name']}" if not policy_ns else o["metadata"]["name"]
                for o in objs
                if self._needs_change(job, o) and (o.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            ]
            return report
        index = PolicyIndex(self.controller.all_policies()) if job.action == "create" else None
        for obj in objs:
            name = obj["metadata"]["name"] if policy_ns else f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
            if index is not None and not self._wins(job, obj, index):
                report.other_policy += 1
                continue
            try:
                changed = await self._patch(job, kind, obj)
            except Exception as exc:
                log.warning("rollout of %s %s failed: %r", kind, name, exc)
                report.failed = [*(report.failed or []), name]
                continue
            if changed:
                report.rolled.append(name)
                metrics.ROLLOUT_WORKLOADS.labels(kind, job.action).inc()
            else:
                report.unchanged += 1
        return report

    def _wins(self, job: Job, obj: JSON, index: PolicyIndex) -> bool:
        """The planner's precedence: roll only workloads this policy actually owns (the
        policies indexed once per rollout, as the webhook does, not parsed per workload)."""
        selection = index.select(job.target["kind"], obj, obj["metadata"]["namespace"])
        return selection.winner is not None and selection.winner.candidate.uid == job.policy_uid

    def _ops(self, job: Job, kind: str, obj: Mapping[str, Any]) -> list[JSON]:
        if job.action == "create":
            containers = job.target.get("containers") or ()
            attach = self.controller.settings.attachment()
            return planner.plan_patch(kind, obj, job.profile_name, containers, attach.field, attach.beta_annotation)
        return planner.remove_patch(kind, obj, job.profile_name)

    def _needs_change(self, job: Job, obj: Mapping[str, Any]) -> bool:
        try:
            return bool(self._ops(job, obj.get("kind", job.target["kind"]), obj))
        except ValueError:
            return False

    async def _patch(self, job: Job, kind: str, obj: JSON) -> bool:
        """Patch one workload's template; False when it already is as wanted. Conflict-safe:
        the patch carries the resourceVersion it was computed from (409 -> re-read)."""

        meta = obj["metadata"]
        path = paths.workload_path(kind, meta["namespace"], meta["name"])
        for _ in range(5):
            ops = self._ops(job, kind, obj)
            if not ops:
                return False
            template = apply_patch(obj, ops)["spec"]["template"]
            tmeta = template.get("metadata") or {}
            annotations = dict(tmeta.get("annotations") or {})
            annotations[api.RESTARTED_AT_ANNOTATION] = now_rfc3339()
            template["metadata"] = {**tmeta, "annotations": annotations}
            patch = [
                {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
                {"op": "replace", "path": "/spec/template", "value": template},
            ]
            await self.bucket.take()
            try:
                await self.kube.request("PATCH", path, body=patch, content_type=JSON_PATCH)
                log.info("rollout %s %s %s/%s", job.action, kind, meta["namespace"], meta["name"])
                return True
            except ApiException as exc:
                if exc.status not in (409, 422):
                    raise
            obj = await self.kube.request("GET", path)
            obj.setdefault("kind", kind)
            meta = obj["metadata"]
        raise RuntimeError(f"{kind} {meta['namespace']}/{meta['name']} kept changing")

    async def remove_finalizer(self, ap: JSON) -> None:
        meta = ap["metadata"]
        path = paths.custom_path(api.ARMOR_PROFILE, meta["namespace"], meta["name"])
        for _ in range(5):
            finalizers = meta.get("finalizers") or []
            if ROLLOUT_FINALIZER not in finalizers:
                return
            patch = [
                {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
                {
                    "op": "replace",
                    "path": "/metadata/finalizers",
                    "value": [f for f in finalizers if f != ROLLOUT_FINALIZER],
                },
            ]
            try:
                await self.kube.request("PATCH", path, body=patch, content_type=JSON_PATCH)
                return
            except ApiException as exc:
                if exc.status == 404:
                    return
                if exc.status not in (409, 422):
                    raise
            try:
                meta = (await self.kube.request("GET", path))["metadata"]
            except ApiException as exc:
                if exc.status == 404:
                    return
                raise
        raise RuntimeError(f"could not remove the finalizer of ArmorProfile {meta['namespace']}/{meta['name']}")

    async def run(self) -> None:
        await self.queue.run()
