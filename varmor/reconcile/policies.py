"""Policy -> ArmorProfile reconciler, and the policy/ArmorProfile status writer.

One work queue keyed by policy: every event that can change what a policy should look
like (the policy, its ArmorProfile, an ArmorNode report naming its profile) enqueues its
key, and `reconcile` recomputes everything from the informer caches. Per-key serialisation
means one status writer per policy; recomputing from scratch means no leader handover.

Guarantees:
* idempotent: an unchanged policy costs no writes;
* conflict-safe: ArmorProfile updates carry the resourceVersion they were computed from,
  and profile-name collisions are checked against a live list under a per-name lock;
* every profile is compiled under the budget, off the workers, before its ArmorProfile is
  written (varmor.reconcile.compiles); an invalid or over-budget policy gets status Error
  (Invalid / CompileBudgetExceeded), a condition, an Event, and no ArmorProfile (or, for
  an invalid update, the previous profile stays);
* ArmorProfiles are owned by their policy: garbage-collected even while varmor is down.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.aio import client

from varmor import api
from varmor.api import DEFAULT_LOST_AFTER
from varmor.clock import Clock, now_rfc3339, utc_now
from varmor.events import Severity
from varmor.kube.client import JSON
from varmor.kube.errors import TemporaryError
from varmor.kube.informer import EventType, Informer
from varmor.kube.kube import Kube
from varmor.kube.tasks import task_group
from varmor.kube.workqueue import WorkQueue
from varmor.kubeversion import FIELD_ONLY, Attachment
from varmor.parser import DEFAULT_BUDGET, CompileBudget
from varmor.pipeline import ADMISSION_VIEW, CompileError, compile_policy
from varmor.reconcile import metrics, modeling
from varmor.reconcile.armorprofiles import ArmorProfileWriter
from varmor.reconcile.audit import AuditResult, findings_of
from varmor.reconcile.behaviors import ModelController
from varmor.reconcile.compiles import CompileGate, CompilePending
from varmor.reconcile.livewatch import LivenessWatch
from varmor.reconcile.loadindex import ALL, LoadIndex, NodeView
from varmor.reconcile.nodecounts import ProfileStatus, lost_message, node_state
from varmor.reconcile.profiles import (
    ROLLOUT_FINALIZER,
    PolicyKey,
    desired_armor_profile,
    owner_key,
    policy_key,
    profile_identity,
    transition_events,
)
from varmor.reconcile.status import LEADER_FIELDS, Liveness, Outcome, policy_status, status_patch
from varmor.reconcile.statuswrites import Written, patch_policy_status, write_profile_status

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    install_namespace: str
    workers: int = 4
    resync_seconds: float = 300.0
    status_delay: float = 0.5  # coalesce bursts of node reports into one status write
    profile_progress_interval: float = 5.0  # an ArmorProfile's count alone is rewritten at most this often
    attachment: Callable[[], Attachment] = lambda: FIELD_ONLY  # asked per rollout: the release can change
    lost_after: float = DEFAULT_LOST_AFTER  # no ArmorNode heartbeat seen for this long: agent lost
    liveness_margin: float = 1.0  # recheck this long after the first expiry (server times have 1 s precision)
    budget: CompileBudget = DEFAULT_BUDGET  # per apparmor_parser run of the leader's compile check


class PolicyController:
    """Informers for the four kinds, one queue of policy keys, and the status math."""

    def __init__(
        self,
        api_client: client.ApiClient,
        settings: Settings,
        *,
        kube: Kube | None = None,
        on_ready: Callable[[JSON, JSON], None] | None = None,
        clock: Clock = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._install_ns = settings.install_namespace
        self.clock = clock
        self.monotonic = monotonic
        self._progress_written: dict[str, float] = {}  # ArmorProfile uid -> when its counts were last written
        self.kube = kube or Kube(api_client, component="reconcile", role="leader")
        self.writer = ArmorProfileWriter(self.kube, self._policy_alive)
        self.compiles = CompileGate(settings.budget)
        rs = settings.resync_seconds
        self.policies = Informer(api_client, api.VARMOR_POLICY, resync_seconds=rs)
        self.cluster_policies = Informer(api_client, api.VARMOR_CLUSTER_POLICY, resync_seconds=rs)
        self.profiles = Informer(api_client, api.ARMOR_PROFILE, resync_seconds=rs)
        self.nodes = Informer(api_client, api.ARMOR_NODE, resync_seconds=rs)
        self.queue: WorkQueue[PolicyKey] = WorkQueue(
            self._reconcile_counted, concurrency=settings.workers, name="policies"
        )
        self.loads = LoadIndex()  # the nodes' load reports, indexed: aggregation costs O(changes)
        self._recount_timer: asyncio.TimerHandle | None = None
        self._extra_conditions: dict[str, JSON] = {}  # policy uid -> condition (Rollout)
        self._audit: AuditResult | None = None  # the latest unprotected-workload audit
        # What this leader last wrote, and at which versions: the cache lags our own writes.
        self._status = Written()
        self._ap_status = Written()
        self.on_ready = on_ready  # (policy, armor profile) when a policy is Ready: rollouts
        self.on_profile_deleting: Callable[[JSON], None] | None = None
        # Heartbeats seen on our clock; every policy is reconciled again when the set of
        # lost agents changes (time passing changes no object).
        self.watch = LivenessWatch(
            self.nodes.list,
            clock,
            lost_after=settings.lost_after,
            margin=settings.liveness_margin,
            resync=rs,
            on_change=self._requeue_all,
        )
        self.models = ModelController(
            api_client,
            self.kube,
            profile_of=lambda ns, name: profile_identity(self.profiles.get(ns, name)),
            on_model=self._on_model,
            resync_seconds=rs,
            clock=clock,
        )
        self.policies.add_handler(self._on_policy)
        self.cluster_policies.add_handler(self._on_policy)
        self.profiles.add_handler(self._on_profile)
        self.nodes.add_handler(self._on_node)

    # -- caches ---------------------------------------------------------------------
    def get_policy(self, key: PolicyKey) -> JSON | None:
        kind, ns, name = key
        informer = self.cluster_policies if kind == api.VARMOR_CLUSTER_POLICY.kind else self.policies
        obj = informer.get(ns, name)
        if obj is not None:
            obj.setdefault("kind", kind)
            obj.setdefault("apiVersion", api.API_VERSION)
        return obj

    def all_policies(self) -> list[JSON]:
        out = []
        for informer, kind in ((self.cluster_policies, "VarmorClusterPolicy"), (self.policies, "VarmorPolicy")):
            for obj in informer.list():
                obj.setdefault("kind", kind)
                obj.setdefault("apiVersion", api.API_VERSION)
                out.append(obj)
        return out

    @property
    def synced(self) -> bool:
        return all(i.synced for i in (self.policies, self.cluster_policies, self.profiles, self.nodes))

    async def take_audit(self, result: AuditResult) -> None:
        """An audit pass's findings: reconcile the policies whose findings changed, which
        writes them with the rest of the status (one writer per policy status)."""
        before = self._audit
        self._audit = result
        for policy in self.all_policies():
            key = policy_key(policy)
            if before is None or findings_of(before, key) != findings_of(result, key):
                self.queue.add(key)

    def set_extra_condition(self, policy_uid: str, condition: JSON, key: PolicyKey) -> None:
        """A condition owned by another leader task (Rollout), written with the next status."""
        self._extra_conditions[policy_uid] = condition
        self.queue.add(key)

    # -- event handlers -------------------------------------------------------------
    async def _on_policy(self, event: EventType, obj: JSON) -> None:
        if event == "DELETED":
            self._status.forget(obj["metadata"].get("uid", ""))
            self._extra_conditions.pop(obj["metadata"].get("uid", ""), None)
        self.queue.add(policy_key(obj))

    async def _on_profile(self, event: EventType, ap: JSON) -> None:
        owner = owner_key(ap)
        if owner is not None:
            self.queue.add(owner[0])
        meta = ap.get("metadata", {})
        if event != "RESYNC":
            key = (str(meta.get("namespace") or ""), str(meta.get("name")))
            self.loads.profile(key, ap, deleted=event == "DELETED")
            self._schedule_recount()
        if event == "ADDED":
            self.models.profile_changed(str(meta.get("namespace")), str(meta.get("name")))
        finalizing = meta.get("deletionTimestamp") and ROLLOUT_FINALIZER in (meta.get("finalizers") or [])
        if finalizing and self.on_profile_deleting is not None:
            self.on_profile_deleting(ap)
        if event == "DELETED":
            self._ap_status.forget(meta.get("uid", ""))
            self._progress_written.pop(meta.get("uid", ""), None)
            # A name may have been freed: retry policies that collided on it.
            name = meta.get("name")
            for policy in self.all_policies():
                if (policy.get("status") or {}).get("phase") == "Error" and self._derived_name(policy) == name:
                    self.queue.add(policy_key(policy))

    def _on_model(self, namespace: str, name: str) -> None:
        """A model changed: its policy's status (and, once accepted, profile) may too."""
        if (owner := owner_key(self.profiles.get(namespace, name) or {})) is not None:
            self.queue.add(owner[0])

    async def _on_node(self, event: EventType, node: JSON) -> None:
        if event == "RESYNC":
            return  # policy resyncs already cover periodic recomputation
        self.watch.node_event(event, node)  # a lost agent is back, or a node arrived with an old heartbeat
        status = None if event == "DELETED" else (node.get("status") or {})
        self.loads.node(node["metadata"]["name"], status)
        self._schedule_recount()

    def _schedule_recount(self) -> None:
        """Coalesce: the node reports of `status_delay` seconds cost one pass over the
        profiles they can change (a burst of reports from every node: one pass)."""
        if self._recount_timer is None and self.loads.changes:
            self._recount_timer = asyncio.get_running_loop().call_later(self.settings.status_delay, self._recount)

    def _recount(self) -> None:
        """Reconcile the policies of the ArmorProfiles whose counts may have changed."""
        self._recount_timer = None
        affected = self.loads.take_changed()
        keys = (
            affected
            if affected is not ALL
            else ((ap["metadata"]["namespace"], ap["metadata"]["name"]) for ap in self.profiles.list())
        )
        for namespace, name in keys:
            if (owner := owner_key(self.profiles.get(namespace, name) or {})) is not None:
                self.queue.add(owner[0])

    def _derived_name(self, policy: Mapping[str, Any]) -> str | None:
        kind, ns, name = policy_key(policy)
        try:
            return api.profile_name(None if kind == api.VARMOR_CLUSTER_POLICY.kind else ns, name, self._install_ns)
        except api.ProfileNameError:
            return None

    # -- reconcile ------------------------------------------------------------------
    async def _reconcile_counted(self, key: PolicyKey) -> None:
        start = time.perf_counter()
        try:
            await self.reconcile(key)
        except TemporaryError:
            raise  # an expected wait, not an error
        except Exception:
            metrics.RECONCILE_ERRORS.labels(key[0]).inc()
            raise
        finally:
            metrics.RECONCILE_DURATION.labels(key[0]).observe(time.perf_counter() - start)

    async def reconcile(self, key: PolicyKey) -> None:
        policy = self.get_policy(key)
        if policy is None or policy["metadata"].get("deletionTimestamp"):
            await self._delete_orphans(key)
            return
        ns = key[1]
        meta = policy["metadata"]
        uid = meta["uid"]
        generation = int(meta.get("generation") or 0)
        ap_ns = ns or self._install_ns
        previous = self._status.previous(policy)
        error: tuple[str, str] | None = None
        built: Any = None
        profile_name: str | None = None
        # Our ArmorProfile, if any (at the accepted or derivable name, owned by this uid), its model.
        lookup = previous.get("profileName") or self._derived_name(policy)
        ap = self.profiles.get(ap_ns, lookup) if lookup else None
        ap = ap if ap is not None and (owner_key(ap) or (None, ""))[1] == uid else None
        plan = modeling.plan(policy, previous, ap, self.models.model(ap_ns, lookup) if lookup else None, self.clock())
        try:
            compiled = compile_policy(policy, self._install_ns, inputs=plan.inputs or ADMISSION_VIEW)
            profile_name, built = compiled.profile_name, compiled.profile
        except CompileError as exc:
            if exc.reason == "BuildFailed":
                log.error("building the profile for %s failed: %s", key, exc.message)
            error = (exc.reason, exc.message)
        if plan.hold:  # no model it may enforce: the profile (if any) stays as it is
            built = None
            why = plan.condition or {}
            error = None if ap is not None else (str(why.get("reason")), str(why.get("message")))
        if plan.recheck_after is not None:  # the modelling window ends then: look again
            self.queue.add_after(key, plan.recheck_after + self.settings.liveness_margin)
        if ap is not None and ap["metadata"].get("deletionTimestamp"):
            raise TemporaryError("its ArmorProfile is being deleted; recreating it once it is gone")
        try:  # a pending compile queues the key again when it ends; other policies proceed meanwhile
            error = error or self.compiles.check(built, ap, lambda: self.queue.add(key))
        except CompilePending:
            return
        events: list[tuple[Severity, str, str]] = []
        if error is None and built is not None and profile_name is not None:
            desired = desired_armor_profile(
                policy,
                profile_name,
                ap_ns,
                built.text,
                built.mode,
                built.sha256,
                modeling=plan.active,
                model_sha256=plan.model_sha256,
            )
            spec_written = False
            if ap is None:
                async with self.writer.lock(profile_name):
                    conflict = await self.writer.name_conflict(profile_name, uid)
                    if conflict:
                        error = ("ProfileNameConflict", conflict)
                    else:
                        ap = await self.writer.create(desired)
                        events.append(("Normal", "ProfileCreated", f"ArmorProfile {ap_ns}/{profile_name} created"))
            else:
                ap, spec_written = await self.writer.apply(ap, desired)
                self._ap_status.moved(ap)
            if ap is not None:  # our write tells the spec's resourceVersion before the watch does
                self.loads.profile((ap_ns, ap["metadata"]["name"]), ap, watched=False)
                if spec_written:
                    events.append(("Normal", "ProfileUpdated", f"ArmorProfile updated for generation {generation}"))
            if ap is not None and built.warnings and previous.get("observedGeneration") != generation:
                events.append(("Warning", "RuleNotEnforced", "; ".join(built.warnings)))
        ps = await self._write_profile_status(key, ap) if ap is not None else None
        extra = self._extra_conditions.get(uid)
        outcome = Outcome(
            generation=generation,
            profile_name=ap["metadata"]["name"] if ap is not None else None,
            error_reason=error[0] if error else None,
            error_message=error[1] if error else "",
            profile_created=ap is not None,
            profile=ps,
            extra_conditions=tuple(c for c in (extra, plan.condition) if c),
            modeling=plan.modeling,
            model=plan.model,
            modeling_active=plan.active if plan.modeling is not None else None,
            findings=findings_of(self._audit, key) if self._audit is not None else None,
        )
        new_status = policy_status(outcome, previous, now_rfc3339(), current=policy.get("status") or {})
        events += transition_events(previous, new_status)
        status = {k: v for k, v in previous.items() if k not in LEADER_FIELDS} | new_status  # as the patch leaves it
        await patch_policy_status(self.kube, policy, status_patch(new_status, previous), status, self._status)
        if extra is not None:
            self._extra_conditions.pop(uid, None)
        for etype, reason, message in events:
            await self.kube.event(policy, etype, reason, message)
        if ap is not None and ps is not None and ps.ready and self.on_ready is not None:
            self.on_ready({**policy, "status": status}, ap)

    def _policy_alive(self, key: PolicyKey, uid: str) -> bool:
        policy = self.get_policy(key)
        return policy is not None and policy["metadata"].get("uid") == uid

    async def _delete_orphans(self, key: PolicyKey | None) -> None:
        """Delete ArmorProfiles whose controlling policy `key` (None: any, once after start,
        for policies that vanished while no leader ran) no longer exists or was recreated
        with a new uid. The garbage collector would too; this is faster."""
        for ap in self.profiles.list() if self.synced else []:
            owner = owner_key(ap)
            if owner is None or key not in (None, owner[0]) or ap["metadata"].get("deletionTimestamp"):
                continue
            if not self._policy_alive(owner[0], owner[1]):
                await self.writer.delete(ap)

    # -- writes ---------------------------------------------------------------------
    def liveness(self) -> Liveness:
        return self.watch.liveness()

    async def _write_profile_status(self, policy: PolicyKey, ap: JSON) -> ProfileStatus:
        key = (ap["metadata"]["namespace"], ap["metadata"]["name"])
        lost_after = self.settings.lost_after

        def lost(node: NodeView) -> str:
            return lost_message(node.status, lost_after)

        ps = self.loads.status(key, self.watch.lost, lost)
        spec = self.loads.specs.get(key)
        version = (spec.generation, spec.spec_rv) if spec is not None else None
        uid, now = str(ap["metadata"].get("uid")), self.monotonic()
        wait = self._progress_written.get(uid, -math.inf) + self.settings.profile_progress_interval - now
        result = await write_profile_status(self.kube, ap, ps, version, self._ap_status, hold=wait > 0)
        if result == "held":
            self.queue.add_after(policy, wait)
        elif result == "written":
            self._progress_written[uid] = now
        return ps

    # -- lifecycle ------------------------------------------------------------------
    async def run(self) -> None:
        informers = [self.policies, self.cluster_policies, self.profiles, self.nodes]
        await self.watch.start(self.kube.api_client)  # before the first ArmorNode is seen
        async with task_group() as group:
            for informer in informers:
                group.create_task(informer.run(), name=f"informer-{informer.resource.plural}")
            for informer in informers:
                await informer.wait_synced()
            await self._delete_orphans(None)
            self.watch.check()  # the lost agents, before the first status is computed
            group.create_task(self.models.run(), name="models")
            group.create_task(self.compiles.run(), name="policy-compiles")
            group.create_task(self.queue.run(), name="policy-queue")
            group.create_task(metrics.track_counts(self.all_policies, self._node_states), name="policy-gauges")
            group.create_task(self.watch.run(), name="policy-liveness")

    def _node_states(self) -> list[str]:
        liveness = self.liveness()
        return [node_state(n, liveness) for n in self.nodes.list()]

    def check_liveness(self) -> float | None:
        """Look at the heartbeats now; seconds until the next alive node would turn lost."""
        return self.watch.check()

    def _requeue_all(self) -> None:
        for policy in self.all_policies():
            self.queue.add(policy_key(policy))
