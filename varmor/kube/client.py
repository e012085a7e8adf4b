"""The API client: construction from a kubeconfig or the pod's ServiceAccount, and raw
JSON requests through it.

varmor reads and writes the API's JSON, never kubernetes' generated model classes: those
drop fields the client does not know (the server may be newer), cost a lot on big lists,
and have crashed on Lease timestamps before.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from kubernetes.aio import client, config
from kubernetes.aio.client.exceptions import ApiException

from varmor.kube import metrics

JSON = dict[str, Any]

#: A 429 is retried this many times, after its Retry-After (as client-go does): under
#: priority and fairness it means "not now", never that the request was wrong.
THROTTLE_RETRIES = 4
MAX_RETRY_AFTER = 10.0  # seconds; a longer Retry-After is capped (the caller's backoff takes over after)

__all__ = [
    "JSON",
    "ApiException",
    "list_all",
    "new_api_client",
    "open_stream",
    "raw_request",
    "throttle_delay",
    "to_dict",
]


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


def _query(query: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    return [(k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in (query or {}).items()]


async def raw_request(
    api_client: client.ApiClient,
    method: str,
    path: str,
    *,
    query: Mapping[str, Any] | None = None,
    body: Any = None,
    content_type: str = "application/json",
    request_timeout: float = 30.0,
    before_send: Callable[[], None] | None = None,
) -> JSON:
    """One API call through the shared ApiClient (auth, TLS), sending and returning the
    API's JSON. The generated model classes drop fields this client does not know (the
    server may be newer) and cost a lot on big lists. Raises ApiException on non-2xx."""
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type
    serialized = await api_client.param_serialize(
        method=method,
        resource_path=path,
        query_params=_query(query),
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    for attempt in range(THROTTLE_RETRIES + 1):
        if before_send is not None:
            before_send()  # before every attempt: a retry after Retry-After is a new send
        response = await api_client.call_api(*serialized, _request_timeout=request_timeout)
        data = await response.read()
        if response.status != 429 or attempt == THROTTLE_RETRIES:
            break
        metrics.API_THROTTLED.inc()
        await asyncio.sleep(throttle_delay(response.getheader("Retry-After")))
    if not 200 <= response.status <= 299:
        raise ApiException(status=response.status, reason=response.reason, body=data.decode("utf-8", "replace"))
    result: JSON = orjson.loads(data) if data else {}
    return result


def throttle_delay(retry_after: str | None, rng: random.Random | None = None) -> float:
    """How long to wait before retrying a 429: its Retry-After (1 s when absent or not a
    number of seconds), capped, and spread by up to half again so a fleet of agents
    throttled at once does not come back in one wave."""
    try:
        seconds = float(retry_after) if retry_after else 1.0
    except ValueError:  # an HTTP date: rare, and the cap would apply anyway
        seconds = 1.0
    seconds = min(max(seconds, 0.0), MAX_RETRY_AFTER)
    spread = rng.random() if rng else random.random()
    return seconds * (1 + 0.5 * spread)


async def open_stream(api_client: client.ApiClient, path: str, *, query: Mapping[str, Any] | None = None) -> Any:
    """A GET whose body is read as it arrives (a watch): the aiohttp response, which the
    caller reads line by line and must `release()`. Raises ApiException on non-2xx."""
    serialized = await api_client.param_serialize(
        method="GET",
        resource_path=path,
        query_params=_query(query),
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    response = await api_client.call_api(*serialized)
    if not 200 <= response.status <= 299:
        data = await response.read()
        raise ApiException(status=response.status, reason=response.reason, body=data.decode("utf-8", "replace"))
    return response.response


async def list_all(api_client: client.ApiClient, path: str, *, page: int = 500) -> list[JSON]:
    """Every item of a list, paginated (a bounded response per request)."""
    items: list[JSON] = []
    cont = ""
    while True:
        query: dict[str, Any] = {"limit": page}
        if cont:
            query["continue"] = cont
        result = await raw_request(api_client, "GET", path, query=query)
        items.extend(result.get("items") or [])
        cont = (result.get("metadata") or {}).get("continue") or ""
        if not cont:
            return items
