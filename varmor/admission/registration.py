"""Desired webhook configurations as a pure function of the policies (no I/O).

Mutating webhook entries exist only for the target kinds that have a policy, with a
namespaceSelector narrowed to the namespaces that have one (all namespaces once a
cluster policy targets the kind) and an objectSelector narrowed to the policies' label
selectors, so the API server calls varmor only for objects some policy can select:
creating any other Pod costs nothing. Policies that select by name (or with an empty
selector) need every object of the kind in their namespaces; selector policies in those
namespaces add nothing. Distinct selectors get an entry each, up to
MAX_SELECTOR_ENTRIES per kind; beyond that one entry per kind takes every object (an
object two entries match is sent twice; the second answer is an idempotent no-op). With
no policies the configuration has no entries, so the API server sends varmor nothing.
kube-system and the install namespace are always excluded, so varmor can never block
its own recovery.

The configuration stays small whatever the number of policies (the API server stores it
in etcd, whose default request limit is 1.5 MiB): a kind's selectors beyond
MAX_SELECTOR_BYTES of JSON also fall back to the one entry, and when the entries would list
more than MAX_LISTED_NAMESPACES namespace names in all, the entry listing the most selects
namespaces by the exclusion list alone (`NotIn` kube-system and the install namespace),
again until they list at most that many. A widened `{}` entry takes every object of its
kind, so it replaces its kind's other entries. Widening only sends varmor more objects
(answered "not selected"), never fewer.

Ephemeral containers are added to running Pods through the `pods/ephemeralcontainers`
subresource (an UPDATE): one more entry sends those in every namespace with a policy of
any kind, whatever the Pod's labels (a workload policy's Pods carry its profile, not its
selector), so that they get the profile too (varmor.admission.ephemeral).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from varmor import api
from varmor.admission.selection import Candidate, candidate_from

NAMESPACE_LABEL = "kubernetes.io/metadata.name"
MAX_SELECTOR_ENTRIES = 8
MAX_SELECTOR_BYTES = 16 * 1024  # a kind's distinct objectSelectors, as JSON
MAX_LISTED_NAMESPACES = 1000  # namespace names in all entries: at most 63 bytes each
MANAGED_LABELS = {api.MANAGED_BY_LABEL: "varmor"}

_RULES = {
    "Pod": ("", "pods", ("CREATE",)),
    "Deployment": ("apps", "deployments", ("CREATE", "UPDATE")),
    "StatefulSet": ("apps", "statefulsets", ("CREATE", "UPDATE")),
    "DaemonSet": ("apps", "daemonsets", ("CREATE", "UPDATE")),
}


EPHEMERAL_WEBHOOK = "ephemeralcontainers.mutate.varmor.org"
EPHEMERAL_RESOURCE = "pods/ephemeralcontainers"


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
    # Accounts whose ArmorNode writes varmor's webhook checks against their node claim
    # (admission.nodereports), where the chart's ValidatingAdmissionPolicy cannot run.
    node_report_accounts: tuple[str, ...] = ()

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


@dataclass(frozen=True)
class Entry:
    """Objects of `kind` whose labels match `selector` (a metav1.LabelSelector; {} matches
    every object), in `namespaces` (None: every namespace) except `also_excluded`."""

    kind: str
    selector: Mapping[str, Any]
    namespaces: frozenset[str] | None
    also_excluded: frozenset[str] = frozenset()


def _object_selector(cand: Candidate) -> dict[str, Any]:
    """The policy's target as an objectSelector: {} when it selects by name."""
    if cand.label_selector is None:
        return {}
    return cand.label_selector.as_dict()


def entries(policies: Iterable[Mapping[str, Any]]) -> list[Entry]:
    """The mutating webhook entries the policies need, per kind (see the module docstring)."""
    groups: dict[str, dict[bytes, tuple[dict[str, Any], set[str] | None]]] = {}
    for policy in policies:
        cand = candidate_from(policy)
        if cand is None:
            continue
        selector = _object_selector(cand)
        by_selector = groups.setdefault(cand.kind, {})
        key = orjson.dumps(selector, option=orjson.OPT_SORT_KEYS)
        _, namespaces = by_selector.setdefault(key, (selector, set()))
        if cand.cluster or namespaces is None:
            by_selector[key] = (selector, None)
        else:
            namespaces.add(cand.namespace)
    out: list[Entry] = []
    for kind, by_selector in sorted(groups.items()):
        out += _kind_entries(kind, by_selector)
    return out


def _kind_entries(kind: str, by_selector: dict[bytes, tuple[dict[str, Any], set[str] | None]]) -> list[Entry]:
    catch_all = by_selector.pop(b"{}", None)
    if catch_all is not None and catch_all[1] is None:
        return [Entry(kind, {}, None)]
    covered = frozenset(catch_all[1] or ()) if catch_all is not None else frozenset()
    out = [Entry(kind, {}, covered)] if catch_all is not None else []
    for _key, (selector, namespaces) in sorted(by_selector.items()):
        if namespaces is None:
            out.append(Entry(kind, selector, None, also_excluded=covered))
        elif namespaces - covered:
            out.append(Entry(kind, selector, frozenset(namespaces - covered)))
    if len(out) <= MAX_SELECTOR_ENTRIES and sum(len(key) for key in by_selector) <= MAX_SELECTOR_BYTES:
        return out
    if any(e.namespaces is None for e in out):
        return [Entry(kind, {}, None)]
    return [Entry(kind, {}, frozenset().union(*(e.namespaces or () for e in out)))]


