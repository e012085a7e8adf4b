"""Thin helpers around kubernetes.aio: client construction and dict-shaped access.

Everything else in varmor works on plain dicts (the API's JSON), so the pure logic
never depends on the generated model classes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import orjson
from kubernetes.aio import client, config
from kubernetes.aio.client.exceptions import ApiException

from varmor import api

JSON = dict[str, Any]

__all__ = ["JSON", "ApiException", "custom_api", "new_api_client", "raw_request", "to_dict"]


async def new_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """An ApiClient from a kubeconfig file, $KUBECONFIG, or the in-cluster service account."""
    configuration = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        await config.load_kube_config(config_file=path, client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration=configuration)


def to_dict(api_client: client.ApiClient, obj: Any) -> JSON:
    """A generated model object as the API's JSON shape (camelCase keys)."""
    result: JSON = api_client.sanitize_for_serialization(obj)
    return result


def custom_api(api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


def is_status(exc: BaseException, *codes: int) -> bool:
    return isinstance(exc, ApiException) and exc.status in codes


def group_version() -> tuple[str, str]:
    return api.GROUP, api.VERSION


async def raw_request(
    api_client: client.ApiClient,
    method: str,
    path: str,
    *,
    query: Mapping[str, Any] | None = None,
    body: Any = None,
    content_type: str = "application/json",
    request_timeout: float = 30.0,
) -> JSON:
    """One API call through the shared ApiClient (auth, TLS), sending and returning the
    API's JSON. The generated model classes drop fields this client does not know (the
    server may be newer) and cost a lot on big lists. Raises ApiException on non-2xx."""
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
