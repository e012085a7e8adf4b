"""ArmorBehavior shares -> ArmorProfileModel: the leader's merge of what every node saw.

One queue keyed by profile (namespace, name). A share event queues its profile; the merge
recomputes the model from every share in the cache, so a missed event or a leader
handover loses nothing, and a model that did not change costs no write.

Shares are written by agents, one node each (the node-report guard), so each is hostile
input for the cluster: which shares count, and how, is `modelmerge`'s (owned by the
current ArmorProfile, from a node that runs the profile, decoded strictly and checked
rule by rule). The merge runs in a thread: a large model must not stall the webhook and
the agent sharing this event loop.

A model is stored compressed over 512 KiB; still over 1 MiB, it is not written at all
(the previous data stays) and its `Stored` condition, and so the policy, says so: never
silently truncated. Models have no owner: they outlive their policy (as in vArmor), and
the chart's uninstall hook removes them unless `keepModels` is set.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson
from kubernetes.aio import client

from varmor import api
from varmor.behavior.codec import decode_model_data, encode_model_data
from varmor.behavior.model import Behavior, digest, to_wire
from varmor.behavior.profile import check_rule, model_rules
from varmor.clock import Clock, now_rfc3339, utc_now
from varmor.kube import paths
from varmor.kube.client import JSON, ApiException
from varmor.kube.errors import TemporaryError
from varmor.kube.informer import EventType, Informer
from varmor.kube.kube import MERGE_PATCH, Kube
from varmor.kube.tasks import task_group
from varmor.kube.workqueue import WorkQueue
from varmor.reconcile.modeling import Model
from varmor.reconcile.modelmerge import ShareCache, merge, node_entry, owned_by, top_pods, uses_profile

log = logging.getLogger(__name__)
ProfileKey = tuple[str, str]  # (namespace, profile name)
MAX_MODEL_BYTES = 1024 * 1024


class ModelController:
    """Merges shares into models and tells the policy controller when a model changed."""

    def __init__(
        self,
        api_client: client.ApiClient,
        kube: Kube,
        *,
        profile_of: Callable[[str, str], tuple[str, bool] | None],
        on_model: Callable[[str, str], None],
        resync_seconds: float = 300.0,
        clock: Clock = utc_now,
    ) -> None:
        self.kube = kube
        self.profile_of = profile_of  # (uid, cluster policy?) of the ArmorProfile, or None
        self.cache = ShareCache()
        self.on_model = on_model
        self.clock = clock
        self.shares = Informer(api_client, api.ARMOR_BEHAVIOR, resync_seconds=resync_seconds)
        self.models = Informer(api_client, api.ARMOR_PROFILE_MODEL, resync_seconds=resync_seconds)
        # One merge at a time: merges are CPU-bound (in a thread), and share the decode cache.
        self.queue: WorkQueue[ProfileKey] = WorkQueue(self.reconcile, concurrency=1, name="models")
        self._by_profile: dict[ProfileKey, dict[str, JSON]] = {}
        self._decoded: dict[tuple[str, str], Model] = {}  # (uid, resourceVersion) -> model
        self.shares.add_handler(self._on_share)
        self.models.add_handler(self._on_model)

    async def _on_share(self, event: EventType, share: JSON) -> None:
        meta, spec = share["metadata"], share.get("spec") or {}
        key = (str(meta.get("namespace")), str(spec.get("profileName")))
        nodes = self._by_profile.setdefault(key, {})
        if event == "DELETED":
            nodes.pop(str(meta.get("name")), None)
        else:
            nodes[str(meta.get("name"))] = share
        if event != "RESYNC":
            self.queue.add(key)

    async def _on_model(self, event: EventType, obj: JSON) -> None:
        if event in ("ADDED", "MODIFIED", "DELETED"):
            meta = obj["metadata"]
            self.on_model(str(meta.get("namespace")), str(meta.get("name")))

    def profile_changed(self, namespace: str, name: str) -> None:
        """An ArmorProfile appeared: merge shares that were waiting for it."""
        if (namespace, name) in self._by_profile:
            self.queue.add((namespace, name))

    def model(self, namespace: str, name: str) -> Model | None:
        """The stored model of a profile (decoded once per version), or None."""
        obj = self.models.get(namespace, name)
        if obj is None or not obj.get("data"):
            return None
        meta = obj["metadata"]
        key = (str(meta.get("uid")), str(meta.get("resourceVersion")))
        if key not in self._decoded:
            try:
                behavior = decode_model_data(obj)
            except ValueError as exc:
                log.warning("ArmorProfileModel %s/%s unreadable: %s", namespace, name, exc)
                return None
            safe = Behavior(rules={r: c for r, c in behavior.rules.items() if check_rule(r) is None})
            if len(self._decoded) > 1024:
                self._decoded.clear()
            self._decoded[key] = Model(digest(safe), tuple(model_rules(safe)), obj.get("status") or {})
        return self._decoded[key]

    async def reconcile(self, key: ProfileKey) -> None:
        namespace, name = key
        shares = list(self._by_profile.get(key, {}).values())
        if not shares:
            self._by_profile.pop(key, None)
            return
        profile = self.profile_of(namespace, name)
        if profile is None:
            return
        existing = self.models.get(namespace, name)
        admitted, refused = await self._admit(namespace, name, profile, shares, existing)
        merged, nodes = await asyncio.to_thread(merge, admitted, self.cache)
        nodes = sorted(nodes + refused, key=lambda n: str(n["nodeName"]))
        shares = admitted
        storage, data = encode_model_data(merged)
        size = len(orjson.dumps(data))
        existing = self.models.get(namespace, name)
        status: JSON = {
            "sha256": digest(merged),
            "rules": len(merged),
            "records": merged.records + merged.excluded,
            "lostRecords": merged.lost,
            "excludedRecords": merged.excluded,
            "size": len(orjson.dumps(to_wire(merged))),
            "nodes": nodes,
            "pods": top_pods(shares),
        }
        if size > MAX_MODEL_BYTES:
            message = f"the model is {size} bytes stored ({storage}); at most {MAX_MODEL_BYTES}: not stored"
            status["conditions"] = [{"type": "Stored", "status": "False", "reason": "TooLarge", "message": message}]
            log.warning("ArmorProfileModel %s/%s: %s", namespace, name, message)
            body = existing
        else:
            status["conditions"] = [{"type": "Stored", "status": "True", "reason": "Stored", "message": storage}]
            body = await self._write(namespace, name, existing, storage, data)
        if body is None:
            return
        current = body.get("status") or {}
        if any(current.get(k) != v for k, v in status.items()):
            status["updateTime"] = now_rfc3339(self.clock)
            path = paths.custom_path(api.ARMOR_PROFILE_MODEL, namespace, name) + "/status"
            # Conditional, like every leader write: a late write from an old view never lands on a newer one.
            patch = {"metadata": {"resourceVersion": body["metadata"]["resourceVersion"]}, "status": status}
            try:
                await self.kube.request("PATCH", path, body=patch, content_type=MERGE_PATCH)
            except ApiException as exc:
                if exc.status == 409:
                    raise TemporaryError(f"ArmorProfileModel {namespace}/{name} changed; merging again") from None
                raise

    async def _admit(
        self, namespace: str, name: str, profile: tuple[str, bool], shares: list[JSON], existing: JSON | None
    ) -> tuple[list[JSON], list[JSON]]:
        """The shares that count, and a status entry for each refused one (modelmerge)."""
        uid, cluster = profile
        before = {
            str(n.get("nodeName"))
            for n in ((existing or {}).get("status") or {}).get("nodes") or []
            if isinstance(n, dict) and not n.get("refused")
        }
        admitted: list[JSON] = []
        refused: list[JSON] = []
        for share in shares:
            node = str((share.get("spec") or {}).get("nodeName"))
            if not owned_by(share, uid):
                why = "not owned by the current ArmorProfile"
            elif node in before or await self._runs_profile(node, None if cluster else namespace, name):
                admitted.append(share)
                continue
            else:
                where = "" if cluster else f" in namespace {namespace}"
                why = f"no pod on node {node}{where} uses the profile"
            refused.append({**node_entry(share), "rules": 0, "refusedRules": 0, "refused": why})
        return admitted, refused

    async def _runs_profile(self, node: str, namespace: str | None, profile: str) -> bool:
        """A pod bound to `node` (in `namespace`, or anywhere for a cluster policy) uses the profile."""
        path = paths.core_path("pods", namespace)
        pods = await self.kube.request("GET", path, query={"fieldSelector": f"spec.nodeName={node}"})
        return any(uses_profile(pod, profile) for pod in pods.get("items") or [])

    async def _write(self, namespace: str, name: str, existing: JSON | None, storage: str, data: JSON) -> JSON:
        """Create the model, or replace its data when it changed (resourceVersion-guarded)."""
        if existing is not None and existing.get("storageType") == storage and existing.get("data") == data:
            return existing
        body: dict[str, Any] = {
            "apiVersion": api.API_VERSION,
            "kind": api.ARMOR_PROFILE_MODEL.kind,
            "metadata": {"name": name, "namespace": namespace, "labels": {api.MANAGED_BY_LABEL: "varmor"}},
            "storageType": storage,
            "data": data,
        }
        base = paths.custom_path(api.ARMOR_PROFILE_MODEL, namespace, None)
        if existing is None:
            try:
                created: JSON = await self.kube.request("POST", base, body=body)
                return created
            except ApiException as exc:
                if exc.status != 409:
                    raise
                existing = await self.kube.request("GET", f"{base}/{name}")
        body["metadata"] = {
            **existing["metadata"],
            "labels": {**(existing["metadata"].get("labels") or {}), **body["metadata"]["labels"]},
        }
        updated: JSON = await self.kube.request("PUT", f"{base}/{name}", body=body)
        return updated

    async def run(self) -> None:
        async with task_group() as group:
            for informer in (self.shares, self.models):
                group.create_task(informer.run(), name=f"informer-{informer.resource.plural}")
            for informer in (self.shares, self.models):
                await informer.wait_synced()
            group.create_task(self.queue.run(), name="model-queue")
