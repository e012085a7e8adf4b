"""Every replica's cache of VarmorPolicies and VarmorClusterPolicies (two informers).

Change notifications are coalesced: a relist of N policies triggers one rebuild of the
index, not N.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from kubernetes.aio import client

from varmor import api
from varmor.kube.client import JSON
from varmor.kube.informer import EventType, Informer
from varmor.kube.tasks import task_group


class PolicyCache:
    def __init__(self, api_client: client.ApiClient, on_change: Callable[[], None] | None = None) -> None:
        self.informers = (
            Informer(api_client, api.VARMOR_CLUSTER_POLICY),
            Informer(api_client, api.VARMOR_POLICY),
        )
        self._on_change = on_change
        self._scheduled = False
        self.synced_event = asyncio.Event()
        for informer in self.informers:
            informer.add_handler(self._handle)

    @property
    def synced(self) -> bool:
        return all(i.synced for i in self.informers)

    def policies(self) -> list[JSON]:
        return [p for i in self.informers for p in i.list()]

    async def _handle(self, event: EventType, _obj: JSON) -> None:
        if event != "RESYNC":
            self._schedule()

    def _schedule(self) -> None:
        if self._scheduled:
            return
        self._scheduled = True
        asyncio.get_running_loop().call_soon(self._fire)

    def _fire(self) -> None:
        self._scheduled = False
        if self._on_change is not None:
            self._on_change()

    async def run(self) -> None:
        async with task_group() as group:
            for informer in self.informers:
                group.create_task(informer.run(), name=f"informer-{informer.resource.plural}")
            for informer in self.informers:
                await informer.wait_synced()
            self.synced_event.set()
            self._fire()
