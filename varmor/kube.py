"""Thin helpers around kubernetes.aio: client construction and dict-shaped access.

Everything else in varmor works on plain dicts (the API's JSON), so the pure logic
never depends on the generated model classes.
"""

from __future__ import annotations

import os
from typing import Any

from kubernetes.aio import client, config
from kubernetes.aio.client.exceptions import ApiException

from varmor import api

JSON = dict[str, Any]

__all__ = ["JSON", "ApiException", "custom_api", "new_api_client", "to_dict"]


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
