"""Install varmor's CRDs into a cluster: used by `varmor dev up` and the cluster tests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from varmor.dev.paths import REPO_ROOT

CRD_DIR = REPO_ROOT / "chart" / "crds"


async def install_crds(api_client: Any, crd_dir: Path = CRD_DIR, timeout: float = 60.0) -> list[str]:
    """Create or replace every CRD in `crd_dir` and wait until all are Established and served.

    Idempotent: an existing CRD is replaced with the checked-in one (so a session that
    reuses a dev cluster picks up schema changes)."""
    ext = client.ApiextensionsV1Api(api_client)
    bodies = [yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(crd_dir.glob("*.yaml"))]
    names = []
    for body in bodies:
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
                raise TimeoutError(f"CRD {name} not Established: {conditions}")
            await asyncio.sleep(0.1)
    # Established means accepted; list each kind until discovery serves it.
    custom = client.CustomObjectsApi(api_client)
    for body in bodies:
        spec = body["spec"]
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
