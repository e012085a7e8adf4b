"""`varmor run --roles=webhook`: the TLS admission server in every replica.

Serves from the certificate Secret and reloads it on change (no restart); answers from
an informer cache of policies. Readiness waits for both. With `--webhook-client-ca`, a
TLS client certificate signed by that CA is required (the API server's webhook client
credentials), so no other in-cluster caller reaches /validate's compiles.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import ssl
from typing import Any

from aiohttp import web

from varmor import settings as webhook_settings
from varmor.admission.selection import PolicyIndex
from varmor.certs import bundle as certbundle
from varmor.certs.store import watch_secret
from varmor.certs.tls import ReloadableTLS
from varmor.kube.client import JSON
from varmor.kube.policycache import PolicyCache
from varmor.kube.tasks import task_group
from varmor.kubeversion import KubeVersion, attachment
from varmor.webhook.conflicts import ConflictReporter
from varmor.webhook.mutate import MutationState
from varmor.webhook.podnodes import PodNodes
from varmor.webhook.server import build_app
from varmor.webhook.validate import PolicyValidator

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    webhook_settings.add_arguments(parser)


async def run(ctx: Any) -> None:
    """Run the webhook role until cancelled. `ctx` is varmor.app.RoleContext."""
    cfg = webhook_settings.from_args(ctx.args)
    state = MutationState(excluded_namespaces=frozenset(cfg.excluded_namespaces))

    def follow_release(version: KubeVersion) -> None:
        attach = attachment(cfg.apparmor_api, version, ctx.server.seen_without_field)
        state.use_field, state.beta_annotation = attach.field, attach.beta_annotation
        log.info("admission writes %s (Kubernetes %s)", attach, version)

    ctx.server.follow(follow_release)
    reporter = ConflictReporter(ctx.api_client, interval=cfg.conflict_event_interval)
    state.on_conflict = reporter.report

    def rebuild() -> None:
        state.index = PolicyIndex(cache.policies(), previous=state.index)  # reuses what did not change
        state.synced = cache.synced

    cache = PolicyCache(ctx.api_client, rebuild)
    tls = ReloadableTLS()
    if cfg.client_ca:  # only the API server (a certificate this CA signed) may call us
        tls.context.load_verify_locations(cafile=cfg.client_ca)
        tls.context.verify_mode = ssl.CERT_REQUIRED
    tls_loaded = asyncio.Event()

    async def on_secret(secret: JSON) -> None:
        try:
            pair = certbundle.serving_from_secret(secret)
            if tls.load(pair):
                log.info("serving certificate loaded (expires %s)", pair.not_after.isoformat())
            tls_loaded.set()
        except Exception as exc:  # keep serving the previous pair
            log.error("certificate Secret %s is unusable: %s", cfg.cert_secret, type(exc).__name__)

    ctx.health.add("webhook-certificate", tls_loaded.is_set)
    ctx.health.add("webhook-policies", lambda: cache.synced)
    validator = PolicyValidator(
        cfg.namespace,
        budget=cfg.budget,
        deadline=cfg.compile_deadline,
        slots=cfg.compile_slots,
        waiting=cfg.compile_waiting,
        node_report_accounts=frozenset(cfg.node_report_accounts),
        pod_node=PodNodes(ctx.api_client).node_of if cfg.node_report_accounts else None,
    )
    app = build_app(state, validator, max_body=cfg.max_request_bytes, synced=cache.synced_event)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
    try:
        async with task_group() as group:
            group.create_task(cache.run(), name="webhook-policies")
            group.create_task(reporter.run(), name="webhook-events")
            group.create_task(
                watch_secret(ctx.api_client, cfg.namespace, cfg.cert_secret, on_secret), name="webhook-cert-watch"
            )
            await tls_loaded.wait()
            # Startup objects (modules, the API client) live forever: keep them out of GC scans
            # so a full collection never stalls an admission.
            gc.collect()
            gc.freeze()
            await runner.setup()
            await web.TCPSite(runner, ctx.args.bind_address, cfg.port, ssl_context=tls.context).start()
            log.info("webhook serving on :%d", cfg.port)
    finally:
        await runner.cleanup()
