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
from varmor.kube.context import RoleContext
from varmor.kube.policycache import PolicyCache
from varmor.kube.tasks import task_group
from varmor.reconcile import metrics
from varmor.reconcile.audit import AuditResult, audit, collect

log = logging.getLogger(__name__)

AuditSink = Callable[[AuditResult], Awaitable[None]]


class OwnerMissingError(RuntimeError):
    """The chart's owner object is gone: varmor is being uninstalled, register nothing."""


async def resolve_owner(api_client: client.ApiClient, cluster_role: str) -> JSON | None:
    if not cluster_role:
        return None
    try:
        role = await raw_request(api_client, "GET", paths.cluster_role_path(cluster_role))
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


class RegistrationForbiddenError(RuntimeError):
    """A configuration is missing and this account may not create it (the chart's case)."""


class Registrar:
    """Keeps both webhook configurations equal to the desired ones.

    The Helm chart creates both configurations empty and lets the leader only get and
    update those two names, so no varmor account can create a webhook configuration.
    Creating one on a 404 is kept for installs without the chart (dev, tests), where the
    account may; the leader never lists configurations.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        reg: Registration,
        cache: PolicyCache,
        owner_role: str,
        fence: Callable[[], None] | None = None,
    ) -> None:
        self.api_client = api_client
        self.fence = fence or (lambda: None)  # the leader's write fence (election.LeaderElector.fence)
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
                    self.fence()
                    await raw_request(self.api_client, "POST", paths.webhook_config_path(kind), body=desired)
                except ApiException as create_exc:
                    if create_exc.status == 409:
                        continue
                    if create_exc.status == 403:
                        raise RegistrationForbiddenError(
                            f"{kind} {name} does not exist and this account may not create it: the Helm "
                            "chart creates it (empty) at install; run `helm upgrade` to restore it"
                        ) from None
                    raise
                metrics.REGISTRATION_UPDATES.labels(kind).inc()
                log.info("created %s %s", kind, name)
                return True
            body = {**desired, "metadata": {**desired["metadata"]}}
            # Owners are set at creation only: changing them later needs `delete` on the
            # object (OwnerReferencesPermissionEnforcement), which the chart does not grant;
            # its configurations are owned by the Helm release instead.
            body["metadata"].pop("ownerReferences", None)
            if current["metadata"].get("ownerReferences"):
                body["metadata"]["ownerReferences"] = current["metadata"]["ownerReferences"]
            if not differs(current, body):
                return False
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            for key in ("labels", "annotations"):  # keep Helm's ownership metadata
                merged = {**(current["metadata"].get(key) or {}), **(desired["metadata"].get(key) or {})}
                if merged:
                    body["metadata"][key] = merged
            try:
                self.fence()
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
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow the cancellation that
            # ends leader work, and this loop would then outlive its leadership.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(resync):
                    await self.wake.wait()
            self.wake.clear()
            await asyncio.sleep(0.1)  # coalesce bursts of policy events
            try:
                await self.apply()
                backoff.reset()
            except OwnerMissingError as exc:
                metrics.REGISTRATION_WITHHELD.inc()
                log.warning("not registering webhooks: %s (uninstalling?)", exc)
            except RegistrationForbiddenError as exc:
                log.error("not registering webhooks: %s", exc)
                await asyncio.sleep(backoff.next())
                self.wake.set()
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


async def audit_once(
    api_client: client.ApiClient, cache: PolicyCache, excluded: tuple[str, ...], sink: AuditSink
) -> AuditResult:
    """One audit pass. The findings go to `sink` (the policy controller), which writes
    them with the rest of each policy's status: a policy status has one writer."""
    policies = cache.policies()
    workloads = await collect(api_client, policies, excluded)
    result = audit(policies, workloads, excluded)
    for kind, count in result.per_kind.items():
        metrics.UNPROTECTED.labels(kind).set(count)
    await sink(result)
    return result


async def _audit_loop(
    api_client: client.ApiClient, cache: PolicyCache, cfg: webhook_settings.WebhookSettings, sink: AuditSink
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
        node_report_accounts=cfg.node_report_accounts,
    )


async def run_leader_tasks(ctx: RoleContext, audit_sink: AuditSink, fence: Callable[[], None] | None = None) -> None:
    """Certificates, webhook registration and the unprotected audit, until cancelled.
    Each audit goes to `audit_sink` (the policy controller's `take_audit`), which folds it
    into the policy status it writes. `fence` guards the registration's writes (the
    certificate Secret's are create-if-absent or resourceVersion-guarded)."""
    cfg = webhook_settings.from_args(ctx.args)
    registrar: Registrar

    def wake() -> None:
        registrar.wake.set()

    cache = PolicyCache(ctx.api_client, wake)
    registrar = Registrar(ctx.api_client, registration_from(cfg), cache, cfg.owner_cluster_role, fence)
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
