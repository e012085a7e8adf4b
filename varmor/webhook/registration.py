"""Desired webhook configurations as a pure function of the policies (no I/O).

One mutating webhook entry per target kind that has a policy, each with a
namespaceSelector narrowed to the namespaces that have one (all namespaces once a
cluster policy targets the kind). With no policies the configuration has no entries,
so the API server sends varmor nothing. kube-system and the install namespace are
always excluded, so varmor can never block its own recovery.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from varmor import api
from varmor.webhook.planner import candidate_from

NAMESPACE_LABEL = "kubernetes.io/metadata.name"
MANAGED_LABELS = {api.MANAGED_BY_LABEL: "varmor"}

_RULES = {
    "Pod": ("", "pods", ("CREATE",)),
    "Deployment": ("apps", "deployments", ("CREATE", "UPDATE")),
    "StatefulSet": ("apps", "statefulsets", ("CREATE", "UPDATE")),
    "DaemonSet": ("apps", "daemonsets", ("CREATE", "UPDATE")),
}


@dataclass(frozen=True)
class Registration:
    name: str
    namespace: str
    service: str = "varmor-webhook"
    service_port: int = 443
    url: str = ""
    failure_policy: str = "Ignore"
    timeout_seconds: int = 5
    excluded_namespaces: tuple[str, ...] = ("kube-system",)

    def client_config(self, path: str, ca_bundle: bytes) -> dict[str, Any]:
        cfg: dict[str, Any] = {"caBundle": base64.b64encode(ca_bundle).decode()}
        if self.url:
            cfg["url"] = f"{self.url}{path}"
        else:
            svc = {"namespace": self.namespace, "name": self.service, "path": path, "port": self.service_port}
            cfg["service"] = svc
        return cfg


def scopes(policies: Iterable[Mapping[str, Any]]) -> dict[str, frozenset[str] | None]:
    """Per target kind: the namespaces with a policy, or None for every namespace."""
    out: dict[str, set[str] | None] = {}
    for policy in policies:
        cand = candidate_from(policy)
        if cand is None:
            continue
        if cand.cluster:
            out[cand.kind] = None
        elif cand.kind not in out:
            out[cand.kind] = {cand.namespace}
        else:
            current = out[cand.kind]
            if current is not None:
                current.add(cand.namespace)
    return {k: (None if v is None else frozenset(v)) for k, v in out.items()}


def _metadata(reg: Registration, owner: Mapping[str, Any] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": reg.name, "labels": dict(MANAGED_LABELS)}
    if owner is not None:
        meta["ownerReferences"] = [dict(owner)]
    return meta


def mutating_configuration(
    reg: Registration,
    policies: Iterable[Mapping[str, Any]],
    ca_bundle: bytes,
    owner: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    webhooks = []
    excluded = sorted(set(reg.excluded_namespaces))
    for kind, namespaces in sorted(scopes(policies).items()):
        group, resource, operations = _RULES[kind]
        exprs: list[dict[str, Any]] = [{"key": NAMESPACE_LABEL, "operator": "NotIn", "values": excluded}]
        if namespaces is not None:
            allowed = sorted(namespaces - set(excluded))
            if not allowed:
                continue
            exprs.append({"key": NAMESPACE_LABEL, "operator": "In", "values": allowed})
        webhooks.append(
            {
                "name": f"{resource}.mutate.varmor.org",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": reg.failure_policy,
                "timeoutSeconds": reg.timeout_seconds,
                "matchPolicy": "Equivalent",
                "reinvocationPolicy": "IfNeeded",
                "clientConfig": reg.client_config("/mutate", ca_bundle),
                "namespaceSelector": {"matchExpressions": exprs},
                "objectSelector": {},
                "rules": [
                    {
                        "apiGroups": [group],
                        "apiVersions": ["v1"],
                        "operations": list(operations),
                        "resources": [resource],
                        "scope": "Namespaced",
                    }
                ],
            }
        )
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": _metadata(reg, owner),
        "webhooks": webhooks,
    }


def validating_configuration(
    reg: Registration, ca_bundle: bytes, owner: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": _metadata(reg, owner),
        "webhooks": [
            {
                "name": "policies.validate.varmor.org",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": reg.failure_policy,
                "timeoutSeconds": reg.timeout_seconds,
                "matchPolicy": "Equivalent",
                "clientConfig": reg.client_config("/validate", ca_bundle),
                "namespaceSelector": {},
                "objectSelector": {},
                "rules": [
                    {
                        "apiGroups": [api.GROUP],
                        "apiVersions": [api.VERSION],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": [api.VARMOR_POLICY.plural, api.VARMOR_CLUSTER_POLICY.plural],
                        "scope": "*",
                    }
                ],
            }
        ],
    }


def _subset(desired: Any, current: Any) -> bool:
    """`desired` is contained in `current` (which may carry server-side defaults)."""
    if isinstance(desired, Mapping):
        return isinstance(current, Mapping) and all(_subset(v, current.get(k)) for k, v in desired.items())
    if isinstance(desired, list):
        return (
            isinstance(current, list)
            and len(desired) == len(current)
            and all(_subset(d, c) for d, c in zip(desired, current, strict=True))
        )
    return bool(desired == current)


def differs(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """True if `current` (as read back, with server defaults) does not match `desired`."""
    cm, dm = current.get("metadata") or {}, desired.get("metadata") or {}
    if (cm.get("ownerReferences") or []) != (dm.get("ownerReferences") or []):
        return True
    if not _subset(dm.get("labels") or {}, cm.get("labels") or {}):
        return True
    return not _subset(desired.get("webhooks") or [], current.get("webhooks") or [])
