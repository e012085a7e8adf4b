"""`varmor cleanup`: the chart's pre-delete hook.

Order matters: the webhook configurations go first (nothing may call a webhook that is
going away), then policies and ArmorProfiles, then we wait (bounded) for the agents to
unload the profiles, then ArmorNodes. The configurations are also owned by the chart's
ClusterRole, so the garbage collector removes any that a still-running leader recreates
in the meantime.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

from varmor import api
from varmor.kube import paths
from varmor.kube.client import ApiException, list_all, raw_request
from varmor.reconcile.status import Liveness

log = logging.getLogger("varmor.cleanup")


async def _delete(api_client: Any, path: str) -> bool:
    try:
        await raw_request(api_client, "DELETE", path)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


async def delete_webhook_configurations(api_client: Any, name: str) -> list[str]:
    deleted = []
    for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"):
        if await _delete(api_client, paths.webhook_config_path(kind, name)):
            deleted.append(f"{kind}/{name}")
    return deleted


async def _delete_all(api_client: Any, resource: api.Resource) -> int:
    try:
        items = await list_all(api_client, paths.custom_path(resource))
    except ApiException as exc:
        if exc.status == 404:  # CRD not installed
            return 0
        raise
    count = 0
    for item in items:
        meta = item["metadata"]
        count += await _delete(api_client, paths.custom_path(resource, meta.get("namespace"), meta["name"]))
    return count


async def _wait_unloaded(api_client: Any, limit: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        try:
            nodes = await list_all(api_client, paths.custom_path(api.ARMOR_NODE))
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        # A node whose agent is gone (heartbeat older than the leader's default) has nobody
        # to unload: waiting for it would only stall the uninstall.
        liveness = Liveness(now=dt.datetime.now(dt.UTC))
        loaded = [
            n["metadata"]["name"] for n in nodes if _holds_profiles(n.get("status") or {}) and not liveness.lost(n)
        ]
        if not loaded:
            return True
        if loop.time() > deadline:
            log.warning("profiles still loaded on %s; continuing", ", ".join(sorted(loaded)[:10]))
            return False
        await asyncio.sleep(1.0)


def _holds_profiles(status: dict[str, Any]) -> bool:
    """Whether an ArmorNode says its kernel still holds varmor profiles (`loaded`; the
    map of an agent not yet upgraded)."""
    return bool(status.get("loaded") or status.get("profiles"))


async def cleanup(
    api_client: Any,
    config_name: str,
    *,
    resources: bool = True,
    unload_timeout: float = 120.0,
    keep_models: bool = False,
) -> list[str]:
    """The uninstall hook's work; returns the webhook configurations it deleted."""
    deleted = await delete_webhook_configurations(api_client, config_name)
    for ref in deleted:
        log.info("deleted %s", ref)
    if not resources:
        return deleted
    for resource in (api.VARMOR_CLUSTER_POLICY, api.VARMOR_POLICY, api.ARMOR_PROFILE):
        log.info("deleted %d %s", await _delete_all(api_client, resource), resource.plural)
    await _wait_unloaded(api_client, unload_timeout)
    leftovers = (api.ARMOR_NODE, api.ARMOR_BEHAVIOR) + (() if keep_models else (api.ARMOR_PROFILE_MODEL,))
    for resource in leftovers:
        log.info("deleted %d %s", await _delete_all(api_client, resource), resource.plural)
    # The leader, still running during the hook, re-registers when the policies go: take
    # that down too, so only what it writes after this point waits for the garbage
    # collector (the configurations are owned by the chart's ClusterRole).
    again = await delete_webhook_configurations(api_client, config_name)
    for ref in again:
        log.info("deleted %s (re-registered during the cleanup)", ref)
    return deleted + again
