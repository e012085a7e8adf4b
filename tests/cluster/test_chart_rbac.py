"""The chart's rendered manifests apply to the real API server, and its RBAC gives each
role what it needs and nothing beyond it (proven by impersonating the service accounts)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from varmor.dev.chart import is_hook, render

pytestmark = pytest.mark.cluster


async def apply(api_client: Any, obj: dict[str, Any]) -> None:
    """Create one rendered object with the dynamic-free typed APIs (enough kinds for the chart)."""
    kind, ns = obj["kind"], obj["metadata"].get("namespace")
    core, apps, rbac = (
        client.CoreV1Api(api_client),
        client.AppsV1Api(api_client),
        client.RbacAuthorizationV1Api(api_client),
    )
    policy, batch = client.PolicyV1Api(api_client), client.BatchV1Api(api_client)
    creators = {
        "ServiceAccount": lambda: core.create_namespaced_service_account(ns, obj),
        "Service": lambda: core.create_namespaced_service(ns, obj),
        "DaemonSet": lambda: apps.create_namespaced_daemon_set(ns, obj),
        "Deployment": lambda: apps.create_namespaced_deployment(ns, obj),
        "PodDisruptionBudget": lambda: policy.create_namespaced_pod_disruption_budget(ns, obj),
        "Job": lambda: batch.create_namespaced_job(ns, obj),
        "Role": lambda: rbac.create_namespaced_role(ns, obj),
        "RoleBinding": lambda: rbac.create_namespaced_role_binding(ns, obj),
        "ClusterRole": lambda: rbac.create_cluster_role(obj),
        "ClusterRoleBinding": lambda: rbac.create_cluster_role_binding(obj),
    }
    await creators[kind]()


@pytest.fixture
async def installed(api_client: Any, namespace: str) -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    release = f"varmor-{namespace}"
    objects = render({"topology": "split"}, namespace=namespace, release=release)
    for obj in objects:
        await apply(api_client, obj)
    try:
        yield release, objects
    finally:
        rbac = client.RbacAuthorizationV1Api(api_client)
        for obj in objects:
            try:
                if obj["kind"] == "ClusterRole":
                    await rbac.delete_cluster_role(obj["metadata"]["name"])
                elif obj["kind"] == "ClusterRoleBinding":
                    await rbac.delete_cluster_role_binding(obj["metadata"]["name"])
            except ApiException as exc:
                if exc.status != 404:
                    raise


async def test_every_rendered_object_applies(installed: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = installed
    kinds = {o["kind"] for o in objects}
    assert {"DaemonSet", "Deployment", "ClusterRole", "Role", "Service", "Job"} <= kinds
    assert any(is_hook(o) for o in objects)


async def can(
    api_client: Any,
    user: str,
    verb: str,
    resource: str,
    *,
    group: str = "",
    namespace: str = "",
    name: str = "",
    subresource: str = "",
) -> bool:
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user,
            "groups": [
                "system:serviceaccounts",
                f"system:serviceaccounts:{user.split(':')[2]}",
                "system:authenticated",
            ],
            "resourceAttributes": {
                "verb": verb,
                "resource": resource,
                "group": group,
                "namespace": namespace,
                "name": name,
                "subresource": subresource,
            },
        },
    }
    result = await client.AuthorizationV1Api(api_client).create_subject_access_review(review)
    return bool(result.status.allowed)


Access = tuple[str, str, str, str, str, str]  # verb, resource, group, namespace, name, subresource


async def assert_access(api_client: Any, sa: str, allowed: list[Access], denied: list[Access]) -> None:
    """Every `allowed` request is authorized for `sa`, every `denied` one is refused."""
    for expected, requests in ((True, allowed), (False, denied)):
        for verb, res, group, ns, name, sub in requests:
            got = await can(api_client, sa, verb, res, group=group, namespace=ns, name=name, subresource=sub)
            assert got is expected, (sa, verb, res, group, ns, name, sub)


async def test_manager_can_do_its_job_and_nothing_more(
    api_client: Any, namespace: str, installed: tuple[str, list[dict[str, Any]]]
) -> None:
    release, _ = installed
    sa = f"system:serviceaccount:{namespace}:{release}-manager"
    crd = "crd.varmor.org"
    allowed: list[Access] = [
        ("watch", "varmorpolicies", crd, "other-ns", "", ""),
        ("patch", "varmorpolicies", crd, "other-ns", "p", "status"),
        ("create", "armorprofiles", crd, "other-ns", "", ""),
        ("delete", "armorprofiles", crd, "other-ns", "x", ""),
        ("list", "armornodes", crd, "", "", ""),
        ("patch", "deployments", "apps", "other-ns", "web", ""),
        ("create", "mutatingwebhookconfigurations", "admissionregistration.k8s.io", "", "", ""),
        ("update", "mutatingwebhookconfigurations", "admissionregistration.k8s.io", "", release, ""),
        ("update", "leases", "coordination.k8s.io", namespace, f"{release}-leader", ""),
        ("get", "secrets", "", namespace, f"{release}-webhook-tls", ""),
    ]
    denied: list[Access] = [
        ("update", "varmorpolicies", crd, "other-ns", "p", ""),  # never the user's spec
        ("patch", "armornodes", crd, "", "node-1", "status"),  # the agents' job
        ("delete", "pods", "", "other-ns", "p", ""),  # rollouts never delete pods
        ("update", "deployments", "apps", "other-ns", "web", ""),
        ("delete", "mutatingwebhookconfigurations", "admissionregistration.k8s.io", "", "someone-elses", ""),
        ("get", "secrets", "", namespace, "other-secret", ""),
        ("get", "secrets", "", "kube-system", f"{release}-webhook-tls", ""),
        ("update", "leases", "coordination.k8s.io", namespace, "other-lease", ""),
        ("create", "clusterrolebindings", "rbac.authorization.k8s.io", "", "", ""),
    ]
    await assert_access(api_client, sa, allowed, denied)


async def test_agent_can_do_its_job_and_nothing_more(
    api_client: Any, namespace: str, installed: tuple[str, list[dict[str, Any]]]
) -> None:
    release, _ = installed
    sa = f"system:serviceaccount:{namespace}:{release}-agent"
    crd = "crd.varmor.org"
    allowed: list[Access] = [
        ("watch", "armorprofiles", crd, "", "", ""),
        ("create", "armornodes", crd, "", "", ""),
        ("patch", "armornodes", crd, "", "node-1", "status"),
        ("get", "nodes", "", "", "node-1", ""),
        ("create", "events", "", "other-ns", "", ""),
    ]
    denied: list[Access] = [
        ("create", "armorprofiles", crd, "other-ns", "", ""),
        ("list", "varmorpolicies", crd, "", "", ""),
        ("list", "secrets", "", namespace, "", ""),
        ("get", "secrets", "", namespace, f"{release}-webhook-tls", ""),
        ("patch", "deployments", "apps", "other-ns", "web", ""),
        ("create", "mutatingwebhookconfigurations", "admissionregistration.k8s.io", "", "", ""),
        ("list", "pods", "", "", "", ""),
    ]
    await assert_access(api_client, sa, allowed, denied)


async def test_impersonated_manager_is_refused_by_the_real_api(
    api_client: Any, kubeconfig: str, namespace: str, installed: tuple[str, list[dict[str, Any]]]
) -> None:
    """Beyond review answers: a real request made as the manager's account is refused."""
    from varmor.kube.client import new_api_client

    release, _ = installed
    impersonating = await new_api_client(kubeconfig)
    impersonating.set_default_header("Impersonate-User", f"system:serviceaccount:{namespace}:{release}-manager")
    try:
        core = client.CoreV1Api(impersonating)
        with pytest.raises(ApiException) as refused:
            await core.list_namespaced_secret("kube-system")
        assert refused.value.status == 403
        lease = {"metadata": {"name": f"{release}-leader"}, "spec": {"holderIdentity": "x"}}
        created = await client.CoordinationV1Api(impersonating).create_namespaced_lease(namespace, lease)
        assert created.metadata.name == f"{release}-leader"
    finally:
        await impersonating.close()
