"""Leader-only webhook tasks: certificates, registration, and the unprotected audit.

`run_leader_tasks(ctx)` runs while this replica holds the Lease; the election loop
cancels it on loss, and the next leader needs no handover (everything is re-read from
the API server).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes.aio import client

from varmor import api
from varmor import settings as webhook_settings
from varmor.admission.registration import (
    Registration,
    differs,
    mutating_configuration,
    scopes,
    validating_configuration,
)
from varmor.certs import bundle as certbundle
from varmor.certs import metrics as certmetrics
from varmor.certs.store import SecretStore, watch_secret
from varmor.kube import paths
from varmor.kube.backoff import Backoff
from varmor.kube.client import JSON, ApiException, raw_request
from varmor.kube.kube import MERGE_PATCH
from varmor.kube.policycache import PolicyCache
from varmor.kube.tasks import task_group
from varmor.reconcile import metrics
from varmor.reconcile.audit import AuditResult, PolicyKey, audit, collect

log = logging.getLogger(__name__)

AuditSink = Callable[[AuditResult, list[JSON]], Awaitable[None]]


class OwnerMissingError(RuntimeError):
    """The chart's owner object is gone: varmor is being uninstalled, register nothing."""


async def resolve_owner(api_client: client.ApiClient, cluster_role: str) -> JSON | None:
    if not cluster_role:
        return None
    try:
        role = await raw_request(api_client, "GET", f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{cluster_role}")
    except ApiException as exc:
        if exc.status == 404:
            raise OwnerMissingError(f"ClusterRole {cluster_role} not found") from None
        raise
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "name": cluster_role,
        "uid": role["metadata"]["uid"],
    }


class Registrar:
    """Keeps both webhook configurations equal to the desired ones."""

    def __init__(self, api_client: client.ApiClient, reg: Registration, cache: PolicyCache, owner_role: str) -> None:
        self.api_client = api_client
        self.reg = reg
        self.cache = cache
        self.owner_role = owner_role
        self.ca_bundle = b""
        self.wake = asyncio.Event()
        self.applied = asyncio.Event()  # set after the first successful apply
        self._lock = asyncio.Lock()  # policy changes and certificate steps both apply

    def desired(self, owner: JSON | None) -> list[dict[str, Any]]:
        policies = self.cache.policies()
        return [
            mutating_configuration(self.reg, policies, self.ca_bundle, owner),
            validating_configuration(self.reg, self.ca_bundle, owner),
        ]

    async def _apply_one(self, desired: dict[str, Any]) -> bool:
        kind, name = desired["kind"], desired["metadata"]["name"]
        for _ in range(5):
            try:
                current = await raw_request(self.api_client, "GET", paths.webhook_config_path(kind, name))
            except ApiException as exc:
                if exc.status != 404:
                    raise
                try:
                    await raw_request(self.api_client, "POST", paths.webhook_config_path(kind), body=desired)
                except ApiException as create_exc:
                    if create_exc.status == 409:
                        continue
                    raise
                metrics.REGISTRATION_UPDATES.labels(kind).inc()
                log.info("created %s %s", kind, name)
                return True
            if not differs(current, desired):
                return False
            body = {**desired, "metadata": {**desired["metadata"]}}
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            try:
                await raw_request(self.api_client, "PUT", paths.webhook_config_path(kind, name), body=body)
            except ApiException as exc:
                if exc.status == 409:
                    continue
                raise
            metrics.REGISTRATION_UPDATES.labels(kind).inc()
            log.info("updated %s %s (%d webhooks)", kind, name, len(desired["webhooks"]))
            return True
        raise RuntimeError(f"{kind} {name}: too many write conflicts")

    async def apply(self) -> bool:
        """Write what differs; True if anything was written. Needs a caBundle first."""
        if not self.ca_bundle:
            return False
        async with self._lock:
            owner = await resolve_owner(self.api_client, self.owner_role)
            changed = False
            for desired in self.desired(owner):
                changed |= await self._apply_one(desired)
        registered = scopes(self.cache.policies())
        for kind in api.TARGET_KINDS:
            metrics.REGISTERED_KINDS.labels(kind).set(1 if kind in registered else 0)
        self.applied.set()
        return changed

    async def set_ca_bundle(self, ca_bundle: bytes) -> bool:
        """Publish a new caBundle now; True if the configurations changed."""
        if ca_bundle == self.ca_bundle and self.applied.is_set():
            return False
        self.ca_bundle = ca_bundle
        return await self.apply()

    async def run(self, resync: float = 60.0) -> None:
        backoff = Backoff()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), resync)
            self.wake.clear()
            await asyncio.sleep(0.1)  # coalesce bursts of policy events
            try:
                await self.apply()
                backoff.reset()
            except OwnerMissingError as exc:
                log.warning("not registering webhooks: %s (uninstalling?)", exc)
            except Exception as exc:
                log.warning("webhook registration failed: %s; retrying", getattr(exc, "status", exc))
                await asyncio.sleep(backoff.next())
                self.wake.set()


