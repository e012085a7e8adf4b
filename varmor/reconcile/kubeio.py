"""Raw-JSON requests to the API server for the leader.

The leader reads and writes whole objects (Leases, workloads, policy status). Going
through the generated model classes would drop fields the client does not know (the
server is newer than the client) and has crashed on Lease timestamps before, so every
call here sends and returns the API's JSON as plain dicts.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from kubernetes.aio import client

from varmor import api
from varmor.kube import JSON, raw_request
from varmor.reconcile import metrics

log = logging.getLogger(__name__)

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"


def now_rfc3339() -> str:
    """Seconds precision, as metav1.Time serialises."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(when: dt.datetime) -> str:
    """metav1.MicroTime (Lease timestamps)."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


class Kube:
    """The handful of verbs the leader needs, on raw JSON."""

    def __init__(self, api_client: client.ApiClient, *, timeout: float = 30.0, component: str = "other") -> None:
        self.api_client = api_client
        self.timeout = timeout
        self.component = component
        self.writes = 0  # also exported as varmor_api_writes_total{component}

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
        if method != "GET":
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
        )

    # -- paths ----------------------------------------------------------------------
    @staticmethod
    def custom_path(resource: api.Resource, namespace: str | None = None, name: str | None = None) -> str:
        path = f"/apis/{api.GROUP}/{api.VERSION}"
        if resource.namespaced and namespace:
            path += f"/namespaces/{quote(namespace, safe='')}"
        path += f"/{resource.plural}"
        if name:
            path += f"/{quote(name, safe='')}"
        return path

    @staticmethod
    def workload_path(kind: str, namespace: str | None = None, name: str | None = None) -> str:
        plural = {"Deployment": "deployments", "StatefulSet": "statefulsets", "DaemonSet": "daemonsets"}
        if kind == "Pod":
            base = "/api/v1"
            plural_name = "pods"
        else:
            base = "/apis/apps/v1"
            plural_name = plural[kind]
        path = base
        if namespace:
            path += f"/namespaces/{quote(namespace, safe='')}"
        path += f"/{plural_name}"
        if name:
            path += f"/{quote(name, safe='')}"
        return path

    # -- events ---------------------------------------------------------------------
    async def event(self, obj: Mapping[str, Any], event_type: str, reason: str, message: str) -> None:
        """A core/v1 Event about `obj` (cluster-scoped objects' events go to `default`,
        as client-go's recorder does). Best effort: an Event failing never fails a reconcile."""
        meta = obj.get("metadata", {})
        namespace = meta.get("namespace") or "default"
        now = now_rfc3339()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'varmor')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", api.API_VERSION),
                "kind": obj.get("kind", ""),
                "name": meta.get("name", ""),
                "namespace": meta.get("namespace", ""),
                "uid": meta.get("uid", ""),
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "varmor-leader"},
            "reportingComponent": "varmor.org/leader",
            "reportingInstance": "varmor-leader",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.request("POST", f"/api/v1/namespaces/{quote(namespace, safe='')}/events", body=body)
        except Exception as exc:  # never let an Event break a reconcile
            log.warning("could not record event %s on %s: %s", reason, meta.get("name"), getattr(exc, "status", exc))
