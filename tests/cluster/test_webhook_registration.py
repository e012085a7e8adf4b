"""The webhook configurations the leader computes for 10,000 policies, applied to the real
API server: accepted, stored as computed (nothing the server drops or rewrites), and small.

The policies are in-memory objects (registration is a pure function of them); only the
configurations go to the API server. Their clientConfig is a loopback port nobody listens
on, with failurePolicy Ignore, and each is deleted at once: while one exists, a Pod created
elsewhere in the cluster is admitted after a refused connection.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from tests import helpers
from varmor import api
from varmor.admission.registration import Registration, differs, mutating_configuration, validating_configuration
from varmor.certs import pki
from varmor.dev.cluster import free_port
from varmor.kube import paths
from varmor.kube.client import raw_request

pytestmark = pytest.mark.cluster

POLICIES = 10_000


def _policy(i: int, namespace: str, kind: str = "Pod") -> dict[str, Any]:
    return helpers.policy(f"p{i}", namespace, kind, selector={"matchLabels": {"app": f"svc-{i}"}}, profile=f"v-{i}")


# namespace names of the longest kind (63 characters) where the configuration lists them
DISTRIBUTIONS: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "one policy in each of 10,000 namespaces": lambda: [_policy(i, f"{i:05d}-" + "n" * 57) for i in range(POLICIES)],
    "10 policies in each of 1,000 namespaces, four kinds": lambda: [
        _policy(i, f"{i % 1000:04d}-" + "n" * 58, api.TARGET_KINDS[i // 1000 % 4]) for i in range(POLICIES)
    ],
    "all in one namespace": lambda: [_policy(i, "bench") for i in range(POLICIES)],
}


async def _apply(api_client: Any, desired: dict[str, Any]) -> dict[str, Any]:
    """Create the configuration, read it back, delete it; the stored object."""
    kind, name = desired["kind"], desired["metadata"]["name"]
    await raw_request(api_client, "POST", paths.webhook_config_path(kind), body=desired)
    try:
        return await raw_request(api_client, "GET", paths.webhook_config_path(kind, name))
    finally:
        await raw_request(api_client, "DELETE", paths.webhook_config_path(kind, name))


@pytest.mark.parametrize("distribution", list(DISTRIBUTIONS))
async def test_the_configurations_for_ten_thousand_policies_are_accepted(
    api_client: Any, namespace: str, distribution: str
) -> None:
    policies = DISTRIBUTIONS[distribution]()
    reg = Registration(
        name=f"varmor-{namespace}",
        namespace=namespace,
        url=f"https://127.0.0.1:{free_port()}",
        excluded_namespaces=("kube-system", namespace),
    )
    ca = pki.new_ca("registration-test", dt.timedelta(hours=1)).cert_pem
    for desired in (mutating_configuration(reg, policies, ca), validating_configuration(reg, ca)):
        size = len(orjson.dumps(desired))
        assert size < 128 * 1024, (desired["kind"], size)  # far below etcd's 1.5 MiB request limit
        served = await _apply(api_client, desired)
        assert not differs(served, desired), desired["kind"]