class SelfManagedCerts:
    """Creates the bundle once (create-if-absent) and walks it through rotation."""

    def __init__(
        self, api_client: client.ApiClient, cfg: webhook_settings.WebhookSettings, registrar: Registrar
    ) -> None:
        self.store = SecretStore(api_client, cfg.namespace, cfg.cert_secret)
        self.cfg = cfg
        self.registrar = registrar
        self.settled_at: dt.datetime | None = None

    async def _publish(self, bundle: certbundle.Bundle) -> None:
        if await self.registrar.set_ca_bundle(bundle.ca_bundle):
            self.settled_at = dt.datetime.now(dt.UTC)

    async def step(self, owner: JSON | None) -> float:
        """One pass; returns seconds until the next one is needed."""
        now = dt.datetime.now(dt.UTC)
        secret = await self.store.read()
        if secret is None:
            secret = await self.store.create_if_absent(certbundle.new_bundle(self.cfg.cert, now), owner)
            certmetrics.CERT_ROTATIONS.labels("created").inc()
        try:
            current = certbundle.from_secret(secret)
        except certbundle.BundleError as exc:
            log.error("certificate Secret unusable (%s); replacing it with a new CA", exc)
            secret = await self.store.update(secret, certbundle.new_bundle(self.cfg.cert, now))
            certmetrics.CERT_ROTATIONS.labels("replaced").inc()
            current = certbundle.from_secret(secret)
        assert current.signer is not None
        certmetrics.CERT_EXPIRY.labels("ca").set(current.signer.not_after.timestamp())
        await self._publish(current)
        step = certbundle.next_step(current, self.cfg.cert, now, self.settled_at)
        if step.bundle is not None:
            try:
                await self.store.update(secret, step.bundle)
            except ApiException as exc:
                if exc.status != 409:
                    raise
                return 0.0  # someone else wrote: re-read
            certmetrics.CERT_ROTATIONS.labels(step.bundle.phase).inc()
            log.info("certificates: %s", step.reason)
            await self._publish(step.bundle)
            return 0.0
        return max(0.0, (step.next_check - dt.datetime.now(dt.UTC)).total_seconds())

    async def run(self) -> None:
        backoff = Backoff()
        while True:
            try:
                owner = await resolve_owner(self.store.api_client, self.cfg.owner_cluster_role)
                delay = await self.step(owner)
                backoff.reset()
            except OwnerMissingError as exc:
                log.warning("not managing certificates: %s", exc)
                delay = 5.0
            except Exception as exc:
                log.warning("certificate step failed: %s; retrying", getattr(exc, "status", type(exc).__name__))
                delay = backoff.next()
            await asyncio.sleep(min(delay, 300.0))


