"""The end state every fault test asserts once varmor recovered on its own.

For the policies of one namespace: each is Ready at its current generation; there is
exactly one ArmorProfile per policy and none other (no duplicate, no orphan); every node's
load report proves each profile loaded at the ArmorProfile's sha256 and no failure; every
node's kernel holds exactly those profiles. And the user's side of a fault: a request the API
server dropped is retried, as kubectl's user would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from tests.helpers import armor_node_maps, wait_for
from tests.product import Install
from varmor import api

G, V = api.GROUP, api.VERSION
T = TypeVar("T")


async def as_user(call: Callable[[], Awaitable[T]], *, timeout: float = 120.0) -> T | None:
    """Send one request the way a user does while the API server is down: again until it
    is answered. A create whose response was lost answers 409 the second time, a delete
    404: both mean it happened (None)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await call()
        except ApiException as exc:
            if exc.status in (404, 409):
                return None
            if exc.status not in (429, 500, 503, 504) or loop.time() > deadline:
                raise
        except (TimeoutError, aiohttp.ClientError, OSError):
            if loop.time() > deadline:
                raise
        await asyncio.sleep(0.2)


def profile_name(namespace: str, policy: str) -> str:
    return f"varmor-{namespace}-{policy}"


async def converged(api_client: Any, install: Install, namespace: str, policies: set[str]) -> str:
    """'' once the end state holds for `namespace`, else what is still wrong (for the
    failure message of `wait_for`)."""
    custom = client.CustomObjectsApi(api_client)
    listed = (await custom.list_namespaced_custom_object(G, V, namespace, "varmorpolicies"))["items"]
    names = {p["metadata"]["name"] for p in listed}
    if names != policies:
        return f"policies {sorted(names)} != {sorted(policies)}"
    for pol in listed:
        status = pol.get("status") or {}
        if not status.get("ready") or status.get("observedGeneration") != pol["metadata"]["generation"]:
            return f"policy {pol['metadata']['name']} not Ready at its generation: {status.get('conditions')}"
    profiles = (await custom.list_namespaced_custom_object(G, V, namespace, "armorprofiles"))["items"]
    want = {profile_name(namespace, p) for p in policies}
    have = [ap["metadata"]["name"] for ap in profiles]
    if sorted(have) != sorted(want):
        return f"ArmorProfiles {sorted(have)} != {sorted(want)}"
    sha = {ap["metadata"]["name"]: ap["spec"]["profile"]["sha256"] for ap in profiles}
    prefix = f"varmor-{namespace}-"
    for node in install.nodes:
        status = await armor_node_maps(api_client, node) or {}
        loaded = {n: p["sha256"] for n, p in (status.get("profiles") or {}).items() if n.startswith(prefix)}
        failed = {n: f["message"] for n, f in (status.get("failures") or {}).items() if n.startswith(prefix)}
        if loaded != sha or failed:
            return f"{node} reports {loaded} (failures {failed}), want {sha}"
        kernel = install.kernels[node]
        await asyncio.to_thread(kernel.settle)
        in_kernel = {n for n in kernel.top_level() if n.startswith(prefix)}
        if in_kernel != want:
            return f"{node}'s kernel holds {sorted(in_kernel)}, want {sorted(want)}"
    return ""


async def wait_converged(
    api_client: Any, install: Install, namespace: str, policies: set[str], *, timeout: float = 120.0
) -> None:
    last = ""

    async def done() -> bool:
        nonlocal last
        last = await converged(api_client, install, namespace, policies)
        return not last

    try:
        await wait_for(done, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"varmor did not converge: {last}\n{install.logs()}") from exc
