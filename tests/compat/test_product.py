"""The product's core on each compat release, installed from the chart rendered for it
(tests/product.py): the webhook registration is accepted, a policy turns Ready, an
existing Deployment is rolled, admission attaches the profile the way the release takes
it (the beta annotation before 1.30, the field from 1.30) and the API server keeps it,
and the node-report guard holds (varmor's webhook before 1.30, the chart's
ValidatingAdmissionPolicy from 1.30)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from tests import helpers
from tests.helpers import deployment, wait_for
from tests.product import Install, installed, token_kubeconfig
from varmor import api
from varmor.admission.nodereports import NODE_CLAIM, POD_NAME_CLAIM
from varmor.dev.cluster import ControlPlane
from varmor.kube.client import new_api_client

pytestmark = pytest.mark.compat
G, V = api.GROUP, api.VERSION
NODES = ("compat-a", "compat-b")


def has_field(version: str) -> bool:
    return tuple(int(p) for p in version.lstrip("v").split(".")[:2]) >= (1, 30)


def attached(obj: dict[str, Any], pod_spec: dict[str, Any], container: str = "app") -> dict[str, str | None]:
    """Where the profile of `container` is attached: the field and the beta annotation."""
    found = next(c for c in pod_spec["containers"] if c["name"] == container)
    field = ((found.get("securityContext") or {}).get("appArmorProfile") or {}).get("localhostProfile")
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return {"field": field, "annotation": annotations.get(api.K8S_APPARMOR_ANNOTATION_PREFIX + container)}


def expected(version: str, profile: str) -> dict[str, str | None]:
    """Before 1.30 only the annotation; from 1.30 the field, and no annotation varmor added."""
    if has_field(version):
        return {"field": profile, "annotation": None}
    return {"field": None, "annotation": f"localhost/{profile}"}


def web_policy() -> dict[str, Any]:
    """A policy for `app: web` Deployments that rolls the existing ones."""
    rules = {"hardeningRules": ["disallow-write-core-pattern"]}
    return helpers.policy("web", selector={"matchLabels": {"app": "web"}}, enhance=rules, updateExistingWorkloads=True)


def template_of(api_client: Any, dep: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    template = api_client.sanitize_for_serialization(dep.spec.template)
    return template, template["spec"]


async def test_core_set(
    api_client: Any, kubeconfig: str, namespace: str, tmp_path: Path, compat_plane: ControlPlane, crds: list[str]
) -> None:
    version = compat_plane.version
    async with installed(api_client, kubeconfig, namespace, tmp_path, nodes=NODES, kube_version=version) as inst:
        await _registration_is_accepted(api_client, inst)
        await _policy_rolls_and_admission_attaches(api_client, namespace, version)
        await _agents_write_only_their_own_node(api_client, inst, version)


async def _registration_is_accepted(api_client: Any, inst: Install) -> None:
    """The leader fills the chart's two webhook configurations and the API server keeps them."""
    admission = client.AdmissionregistrationV1Api(api_client)

    async def filled() -> bool:
        mutating = await admission.read_mutating_webhook_configuration(inst.release)
        validating = await admission.read_validating_webhook_configuration(inst.release)
        hooks = [*(mutating.webhooks or []), *(validating.webhooks or [])]
        return bool(hooks) and all(h.client_config.ca_bundle for h in hooks)

    await wait_for(filled, timeout=60)


async def _policy_rolls_and_admission_attaches(api_client: Any, install_ns: str, version: str) -> None:
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)
    ns = f"{install_ns}-apps"
    await core.create_namespace({"metadata": {"name": ns}})
    try:
        profile = f"varmor-{ns}-web"
        await apps.create_namespaced_deployment(ns, deployment("web", replicas=1))
        await custom.create_namespaced_custom_object(G, V, ns, "varmorpolicies", web_policy())

        async def ready() -> bool:
            got = await custom.get_namespaced_custom_object(G, V, ns, "varmorpolicies", "web")
            return bool((got.get("status") or {}).get("ready"))

        await wait_for(ready, timeout=60)

        async def rolled() -> dict[str, Any] | None:
            template, spec = template_of(api_client, await apps.read_namespaced_deployment("web", ns))
            return template if attached(template, spec) == expected(version, profile) else None

        template = await wait_for(rolled, timeout=30)
        assert api.RESTARTED_AT_ANNOTATION in template["metadata"]["annotations"]

        fresh = deployment("web-new", {"app": "web", "tier": "new"}, replicas=1)
        created = await apps.create_namespaced_deployment(ns, fresh)
        assert attached(*template_of(api_client, created)) == expected(version, profile)

        # The Pods the controller-manager creates pass admission again; the API server keeps
        # the profile on the stored Pod (from 1.30 it also mirrors the field into the
        # annotation for older kubelets, so a 1.30 Pod may carry both: they must agree).
        async def pod_attachment() -> dict[str, str | None] | None:
            pods = (await core.list_namespaced_pod(ns, label_selector="app=web,tier=new")).items
            if not pods:
                return None
            pod = api_client.sanitize_for_serialization(pods[0])
            return attached(pod, pod["spec"])

        on_pod = await wait_for(pod_attachment, timeout=30)
        if has_field(version):
            assert on_pod["field"] == profile
            assert on_pod["annotation"] in (None, f"localhost/{profile}")
        else:
            assert on_pod == expected(version, profile)
    finally:
        with contextlib.suppress(ApiException):
            await custom.delete_namespaced_custom_object(G, V, ns, "varmorpolicies", "web")
        with contextlib.suppress(ApiException):
            await core.delete_namespace(ns)


async def _agents_write_only_their_own_node(api_client: Any, inst: Install, version: str) -> None:
    """An agent's pod-bound token writes its own node's ArmorNode (the running agents do)
    and is refused another node's: by the webhook before 1.30, by the policy from 1.30."""
    custom = client.CustomObjectsApi(api_client)
    own, other = NODES

    async def reported() -> bool:
        with contextlib.suppress(ApiException):
            got = await custom.get_cluster_custom_object(G, V, "armornodes", own)
            return bool((got.get("status") or {}).get("ready"))
        return False

    await wait_for(reported, timeout=60)
    account = f"{inst.release}-manager"  # allinone: every role runs as the manager's account
    stolen = await token_kubeconfig(api_client, inst, account, f"agent-{own}")
    as_agent = await new_api_client(str(stolen))
    try:
        # Before 1.30 a pod-bound token carries no node claim: what the webhook's pod lookup is for.
        review = await client.AuthenticationV1Api(as_agent).create_self_subject_review({})
        extra = review.status.user_info.extra or {}
        assert extra.get(NODE_CLAIM) == ([own] if has_field(version) else None), extra
        assert extra.get(POD_NAME_CLAIM) == [f"agent-{own}"]
        patch = {"status": {"phase": "Supported", "ready": True}}
        with pytest.raises(ApiException) as refused:
            await client.CustomObjectsApi(as_agent).patch_cluster_custom_object_status(G, V, "armornodes", other, patch)
        assert refused.value.status == 403, refused.value.body
        assert "may write only ArmorNode" in str(refused.value.body)
    finally:
        await as_agent.close()
