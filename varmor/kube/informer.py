"""List+watch cache for varmor's custom resources and the core kinds it watches, shared by
every role.

One implementation of the client-go informer contract that varmor needs: an initial list,
a watch from its resourceVersion, a relist on 410 Gone, exponential backoff on errors,
and a periodic resync that re-delivers every cached object so reconcilers converge even
if an event was lost. Handlers get plain dicts (the API's JSON).

A watch that ends (the server's timeout, an API server restart, a cut connection, a 429)
is resumed from the last resourceVersion it saw: only a 410 Gone (that version was
compacted away) costs a full list. After an API server restart a fleet of agents then
re-watches instead of all listing every ArmorProfile at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import orjson
from kubernetes.aio import client

from varmor import api
from varmor.kube import metrics, paths
from varmor.kube.backoff import Backoff
from varmor.kube.client import JSON, ApiException, open_stream, raw_request

log = logging.getLogger(__name__)

EventType = Literal["ADDED", "MODIFIED", "DELETED", "RESYNC"]
Handler = Callable[[EventType, JSON], Awaitable[None]]
Key = tuple[str, str]  # (namespace or "", name)


def object_key(obj: JSON) -> Key:
    meta = obj.get("metadata", {})
    return meta.get("namespace", "") or "", meta["name"]


class Informer:
    """Watches one resource (all namespaces, or one; optionally a label or field selector)
    and keeps a cache."""

    def __init__(
        self,
        api_client: client.ApiClient,
        resource: api.Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        resync_seconds: float = 300.0,
        watch_timeout_seconds: int = 240,
    ) -> None:
        self._api_client = api_client
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.resync_seconds = resync_seconds
        self.watch_timeout_seconds = watch_timeout_seconds
        self.cache: dict[Key, JSON] = {}
        self._handlers: list[Handler] = []
        self._synced = asyncio.Event()
        self._resource_version = ""
        for reason in ("ended", "error", "gone"):  # exported at 0 from the start, for rate()
            metrics.WATCH_RESTARTS.labels(resource.kind, reason)

    def add_handler(self, handler: Handler) -> None:
        self._handlers.append(handler)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        await self._synced.wait()

    def get(self, namespace: str, name: str) -> JSON | None:
        return self.cache.get((namespace, name))

    def list(self) -> list[JSON]:
        return [self.cache[k] for k in sorted(self.cache)]

    # -- plumbing ---------------------------------------------------------------
    def _selectors(self) -> dict[str, Any]:
        query: dict[str, Any] = {}
        if self.label_selector:
            query["labelSelector"] = self.label_selector
        if self.field_selector:
            query["fieldSelector"] = self.field_selector
        return query

    @property
    def _path(self) -> str:
        return paths.custom_path(self.resource, self.namespace)

    async def _list(self) -> JSON:
        # A big first list on a busy API server may take long; a watch is capped by timeoutSeconds.
        return await raw_request(self._api_client, "GET", self._path, query=self._selectors(), request_timeout=300)

    async def _open_watch(self) -> Any:
        query = {
            **self._selectors(),
            "watch": True,
            "allowWatchBookmarks": True,
            "resourceVersion": self._resource_version,
            "timeoutSeconds": self.watch_timeout_seconds,
        }
        return await open_stream(self._api_client, self._path, query=query)

    async def _emit(self, event: EventType, obj: JSON) -> None:
        for handler in self._handlers:
            try:
                await handler(event, obj)
            except Exception:  # a handler bug must not kill the watch
                log.exception("handler failed for %s %s", self.resource.kind, object_key(obj))

    async def _relist(self) -> None:
        listing = await self._list()
        fresh = {object_key(o): o for o in listing.get("items", [])}
        for key, obj in fresh.items():
            obj.setdefault("apiVersion", self.resource.api_version)
            obj.setdefault("kind", self.resource.kind)
            old = self.cache.get(key)
            self.cache[key] = obj
            if old is None:
                await self._emit("ADDED", obj)
            elif old["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                await self._emit("MODIFIED", obj)
        for key in sorted(set(self.cache) - set(fresh)):
            await self._emit("DELETED", self.cache.pop(key))
        self._resource_version = listing["metadata"]["resourceVersion"]
        self._synced.set()

    async def _watch_once(self) -> None:
        """Watch until the server closes the stream. Raises ApiException(410) when stale."""
        response = await self._open_watch()
        try:
            while True:
                line = await response.content.readline()
                if not line:
                    return
                event = orjson.loads(line)
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    raise ApiException(status=obj.get("code", 500), reason=obj.get("message", ""))
                self._resource_version = obj["metadata"]["resourceVersion"]
                if kind == "BOOKMARK":
                    continue
                key = object_key(obj)
                if kind == "DELETED":
                    self.cache.pop(key, None)
                else:
                    self.cache[key] = obj
                await self._emit(kind, obj)
        finally:
            response.release()

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resync_seconds)
            for obj in self.list():
                await self._emit("RESYNC", obj)

    async def run(self) -> None:
        """Run forever (until cancelled)."""
        backoff = Backoff(base=0.2)
        need_list = True
        resync = asyncio.create_task(self._resync_loop())
        try:
            while True:
                try:
                    if need_list:
                        await self._relist()
                        need_list = False
                    await self._watch_once()
                    backoff.reset()
                    self._restarted("ended")
                except asyncio.CancelledError:
                    raise
                except ApiException as exc:
                    if exc.status == 410:
                        log.info("%s watch expired; relisting", self.resource.kind)
                        self._restarted("gone")
                        need_list = True
                        continue
                    log.warning("%s watch failed: %s", self.resource.kind, exc.status)
                    self._restarted("error")
                    await asyncio.sleep(backoff.next())
                except Exception as exc:  # connection errors, server restarts
                    log.warning("%s watch error: %r", self.resource.kind, exc)
                    self._restarted("error")
                    await asyncio.sleep(backoff.next())
        finally:
            resync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await resync

    def _restarted(self, reason: str) -> None:
        metrics.WATCH_RESTARTS.labels(self.resource.kind, reason).inc()
