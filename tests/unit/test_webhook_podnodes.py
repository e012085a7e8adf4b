"""The pod lookup of the node-report guard refuses malformed claims and bounds itself
before any request (what reaches the API server is proven in tests/compat)."""

from __future__ import annotations

import pytest
from kubernetes.aio import client

from varmor.admission.nodereports import PodClaim
from varmor.webhook.podnodes import LookupsBusyError, PodNodes

UID = "0b7c3c1e-3f7d-4a52-9b1e-2f6a1c9d8e77"


@pytest.mark.parametrize(
    "claim",
    [
        PodClaim("varmor", "..", UID),
        PodClaim("varmor", "Agent-X", UID),
        PodClaim("varmor", "a/b", UID),
        PodClaim("varmor", "agent-x", "not-a-uid"),
        PodClaim("varmor", "agent-x", UID.upper()),
    ],
)
async def test_a_malformed_claim_names_no_node_and_costs_no_request(claim: PodClaim) -> None:
    nodes = PodNodes(client.ApiClient(), concurrency=0)  # any request would raise LookupsBusyError
    assert await nodes.node_of(claim) == ""


async def test_lookups_beyond_the_bound_are_refused_at_once() -> None:
    nodes = PodNodes(client.ApiClient(), concurrency=0)
    with pytest.raises(LookupsBusyError):
        await nodes.node_of(PodClaim("varmor", "agent-x", UID))