def _metadata(reg: Registration, owner: Mapping[str, Any] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": reg.name, "labels": dict(MANAGED_LABELS)}
    if owner is not None:
        meta["ownerReferences"] = [dict(owner)]
    return meta


def ephemeral_entry(policies: Iterable[Mapping[str, Any]]) -> Entry | None:
    """Ephemeral containers in every namespace with a policy of any kind (None: no policy)."""
    kinds = scopes(policies)
    if not kinds:
        return None
    if any(v is None for v in kinds.values()):
        return Entry("Pod", {}, None)
    return Entry("Pod", {}, frozenset().union(*(v for v in kinds.values() if v is not None)))


def _listed(entry: Entry, excluded: frozenset[str]) -> int:
    """How many namespace names the entry's namespaceSelector lists beyond the excluded ones."""
    listed = len(entry.also_excluded - excluded)
    return listed + len(entry.namespaces - excluded) if entry.namespaces is not None else listed


def bounded(planned: list[tuple[Entry, bool]], excluded: frozenset[str], limit: int) -> list[tuple[Entry, bool]]:
    """Widen the entries listing the most namespaces until all list at most `limit` (see the
    module docstring). Each step empties one entry's lists, so this ends within len(planned) steps."""
    out = list(planned)
    while sum(_listed(e, excluded) for e, _ in out) > limit:
        i = max(range(len(out)), key=lambda j: _listed(out[j][0], excluded))  # the first of the largest
        entry, for_ephemeral = out[i]
        if for_ephemeral or entry.selector:  # also_excluded goes: an object may be sent twice
            out[i] = (Entry(entry.kind, entry.selector, None), for_ephemeral)
        else:  # every object of the kind everywhere: the kind's other entries add nothing
            whole = (Entry(entry.kind, {}, None), False)
            out = [whole if j == i else p for j, p in enumerate(out) if j == i or p[1] or p[0].kind != entry.kind]
    return out


def mutating_configuration(
    reg: Registration,
    policies: Iterable[Mapping[str, Any]],
    ca_bundle: bytes,
    owner: Mapping[str, Any] | None = None,
    *,
    max_listed_namespaces: int = MAX_LISTED_NAMESPACES,
) -> dict[str, Any]:
    webhooks = []
    excluded = set(reg.excluded_namespaces)
    names: dict[str, int] = {}
    policies = list(policies)
    planned: list[tuple[Entry, bool]] = [(e, False) for e in entries(policies)]
    if (ephemeral := ephemeral_entry(policies)) is not None:
        planned.append((ephemeral, True))
    for entry, for_ephemeral in bounded(planned, frozenset(excluded), max_listed_namespaces):
        group, resource, operations = _RULES[entry.kind]
        if for_ephemeral:
            resource, operations = EPHEMERAL_RESOURCE, ("UPDATE",)
        exprs: list[dict[str, Any]] = [
            {"key": NAMESPACE_LABEL, "operator": "NotIn", "values": sorted(excluded | entry.also_excluded)}
        ]
        if entry.namespaces is not None:
            allowed = sorted(entry.namespaces - excluded)
            if not allowed:
                continue
            exprs.append({"key": NAMESPACE_LABEL, "operator": "In", "values": allowed})
        index = names[resource] = names.get(resource, -1) + 1
        name = f"{resource}.mutate.varmor.org" if index == 0 else f"{resource}-{index}.mutate.varmor.org"
        webhooks.append(
            {
                "name": EPHEMERAL_WEBHOOK if for_ephemeral else name,
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": reg.failure_policy,
                "timeoutSeconds": reg.timeout_seconds,
                "matchPolicy": "Equivalent",
                "reinvocationPolicy": "IfNeeded",
                "clientConfig": reg.client_config("/mutate", ca_bundle),
                "namespaceSelector": {"matchExpressions": exprs},
                "objectSelector": dict(entry.selector),
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
            },
            *_node_report_hooks(reg, ca_bundle),
        ],
    }


def _node_report_hooks(reg: Registration, ca_bundle: bytes) -> list[dict[str, Any]]:
    """The node-report guard's entry: ArmorNode writes by the agent accounts. Fail closed
    (an agent retries its report; a forged one must not slip through an outage)."""
    if not reg.node_report_accounts:
        return []
    users = ", ".join(repr(a) for a in sorted(reg.node_report_accounts))
    return [
        {
            "name": "armornodes.validate.varmor.org",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "timeoutSeconds": reg.timeout_seconds,
            "matchPolicy": "Equivalent",
            "clientConfig": reg.client_config("/validate", ca_bundle),
            "rules": [
                {
                    "apiGroups": [api.GROUP],
                    "apiVersions": [api.VERSION],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": [api.ARMOR_NODE.plural, f"{api.ARMOR_NODE.plural}/status"],
                    "scope": "Cluster",
                },
                {
                    "apiGroups": [api.GROUP],
                    "apiVersions": [api.VERSION],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": [api.ARMOR_BEHAVIOR.plural],
                    "scope": "Namespaced",
                },
            ],
            "matchConditions": [{"name": "agent-accounts", "expression": f"request.userInfo.username in [{users}]"}],
        }
    ]


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
