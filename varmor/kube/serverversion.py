"""The API server's release, read at start and re-read while varmor runs.

An API server upgraded from 1.29 to 1.30 starts keeping `securityContext.appArmorProfile`;
re-reading its /version lets admission in `auto` mode switch to the field without a
restart of varmor.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from kubernetes.aio import client

from varmor.kubeversion import KubeVersion

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 60.0


async def read_version(api_client: client.ApiClient) -> KubeVersion:
    info: Any = await client.VersionApi(api_client).get_code()
    return KubeVersion.parse(str(info.major), str(info.minor), str(info.git_version or ""))


class ServerVersion:
    """`current` is the release last read; `run` re-reads it every `interval` seconds and
    keeps the last good answer when a read fails (an API server mid-restart)."""

    def __init__(
        self,
        api_client: client.ApiClient,
        current: KubeVersion,
        *,
        interval: float = DEFAULT_INTERVAL,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.api_client = api_client
        self.current = current
        # A release without the pod AppArmor field was reported since this process started.
        self.seen_without_field = not current.has_apparmor_field
        self.interval = interval
        self._sleep = sleep
        self._followers: list[Callable[[KubeVersion], None]] = []

    def follow(self, on_version: Callable[[KubeVersion], None]) -> None:
        """Call `on_version` with the current release now and with each new one."""
        self._followers.append(on_version)
        on_version(self.current)

    @classmethod
    async def read(cls, api_client: client.ApiClient, *, interval: float = DEFAULT_INTERVAL) -> ServerVersion:
        return cls(api_client, await read_version(api_client), interval=interval)

    async def refresh(self) -> KubeVersion:
        try:
            found = await read_version(self.api_client)
        except Exception as exc:
            log.warning("could not re-read the API server's version: %s", type(exc).__name__)
            return self.current
        if found != self.current:
            log.info("API server release changed from %s to %s", self.current, found)
            self.current = found
            self.seen_without_field = self.seen_without_field or not found.has_apparmor_field
            for on_version in self._followers:
                on_version(found)
        return found

    async def run(self) -> None:
        if self.interval <= 0:
            return
        while True:
            await self._sleep(self.interval)
            await self.refresh()