async def external_certs(api_client: client.ApiClient, cfg: webhook_settings.WebhookSettings, reg: Registrar) -> None:
    """cert-manager (or anyone) owns the Secret; publish its ca.crt as the caBundle."""

    async def on_secret(secret: JSON) -> None:
        try:
            current = certbundle.from_secret(secret, require_signer=False)
        except certbundle.BundleError as exc:
            log.error("external certificate Secret %s unusable: %s", cfg.cert_secret, exc)
            return
        await reg.set_ca_bundle(current.ca_bundle)

    await watch_secret(api_client, cfg.namespace, cfg.cert_secret, on_secret)


def _audit_condition(
    ctype: str, when_true: tuple[str, str] | None, when_false: tuple[str, str], previous: JSON | None, now: str
) -> JSON | None:
    """A condition the audit owns: True with `when_true` (reason, message), else False with
    `when_false` once it has ever been True (None: leave it absent)."""
    if when_true is None and previous is None:
        return None
    status, (reason, message) = ("True", when_true) if when_true is not None else ("False", when_false)
    same = previous is not None and previous.get("status") == status
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message[:1024],
        "lastTransitionTime": previous.get("lastTransitionTime", now) if same and previous else now,
    }


def unprotected_condition(count: int, examples: tuple[str, ...], previous: JSON | None, now: str) -> JSON | None:
    """The `Unprotected` condition for `count` (None: leave it absent)."""
    when_true = None
    if count:
        when_true = (
            "AdmittedWithoutProfile",
            f"{count} selected workload(s) run without the profile ({', '.join(examples)}): the webhook was "
            "unavailable when they were admitted, or they predate the policy; recreate them or set "
            "updateExistingWorkloads",
        )
    return _audit_condition(
        "Unprotected", when_true, ("AllProtected", "every selected workload carries the profile"), previous, now
    )


def conflict_condition(count: int, examples: tuple[str, ...], previous: JSON | None, now: str) -> JSON | None:
    """The `Conflict` condition on a policy that loses workloads to one taking precedence."""
    when_true = None
    if count:
        when_true = (
            "LostToPolicy",
            f"{count} workload(s) this policy selects get another policy's profile, which takes precedence "
            f"({', '.join(examples)}; see the Conflict events for which one): make the targets disjoint",
        )
    return _audit_condition(
        "Conflict", when_true, ("NoConflict", "no other policy takes precedence over this one"), previous, now
    )


def audit_patch(policy: JSON, result: AuditResult, key: PolicyKey, now: str) -> JSON | None:
    """A merge patch (guarded by resourceVersion) setting unprotectedWorkloads and the
    audit's conditions (Unprotected, Conflict), or None if all are current. Other
    conditions are carried over as read; the resourceVersion precondition makes a
    concurrent leader write win."""
    status = policy.get("status") or {}
    conditions = [c for c in status.get("conditions") or [] if isinstance(c, dict)]
    previous = {c.get("type"): c for c in conditions}
    count = result.per_policy.get(key, 0)
    wanted = {
        "Unprotected": unprotected_condition(count, result.examples.get(key, ()), previous.get("Unprotected"), now),
        "Conflict": conflict_condition(
            result.lost.get(key, 0), result.lost_examples.get(key, ()), previous.get("Conflict"), now
        ),
    }

    def unchanged(ctype: str) -> bool:
        want, have = wanted[ctype], previous.get(ctype)
        if want is None or have is None:
            return want is None and have is None
        return all(have.get(k) == want[k] for k in ("status", "reason", "message"))

    conditions_current = all(unchanged(t) for t in wanted)
    if status.get("unprotectedWorkloads", 0) == count and conditions_current:
        return None
    patch_status: JSON = {"unprotectedWorkloads": count}
    if not conditions_current:
        others = [c for c in conditions if c.get("type") not in wanted]
        patch_status["conditions"] = others + [c for c in wanted.values() if c is not None]
    return {"metadata": {"resourceVersion": policy["metadata"]["resourceVersion"]}, "status": patch_status}


