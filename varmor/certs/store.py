"""The certificate Secret on the API server: create-if-absent, optimistic updates, watch.

Thin I/O around `bundle`: the leader writes, every replica watches and reloads.
Secret contents are never logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from kubernetes.aio import client

from varmor.certs.bundle import Bundle
from varmor.kube.backoff import Backoff
from varmor.kube.client import JSON, ApiException, to_dict

log = logging.getLogger(__name__)


class SecretStore:
    def __init__(self, api_client: client.ApiClient, namespace: str, name: str) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.name = name

    async def read(self) -> JSON | None:
        try:
            secret = await self.core.read_namespaced_secret(self.name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return to_dict(self.api_client, secret)

    async def create_if_absent(self, bundle: Bundle, owner: JSON | None = None) -> JSON:
        """Create the Secret, or return whatever a faster replica created first."""
        body = bundle.to_secret(self.name, self.namespace)
        if owner is not None:
            body["metadata"]["ownerReferences"] = [owner]
        try:
            return to_dict(self.api_client, await self.core.create_namespaced_secret(self.namespace, body))
        except ApiException as exc:
            if exc.status != 409:
                raise
        existing = await self.read()
        if existing is None:  # deleted in between: try once more
            return to_dict(self.api_client, await self.core.create_namespaced_secret(self.namespace, body))
        return existing

    async def update(self, current: JSON, bundle: Bundle) -> JSON:
        """Replace the Secret's data, guarded by resourceVersion (409 if someone else wrote)."""
        body = bundle.to_secret(self.name, self.namespace)
        meta = current.get("metadata") or {}
        body["metadata"]["resourceVersion"] = meta.get("resourceVersion")
        if meta.get("ownerReferences"):
            body["metadata"]["ownerReferences"] = meta["ownerReferences"]
        for key in ("labels", "annotations"):
            merged = {**(meta.get(key) or {}), **body["metadata"][key]}
            body["metadata"][key] = merged
        return to_dict(self.api_client, await self.core.replace_namespaced_secret(self.name, self.namespace, body))


SecretHandler = Callable[[JSON], Awaitable[None]]


async def watch_secret(
    api_client: client.ApiClient,
    namespace: str,
    name: str,
    on_change: SecretHandler,
    *,
    timeout_seconds: int = 240,
) -> None:
    """Call `on_change` with the Secret whenever it appears or changes; runs until cancelled.

    A deleted Secret is ignored (replicas keep serving what they have; the leader
    recreates it).
    """
    core = client.CoreV1Api(api_client)
    selector = f"metadata.name={name}"
    backoff = Backoff(base=0.2)
    version = ""
    while True:
        try:
            if not version:
                listing = await core.list_namespaced_secret(namespace, field_selector=selector)
                for item in listing.items:
                    await on_change(to_dict(api_client, item))
                version = listing.metadata.resource_version
            response = await core.list_namespaced_secret_without_preload_content(
                namespace,
                field_selector=selector,
                watch=True,
                allow_watch_bookmarks=True,
                resource_version=version,
                timeout_seconds=timeout_seconds,
            )
            try:
                if response.status != 200:
                    raise ApiException(status=response.status, reason=response.reason)
                while line := await response.content.readline():
                    event = orjson.loads(line)
                    obj: dict[str, Any] = event["object"]
                    if event["type"] == "ERROR":
                        raise ApiException(status=obj.get("code", 500), reason=obj.get("message", ""))
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED"):
                        await on_change(obj)
            finally:
                response.release()
            backoff.reset()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, ApiException) and exc.status == 410:
                version = ""
                continue
            status = exc.status if isinstance(exc, ApiException) else type(exc).__name__
            log.warning("watching Secret %s/%s failed (%s); retrying", namespace, name, status)
            version = ""
            await asyncio.sleep(backoff.next())
