"""`Kube`: the verbs a role needs on raw JSON, with its writes counted and Events sent.

One instance per component (election, reconcile, agent, webhook), so
`varmor_api_writes_total{component}` tells who loads the API server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes.aio import client

from varmor.clock import Clock, utc_now
from varmor.events import ObjectRef, Severity, event_body
from varmor.kube import metrics, paths
from varmor.kube.client import JSON, list_all, raw_request

log = logging.getLogger(__name__)

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"


class Kube:
    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        timeout: float = 30.0,
        component: str = "other",
        role: str = "",
        instance: str = "",
        clock: Clock = utc_now,
        fence: Callable[[], None] | None = None,
    ) -> None:
        self.api_client = api_client
        self.timeout = timeout
        self.component = component
        self.role = role or component  # who Events name as their source
        self.instance = instance or f"varmor-{self.role}"
        self.clock = clock
        self.writes = 0  # also exported as varmor_api_writes_total{component}
        # The leader's write fence: raises when its lease may have expired (docs/design.md).
        self.fence = fence

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        request_timeout: float | None = None,
    ) -> JSON:
        fence = None
        if method != "GET":
            if self.fence is not None:
                self.fence()  # just before the write is sent: it raises to keep the write in
                fence = self.fence  # and again before each retry of a throttled write
            self.writes += 1
            metrics.API_WRITES.labels(self.component).inc()
        return await raw_request(
            self.api_client,
            method,
            path,
            query=query,
            body=body,
            content_type=content_type,
            request_timeout=request_timeout or self.timeout,
            before_send=fence,
        )

    async def list_all(self, path: str) -> list[JSON]:
        return await list_all(self.api_client, path)

    async def post_event(self, body: JSON) -> None:
        """Send a prepared Event body. Raises on failure (queued senders count them)."""
        await self.request("POST", paths.core_path("events", body["metadata"]["namespace"]), body=body)

    async def event(self, obj: Mapping[str, Any], event_type: Severity, reason: str, message: str) -> None:
        """An Event about `obj`. Best effort: an Event failing never fails a reconcile."""
        body = event_body(
            ObjectRef.of(dict(obj)),
            event_type,
            reason,
            message,
            component=self.role,
            instance=self.instance,
            now=self.clock(),
        )
        try:
            await self.post_event(body)
        except Exception as exc:  # never let an Event break a reconcile
            name = (obj.get("metadata") or {}).get("name")
            log.warning("could not record event %s on %s: %s", reason, name, getattr(exc, "status", exc))
