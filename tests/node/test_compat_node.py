"""A 1.29 node under an API server upgraded to 1.30: its kubelet honours the beta
annotation varmor writes on 1.29 (the pod runs under varmor's profile), keeps running
pods confined while the API server is replaced, and runs the pods admitted after the
upgrade (the field plus the matching annotation, which a 1.29 kubelet reads) confined too."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes.aio import client

from tests import helpers
from tests.compat.conftest import start_plane, stop_plane
from tests.helpers import install_crds_with, wait_for
from tests.node.conftest import node_ready, running_node
from tests.node.test_node import G, V, container_id, label_of, policy_ready, running_pod, workload
from varmor import api
from varmor.kube.client import new_api_client

pytestmark = pytest.mark.node
OLD, NEW = "v1.29.15", "v1.30.14"


async def test_a_1_29_kubelet_keeps_pods_confined_across_the_api_server_upgrade() -> None:
    plane = start_plane(OLD)
    assert plane.state is not None
    api_client = await new_api_client(plane.state.kubeconfig)
    tmp = Path(tempfile.mkdtemp(prefix="varmor-node-old-"))
    try:
        await install_crds_with(plane.state.kubeconfig)
        async with running_node(api_client, plane.state, plane.state.kubeconfig, tmp, kube_version=OLD) as node:
            await _across_the_upgrade(api_client, plane, node)
    finally:
        await api_client.close()
        stop_plane(plane)
        shutil.rmtree(tmp, ignore_errors=True)


async def _across_the_upgrade(api_client: Any, plane: Any, node: Any) -> None:
    core, apps, custom = client.CoreV1Api(api_client), client.AppsV1Api(api_client), client.CustomObjectsApi(api_client)
    ns = f"n-{uuid.uuid4().hex[:8]}"
    await core.create_namespace({"metadata": {"name": ns}})
    profile = f"varmor-{ns}-web"
    annotation = api.K8S_APPARMOR_ANNOTATION_PREFIX + "app"
    rules = {"hardeningRules": ["disallow-access-kallsyms"]}
    await custom.create_namespaced_custom_object(G, V, ns, "varmorpolicies", helpers.policy("web", enhance=rules))
    await policy_ready(custom, ns, "web")
    await apps.create_namespaced_deployment(ns, workload("web", "exec sleep 3600"))
    before = await running_pod(core, ns, "web")
    stored = api_client.sanitize_for_serialization(before)
    assert stored["metadata"]["annotations"][annotation] == f"localhost/{profile}"
    assert "appArmorProfile" not in (stored["spec"]["containers"][0].get("securityContext") or {})
    cid = container_id(before)
    assert label_of(node, cid) == f"{profile} (enforce)"

    started = time.monotonic()
    plane.upgrade_apiserver(NEW)
    await wait_for(lambda: node_ready(core), timeout=120, interval=1.0, what="the 1.29 node Ready under 1.30")
    node.timings["API server upgrade -> node Ready again"] = time.monotonic() - started
    again = await core.read_namespaced_pod(before.metadata.name, ns)
    assert container_id(again) == cid
    assert label_of(node, cid) == f"{profile} (enforce)"

    restart = {"spec": {"template": {"metadata": {"annotations": {"test/restartedAt": "after-upgrade"}}}}}
    await apps.patch_namespaced_deployment("web", ns, restart)
    after = await running_pod(core, ns, "web", not_in={before.metadata.name})
    stored = api_client.sanitize_for_serialization(after)
    assert stored["metadata"]["annotations"][annotation] == f"localhost/{profile}"
    assert stored["spec"]["containers"][0]["securityContext"]["appArmorProfile"] == {
        "type": "Localhost",
        "localhostProfile": profile,
    }
    assert label_of(node, container_id(after)) == f"{profile} (enforce)"