async def write_audit_status(api_client: client.ApiClient, result: AuditResult, policies: list[JSON]) -> None:
    """Record each policy's gap (`unprotectedWorkloads`, `Unprotected`) and lost workloads
    (`Conflict`) in its status."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for policy in policies:
        meta = policy.get("metadata") or {}
        cluster = policy.get("kind") == api.VARMOR_CLUSTER_POLICY.kind
        key: PolicyKey = ("" if cluster else str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        patch = audit_patch(policy, result, key, now)
        if patch is None:
            continue
        resource = api.VARMOR_CLUSTER_POLICY if cluster else api.VARMOR_POLICY
        path = f"/apis/{api.GROUP}/{api.VERSION}"
        if not cluster:
            path += f"/namespaces/{key[0]}"
        path += f"/{resource.plural}/{key[1]}/status"
        try:
            await raw_request(api_client, "PATCH", path, body=patch, content_type=MERGE_PATCH)
        except ApiException as exc:
            if exc.status not in (404, 409):  # gone, or the leader wrote first: next audit
                raise


async def audit_once(
    api_client: client.ApiClient, cache: PolicyCache, excluded: tuple[str, ...], sink: AuditSink | None
) -> AuditResult:
    policies = cache.policies()
    workloads = await collect(api_client, policies, excluded)
    result = audit(policies, workloads, excluded)
    for kind, count in result.per_kind.items():
        metrics.UNPROTECTED.labels(kind).set(count)
    if sink is not None:
        await sink(result, policies)
    else:
        await write_audit_status(api_client, result, policies)
    return result


async def _audit_loop(
    api_client: client.ApiClient, cache: PolicyCache, cfg: webhook_settings.WebhookSettings, sink: AuditSink | None
) -> None:
    await cache.synced_event.wait()
    while True:
        try:
            await audit_once(api_client, cache, cfg.excluded_namespaces, sink)
        except Exception as exc:
            log.warning("unprotected-workload audit failed: %s", getattr(exc, "status", type(exc).__name__))
        await asyncio.sleep(cfg.audit_interval)


def registration_from(cfg: webhook_settings.WebhookSettings) -> Registration:
    return Registration(
        name=cfg.config_name,
        namespace=cfg.namespace,
        service=cfg.service,
        service_port=cfg.service_port,
        url=cfg.url,
        failure_policy=cfg.failure_policy,
        timeout_seconds=cfg.timeout_seconds,
        excluded_namespaces=cfg.excluded_namespaces,
    )


async def run_leader_tasks(ctx: Any, *, audit_sink: AuditSink | None = None) -> None:
    """Certificates, webhook registration and the unprotected audit, until cancelled.

    `ctx` is varmor.app.RoleContext. `audit_sink(result, policies)`, if given, receives
    each audit instead of the default (a merge patch of status.unprotectedWorkloads), so
    the reconciler can fold it into the policy status it writes.
    """
    cfg = webhook_settings.from_args(ctx.args)
    registrar: Registrar

    def wake() -> None:
        registrar.wake.set()

    cache = PolicyCache(ctx.api_client, wake)
    registrar = Registrar(ctx.api_client, registration_from(cfg), cache, cfg.owner_cluster_role)
    async with task_group() as group:
        group.create_task(cache.run(), name="leader-webhook-policies")
        await cache.synced_event.wait()  # never register from a partial view of the policies
        group.create_task(registrar.run(), name="leader-webhook-registration")
        if cfg.cert_mode == "self":
            group.create_task(SelfManagedCerts(ctx.api_client, cfg, registrar).run(), name="leader-certs")
        else:
            group.create_task(external_certs(ctx.api_client, cfg, registrar), name="leader-certs")
        if cfg.audit_interval > 0:
            group.create_task(_audit_loop(ctx.api_client, cache, cfg, audit_sink), name="leader-audit")
