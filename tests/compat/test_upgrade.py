"""An API server upgraded from 1.29 to 1.30 under a running varmor: admission switches
from the beta annotation to the field without a restart (keeping the annotation beside it,
in agreement, while this varmor runs), and workloads admitted before the upgrade
(annotation only) still start, with the field added to match the annotation (the API
server refuses a pod whose annotation and field disagree)."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes.aio import client

from tests.compat.conftest import start_plane, stop_plane
from tests.compat.test_product import attached, template_of, web_policy
from tests.helpers import deployment, install_crds_with, wait_for
from tests.product import installed
from varmor import api
from varmor.kube.client import new_api_client

pytestmark = pytest.mark.compat
G, V = api.GROUP, api.VERSION
OLD, NEW = "v1.29.15", "v1.30.14"


async def test_admission_follows_an_api_server_upgrade_from_1_29_to_1_30(tmp_path: Path) -> None:
    plane = start_plane(OLD)
    try:
        assert plane.state is not None
        api_client = await new_api_client(plane.state.kubeconfig)
        try:
            await install_crds_with(plane.state.kubeconfig)
            await _upgrade(plane, api_client, tmp_path)
        finally:
            await api_client.close()
    finally:
        stop_plane(plane)


async def _upgrade(plane: Any, api_client: Any, tmp_path: Path) -> None:
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    install_ns, ns = f"varmor-{uuid.uuid4().hex[:8]}", f"apps-{uuid.uuid4().hex[:8]}"
    for name in (install_ns, ns):
        await core.create_namespace({"metadata": {"name": name}})
    assert plane.state is not None
    async with installed(
        api_client,
        plane.state.kubeconfig,
        install_ns,
        tmp_path,
        nodes=("upgrade-a",),
        kube_version=OLD,
        extra_args=["--server-version-interval=0.5"],
    ):
        profile = f"varmor-{ns}-web"
        annotation = {"field": None, "annotation": f"localhost/{profile}"}
        await apps.create_namespaced_deployment(ns, deployment("web", replicas=1))
        await custom.create_namespaced_custom_object(G, V, ns, "varmorpolicies", web_policy())

        async def rolled_with_annotation() -> bool:
            return attached(*template_of(api_client, await apps.read_namespaced_deployment("web", ns))) == annotation

        await wait_for(rolled_with_annotation, timeout=60)

        plane.upgrade_apiserver(NEW)
        version = await client.VersionApi(api_client).get_code()
        assert version.git_version == NEW

        # New admissions switch to the field once varmor has re-read the release, and keep
        # the matching annotation while this varmor runs: an HA control plane may still
        # route some requests to a 1.29 API server, which drops the field. (A dry run
        # passes admission without creating anything.)
        both = {"field": profile, "annotation": f"localhost/{profile}"}

        async def admitted_with_field() -> bool:
            dry = await apps.create_namespaced_deployment(
                ns, deployment("web-new", {"app": "web", "tier": "new"}), dry_run="All"
            )
            return attached(*template_of(api_client, dry)) == both

        await wait_for(admitted_with_field, timeout=60)

        # The Deployment rolled under 1.29 restarts: its new Pod comes out of admission
        # with the field matching the annotation it already had, and is stored.
        restart = {"spec": {"template": {"metadata": {"annotations": {"test/restartedAt": "after-upgrade"}}}}}
        await apps.patch_namespaced_deployment("web", ns, restart)

        async def restarted_pod() -> dict[str, Any] | None:
            pods = (await core.list_namespaced_pod(ns, label_selector="app=web")).items
            for pod in pods:
                body = api_client.sanitize_for_serialization(pod)
                if body["metadata"].get("annotations", {}).get("test/restartedAt") == "after-upgrade":
                    return body
            return None

        pod = await wait_for(restarted_pod, timeout=60)
        assert attached(pod, pod["spec"]) == both
        with contextlib.suppress(Exception):
            await custom.delete_namespaced_custom_object(G, V, ns, "varmorpolicies", "web")
