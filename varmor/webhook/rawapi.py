"""Raw-JSON calls through the shared ApiClient (auth, TLS, retries), returning dicts.

The generated model classes drop fields the client does not know and cost a lot on big
lists; the webhook's leader tasks only need the API's JSON.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from kubernetes.aio import client

from varmor.kube import JSON, raw_request

MERGE_PATCH = "application/merge-patch+json"
ADMISSION = "/apis/admissionregistration.k8s.io/v1"


request = raw_request


def webhook_config_path(kind: str, name: str | None = None) -> str:
    plural = "mutatingwebhookconfigurations" if kind.startswith("Mutating") else "validatingwebhookconfigurations"
    path = f"{ADMISSION}/{plural}"
    return f"{path}/{quote(name, safe='')}" if name else path


def workload_path(kind: str, namespace: str | None = None) -> str:
    base, plural = {
        "Pod": ("/api/v1", "pods"),
        "Deployment": ("/apis/apps/v1", "deployments"),
        "StatefulSet": ("/apis/apps/v1", "statefulsets"),
        "DaemonSet": ("/apis/apps/v1", "daemonsets"),
    }[kind]
    return f"{base}/namespaces/{quote(namespace, safe='')}/{plural}" if namespace else f"{base}/{plural}"


async def list_all(api_client: client.ApiClient, path: str, *, page: int = 500) -> list[JSON]:
    """Every item of a list, paginated."""
    items: list[JSON] = []
    cont = ""
    while True:
        query: dict[str, Any] = {"limit": page}
        if cont:
            query["continue"] = cont
        result = await request(api_client, "GET", path, query=query)
        items.extend(result.get("items") or [])
        cont = (result.get("metadata") or {}).get("continue") or ""
        if not cont:
            return items
