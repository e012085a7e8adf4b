"""API paths, built in one place: every name and namespace is URL-quoted.

The API server treats a path segment literally, so an unquoted name with `/` or `?`
in it would address another object. varmor's names come from users (policy names,
namespaces), so no caller builds a path by hand.
"""

from __future__ import annotations

from urllib.parse import quote

from varmor import api

ADMISSION = "/apis/admissionregistration.k8s.io/v1"
_WORKLOADS = {
    "Pod": ("/api/v1", "pods"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "StatefulSet": ("/apis/apps/v1", "statefulsets"),
    "DaemonSet": ("/apis/apps/v1", "daemonsets"),
}


def _seg(value: str) -> str:
    return quote(value, safe="")


def resource_path(base: str, plural: str, namespace: str | None = None, name: str | None = None) -> str:
    """`base[/namespaces/NS]/plural[/NAME]`: the one builder the others use."""
    path = base
    if namespace:
        path += f"/namespaces/{_seg(namespace)}"
    path += f"/{plural}"
    if name:
        path += f"/{_seg(name)}"
    return path


def custom_path(resource: api.Resource, namespace: str | None = None, name: str | None = None) -> str:
    """A resource `api` describes: varmor's custom kinds, and the core kinds varmor watches
    (collection or object); cluster-scoped kinds ignore `namespace`."""
    base = "/api/v1" if resource.api_version == "v1" else f"/apis/{resource.api_version}"
    return resource_path(base, resource.plural, namespace if resource.namespaced else None, name)


def policy_path(kind: str, namespace: str | None, name: str) -> str:
    """A VarmorPolicy or VarmorClusterPolicy by kind."""
    resource = api.VARMOR_CLUSTER_POLICY if kind == api.VARMOR_CLUSTER_POLICY.kind else api.VARMOR_POLICY
    return custom_path(resource, namespace, name)


def workload_path(kind: str, namespace: str | None = None, name: str | None = None) -> str:
    """Pods and the apps/v1 workload kinds varmor targets."""
    base, plural = _WORKLOADS[kind]
    return resource_path(base, plural, namespace, name)


def core_path(plural: str, namespace: str | None = None, name: str | None = None) -> str:
    """A core/v1 resource (events, nodes, secrets, namespaces)."""
    return resource_path("/api/v1", plural, namespace, name)


def webhook_config_path(kind: str, name: str | None = None) -> str:
    plural = "mutatingwebhookconfigurations" if kind.startswith("Mutating") else "validatingwebhookconfigurations"
    return resource_path(ADMISSION, plural, None, name)


def cluster_role_path(name: str) -> str:
    return resource_path("/apis/rbac.authorization.k8s.io/v1", "clusterroles", None, name)


def lease_path(namespace: str, name: str | None = None) -> str:
    return resource_path("/apis/coordination.k8s.io/v1", "leases", namespace, name)
