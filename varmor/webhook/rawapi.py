"""Raw-JSON calls through the shared ApiClient (auth, TLS, retries), returning dicts.

The generated model classes drop fields the client does not know and cost a lot on big
lists; the webhook's leader tasks only need the API's JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import orjson
from kubernetes.aio import client

from varmor.kube import JSON, ApiException

MERGE_PATCH = "application/merge-patch+json"
ADMISSION = "/apis/admissionregistration.k8s.io/v1"


async def request(
    api_client: client.ApiClient,
    method: str,
    path: str,
    *,
    query: Mapping[str, Any] | None = None,
    body: Any = None,
    content_type: str = "application/json",
    request_timeout: float = 30.0,
) -> JSON:
    """Raises ApiException for any non-2xx answer."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type
    params = [(k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in (query or {}).items()]
    serialized = await api_client.param_serialize(
        method=method,
        resource_path=path,
        query_params=params,
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = await api_client.call_api(*serialized, _request_timeout=request_timeout)
    data = await response.read()
    if not 200 <= response.status <= 299:
        raise ApiException(status=response.status, reason=response.reason, body=data.decode("utf-8", "replace"))
    result: JSON = orjson.loads(data) if data else {}
    return result


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
