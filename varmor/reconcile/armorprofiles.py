"""ArmorProfile writes for the policy controller: create, update our fields only,
delete, and the live name-collision check. Every write is guarded (resourceVersion or
uid preconditions), so a stale cache never overwrites someone else's change."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from varmor import api
from varmor.kube import paths
from varmor.kube.client import JSON, ApiException
from varmor.kube.errors import TemporaryError
from varmor.kube.kube import Kube
from varmor.reconcile.profiles import PolicyKey, merged_for_update, owner_key

log = logging.getLogger(__name__)


class ArmorProfileWriter:
    def __init__(self, kube: Kube, policy_alive: Callable[[PolicyKey, str], bool]) -> None:
        self.kube = kube
        self.policy_alive = policy_alive
        self._name_locks: dict[str, asyncio.Lock] = {}

    def lock(self, profile_name: str) -> asyncio.Lock:
        return self._name_locks.setdefault(profile_name, asyncio.Lock())

    async def name_conflict(self, profile_name: str, uid: str) -> str | None:
        """None if the name is free for policy `uid`, else a message naming the holder.
        Raises TemporaryError while the name is held by an ArmorProfile that is going away.

        A live list (not the cache): the cache may not yet show a profile another worker
        created a moment ago."""
        path = paths.custom_path(api.ARMOR_PROFILE)
        listing = await self.kube.request("GET", path, query={"fieldSelector": f"metadata.name={profile_name}"})
        for other in listing.get("items", []):
            owner = owner_key(other)
            if owner is not None and owner[1] == uid:
                continue
            if other["metadata"].get("deletionTimestamp"):
                raise TemporaryError(f"profile name {profile_name} is held by an ArmorProfile being deleted")
            if owner is not None and not self.policy_alive(owner[0], owner[1]):
                await self.delete(other)
                raise TemporaryError(f"profile name {profile_name} was held by a deleted policy's ArmorProfile")
            holder = f"{owner[0][0]} {'/'.join(p for p in owner[0][1:] if p)}" if owner else "an unowned ArmorProfile"
            return (
                f"profile name {profile_name} is already used by {holder} "
                f"(ArmorProfile {other['metadata'].get('namespace')}/{profile_name}); rename this policy"
            )
        return None

    async def create(self, body: JSON) -> JSON:
        ns = body["metadata"]["namespace"]
        try:
            return await self.kube.request("POST", paths.custom_path(api.ARMOR_PROFILE, ns), body=body)
        except ApiException as exc:
            if exc.status != 409:
                raise
        # Created concurrently (or the cache lagged): take it only if it is ours.
        current = await self.kube.request("GET", paths.custom_path(api.ARMOR_PROFILE, ns, body["metadata"]["name"]))
        owner = owner_key(current)
        if owner is None or owner[1] != body["metadata"]["ownerReferences"][0]["uid"]:
            raise RuntimeError(f"ArmorProfile {ns}/{body['metadata']['name']} exists for another policy")
        return (await self.apply(current, body))[0]

    async def apply(self, ap: JSON, desired: JSON) -> tuple[JSON, bool]:
        """Bring `ap` to `desired` (our fields only). PUT with the resourceVersion the update
        was computed from; on 409 (someone wrote first, or our cache lagged our own last
        write) re-read once and recompute, else let the queue retry with backoff.
        Returns the object and whether this call changed its spec."""
        meta = ap["metadata"]
        path = paths.custom_path(api.ARMOR_PROFILE, meta["namespace"], meta["name"])
        for attempt in range(2):
            update = merged_for_update(ap, desired)
            if update is None:
                return ap, False
            try:
                return await self.kube.request("PUT", path, body=update), ap.get("spec") != desired["spec"]
            except ApiException as exc:
                if exc.status != 409 or attempt:
                    raise
            ap = await self.kube.request("GET", path)
        raise AssertionError("unreachable")

    async def delete(self, ap: JSON) -> None:
        meta = ap["metadata"]
        path = paths.custom_path(api.ARMOR_PROFILE, meta["namespace"], meta["name"])
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": meta["uid"]}}
        try:
            await self.kube.request("DELETE", path, body=body, query={"propagationPolicy": "Background"})
            log.info("deleted ArmorProfile %s/%s (policy gone)", meta["namespace"], meta["name"])
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise
