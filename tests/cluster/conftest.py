"""Cluster-test fixtures shared by every component: varmor's CRDs, installed once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

CRD_DIR = Path(__file__).resolve().parents[2] / "chart" / "crds"


async def install_crds(api_client: Any, crd_dir: Path = CRD_DIR, timeout: float = 60.0) -> list[str]:
    """Create or replace every CRD in `crd_dir` and wait until all are Established.

    Idempotent: an existing CRD is replaced with the checked-in one (so a session that
    reuses a dev cluster picks up schema changes)."""
    from kubernetes.aio import client
    from kubernetes.aio.client.exceptions import ApiException

    ext = client.ApiextensionsV1Api(api_client)
    names = []
    for path in sorted(crd_dir.glob("*.yaml")):
        body = yaml.safe_load(path.read_text(encoding="utf-8"))
        name = body["metadata"]["name"]
        names.append(name)
        try:
            await ext.create_custom_resource_definition(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
            for _ in range(10):
                current = await ext.read_custom_resource_definition(name)
                body["metadata"]["resourceVersion"] = current.metadata.resource_version
                try:
                    await ext.replace_custom_resource_definition(name, body)
                    break
                except ApiException as conflict:
                    if conflict.status != 409:
                        raise
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for name in names:
        while True:
            crd = await ext.read_custom_resource_definition(name)
            conditions = {c.type: c.status for c in (crd.status.conditions or [])}
            if conditions.get("Established") == "True":
                break
            if loop.time() > deadline:
                raise AssertionError(f"CRD {name} not Established: {conditions}")
            await asyncio.sleep(0.1)
    # Established means served; give discovery of the new kinds a moment to settle by
    # listing each one until it answers.
    custom = client.CustomObjectsApi(api_client)
    for path in sorted(crd_dir.glob("*.yaml")):
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))["spec"]
        while True:
            try:
                await custom.list_cluster_custom_object(
                    spec["group"], spec["versions"][0]["name"], spec["names"]["plural"]
                )
                break
            except ApiException as exc:
                if exc.status not in (404, 429, 503) or loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)
    return names


@pytest.fixture(scope="session")
async def crds(kubeconfig: str) -> list[str]:
    """All four varmor CRDs from chart/crds/, installed and Established (once per session)."""
    from varmor.kube import new_api_client

    client = await new_api_client(kubeconfig)
    try:
        return await install_crds(client)
    finally:
        await client.close()
