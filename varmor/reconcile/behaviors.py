"""ArmorBehavior shares -> ArmorProfileModel: the leader's merge of what every node saw.

One queue keyed by profile (namespace, name). A share event queues its profile; the merge
recomputes the model from every share in the cache, so a missed event or a leader
handover loses nothing, and a model that did not change costs no write.

Shares are written by agents, one node each (the node-report guard), so each is hostile
input for the cluster: it is decoded strictly (`varmor.behavior.codec`), each rule is
checked against the profile grammar (`varmor.behavior.profile.check_rule`) and refused
rules are counted per node, never merged. Shares of a profile with no ArmorProfile are
not merged (an agent cannot make the leader create models at will).

A model is stored compressed over 512 KiB; still over 1 MiB, it is not written at all
(the previous data stays) and its `Stored` condition, and so the policy, says so: never
silently truncated. Models have no owner: they outlive their policy (as in vArmor), and
the chart's uninstall hook removes them unless `keepModels` is set.
"""

from __future__ import annotations

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
from varmor.kube.informer import EventType, Informer
from varmor.kube.kube import MERGE_PATCH, Kube
from varmor.kube.tasks import task_group
from varmor.kube.workqueue import WorkQueue
from varmor.reconcile.modeling import Model

log = logging.getLogger(__name__)
ProfileKey = tuple[str, str]  # (namespace, profile name)
MAX_MODEL_BYTES = 1024 * 1024


def _counts(share: JSON) -> tuple[int, int, int]:
    spec = share.get("spec") or {}
    return tuple(int(spec.get(k) or 0) for k in ("records", "lostRecords", "excludedRecords"))  # type: ignore[return-value]


MAX_PODS = 64
_POD_FIELDS = ("namespace", "name", "container", "image")


def top_pods(shares: list[JSON]) -> list[JSON]:
    """The pods behind a model, across nodes: the MAX_PODS with the most records."""
    counts: dict[tuple[str, ...], int] = {}
    for share in shares:
        for pod in (share.get("spec") or {}).get("pods") or []:
            if isinstance(pod, dict):
                key = tuple(str(pod.get(k) or "") for k in _POD_FIELDS)
                counts[key] = counts.get(key, 0) + int(pod.get("records") or 0)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_PODS]
    return [{k: v for k, v in zip(_POD_FIELDS, key, strict=True) if v} | {"records": n} for key, n in ranked]


def merge(shares: list[JSON]) -> tuple[Behavior, list[JSON]]:
    """The merged model of a profile's shares and each node's contribution (pure)."""
    merged = Behavior()
    nodes: list[JSON] = []
    for share in sorted(shares, key=lambda s: str((s.get("spec") or {}).get("nodeName"))):
        records, lost, excluded = _counts(share)
        entry: JSON = {
            "nodeName": str((share.get("spec") or {}).get("nodeName")),
            "records": records,
            "lostRecords": lost,
            "excludedRecords": excluded,
        }
        merged.lost += lost  # measured by the node whatever its share holds
        try:
            behavior = decode_model_data(share)
        except ValueError as exc:
            log.warning("ArmorBehavior %s refused: %s", share["metadata"].get("name"), exc)
            nodes.append({**entry, "rules": 0, "refusedRules": -1})
            continue
        refused = 0
        for rule, count in behavior.rules.items():
            if check_rule(rule) is None:
                merged.rules[rule] = merged.rules.get(rule, 0) + count
            else:
                refused += 1
        merged.records += max(0, records - excluded)  # spec.records counts the excluded too
        merged.excluded += excluded
        nodes.append({**entry, "rules": len(behavior.rules) - refused, "refusedRules": refused})
    return merged, nodes


class ModelController:
    """Merges shares into models and tells the policy controller when a model changed."""

    def __init__(
        self,
        api_client: client.ApiClient,
        kube: Kube,
        *,
        profile_exists: Callable[[str, str], bool],
        on_model: Callable[[str, str], None],
        resync_seconds: float = 300.0,
        clock: Clock = utc_now,
    ) -> None:
        self.kube = kube
        self.profile_exists = profile_exists
        self.on_model = on_model
        self.clock = clock
        self.shares = Informer(api_client, api.ARMOR_BEHAVIOR, resync_seconds=resync_seconds)
        self.models = Informer(api_client, api.ARMOR_PROFILE_MODEL, resync_seconds=resync_seconds)
        self.queue: WorkQueue[ProfileKey] = WorkQueue(self.reconcile, concurrency=2, name="models")
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
        if not self.profile_exists(namespace, name):
            return
        merged, nodes = merge(shares)
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
            await self.kube.request("PATCH", path, body={"status": status}, content_type=MERGE_PATCH)

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
