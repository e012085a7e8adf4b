"""CustomResourceDefinitions for varmor's four kinds, generated from the models.

Pure: `crds()` returns plain dicts. The schemas come from `varmor.models` (msgspec's JSON
Schema, turned into a Kubernetes structural schema by `structural`), so the types the code
decodes into and the validation the API server applies cannot drift apart; this module adds
only what is not a field: names, scope, printer columns, subresources.

Validation lives in the schema wherever the API server can check it, so bad policies are
rejected even when varmor is down (vArmor's CRDs have no enums, no defaults and no CEL):
enums and defaults for every closed set and boolean switch, CEL for target name XOR
selector and immutability, and rule IDs checked per category against the catalog (see
`varmor.models.policy`).
"""

from __future__ import annotations

import typing
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec

from varmor import api
from varmor.models import KINDS

JSON = dict[str, Any]

# Key order in the output, so the YAML reads like a hand-written schema (and stays stable):
# what a node is, then its constraints, its children, then the Kubernetes extensions.
_KEY_ORDER = (
    "type",
    "description",
    "default",
    "nullable",
    "enum",
    "maxLength",
    "minLength",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "properties",
    "additionalProperties",
    "items",
    "maxItems",
    "minItems",
    "required",
    "x-kubernetes-validations",
    "x-kubernetes-map-type",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
)
_INT_KEY_ORDER = ("type", "format", "minimum", "maximum", "description")
# Kubernetes fixes the schema of the envelope: no defaults, and `metadata` only `type: object`.
_ENVELOPE = ("apiVersion", "kind")


# -- msgspec JSON Schema -> Kubernetes structural schema ------------------------------
def _literal_orders(tp: Any) -> dict[frozenset[Any], tuple[Any, ...]]:
    """Every Literal's values in declaration order, keyed by value set. msgspec sorts enum
    values; the declared order is meaningful (True, False, Unknown) and shows in `kubectl
    explain`, so `structural` restores it."""
    orders: dict[frozenset[Any], tuple[Any, ...]] = {}
    seen: set[type] = set()

    def walk(t: Any) -> None:
        if typing.get_origin(t) is typing.Literal:
            values = typing.get_args(t)
            if orders.setdefault(frozenset(values), values) != values:
                raise ValueError(f"two Literal types list {sorted(values)} in different orders")
            return
        if isinstance(t, type) and issubclass(t, msgspec.Struct):
            if t not in seen:
                seen.add(t)
                for hint in typing.get_type_hints(t, include_extras=True).values():
                    walk(hint)
            return
        for arg in typing.get_args(t):
            if not isinstance(arg, msgspec.Meta):
                walk(arg)

    walk(tp)
    return orders


def _ordered(node: JSON) -> JSON:
    order = _INT_KEY_ORDER if node.get("type") == "integer" else _KEY_ORDER
    known = {k: node[k] for k in order if k in node}
    return {**known, **{k: v for k, v in node.items() if k not in known}}


def _convert(
    node: Mapping[str, Any], defs: Mapping[str, JSON], orders: Mapping[frozenset[Any], tuple[Any, ...]]
) -> JSON:
    out = dict(node)
    ref = out.pop("$ref", None)
    if ref is not None:
        # Inline the component; what the use site says (description, CEL, ...) wins.
        out = {**defs[ref.rsplit("/", 1)[-1]], **out}
        return _convert(out, defs, orders)
    members = out.pop("anyOf", None)
    if members is not None:
        # Optional[T] is the only union a structural schema can express (`nullable`).
        present = [m for m in members if m.get("type") != "null"]
        if len(present) != 1:
            raise ValueError(f"a structural schema cannot express the union {members}")
        nullable = len(present) < len(members)
        out = {**_convert(present[0], defs, orders), **out}
        if nullable:
            out["nullable"] = True
    out.pop("title", None)
    if not out.get("required"):
        out.pop("required", None)
    if "enum" in out:
        values = out["enum"]
        out["enum"] = list(orders.get(frozenset(values), values))
        if "type" not in out:
            kinds = {type(v) for v in values}
            if kinds != {str}:
                raise ValueError(f"enum {values} is not all strings")
            out["type"] = "string"
    if "description" in out:
        # Docstrings are wrapped for the source; `kubectl explain` reflows anyway.
        out["description"] = " ".join(out["description"].split())
    if "properties" in out:
        out["properties"] = {k: _convert(v, defs, orders) for k, v in out["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = _convert(out[key], defs, orders)
    return _ordered(out)


def structural(tp: Any) -> JSON:
    """The OpenAPI v3 structural schema of a model type: no `$ref`, no `anyOf`, every node
    typed. Raises ValueError for what Kubernetes cannot express (unions, mixed enums)."""
    (root,), defs = msgspec.json.schema_components([tp])
    return _convert(root, defs, _literal_orders(tp))


def root_schema(tp: Any) -> JSON:
    """A kind's openAPIV3Schema: the model's schema with the envelope Kubernetes fixes."""
    schema = structural(tp)
    props = schema["properties"]
    for key in _ENVELOPE:
        props[key].pop("default", None)
    props["metadata"] = {"type": "object"}
    return schema


# -- CRDs --------------------------------------------------------------------------
def _column(name: str, path: str, kind: str = "string", priority: int = 0, description: str = "") -> JSON:
    col: JSON = {"name": name, "type": kind, "jsonPath": path}
    if priority:
        col["priority"] = priority
    if description:
        col["description"] = description
    return col


def _age() -> JSON:
    return _column("AGE", ".metadata.creationTimestamp", "date")


def _policy_columns() -> list[JSON]:
    return [
        _column("MODE", ".spec.policy.mode"),
        _column("TARGET-KIND", ".spec.target.kind"),
        _column("TARGET-NAME", ".spec.target.name"),
        _column("PROFILE", ".status.profileName"),
        _column("READY", ".status.ready", "boolean"),
        _column("STATUS", ".status.phase"),
        _column("DESIRED", ".status.desiredNumberLoaded", "integer"),
        _column("CURRENT", ".status.currentNumberLoaded", "integer"),
        _column("TARGET-SELECTOR", ".spec.target.selector", priority=1),
        _age(),
    ]


def columns(kind: str) -> list[JSON]:
    """`kubectl get` columns of one kind (fresh lists: callers may change them)."""
    if kind in (api.VARMOR_POLICY.kind, api.VARMOR_CLUSTER_POLICY.kind):
        return _policy_columns()
    if kind == api.ARMOR_PROFILE.kind:
        return [
            _column("PROFILE", ".spec.profile.name"),
            _column("MODE", ".spec.profile.mode"),
            _column("DESIRED", ".status.desiredNumberLoaded", "integer"),
            _column("CURRENT", ".status.currentNumberLoaded", "integer"),
            _age(),
        ]
    if kind == api.ARMOR_BEHAVIOR.kind:
        return [
            _column("PROFILE", ".spec.profileName"),
            _column("NODE", ".spec.nodeName"),
            _column("RECORDS", ".spec.records", "integer"),
            _column("LOST", ".spec.lostRecords", "integer"),
            _age(),
        ]
    if kind == api.ARMOR_PROFILE_MODEL.kind:
        return [
            _column("STORAGE-TYPE", ".storageType"),
            _column("RULES", ".status.rules", "integer"),
            _column("RECORDS", ".status.records", "integer"),
            _column("LOST", ".status.lostRecords", "integer"),
            _age(),
        ]
    return [
        _column("PHASE", ".status.phase"),
        _column("READY", ".status.ready", "boolean"),
        _column("LOADED", ".status.loaded", "integer", description="varmor profiles loaded on the node."),
        _column("PARSER", ".status.parserVersion"),
        _column("AGENT", ".status.agentVersion"),
        _column("HEARTBEAT", ".status.heartbeatTime", "date", description="Time since the agent's last heartbeat."),
        _column("REASON", ".status.reason", priority=1),
        _age(),
    ]


def crd(resource: api.Resource, tp: Any) -> JSON:
    """One CRD: the kind's names and scope around the schema generated from its model."""
    names: JSON = {
        "kind": resource.kind,
        "listKind": f"{resource.kind}List",
        "plural": resource.plural,
        "singular": resource.kind.lower(),
        "categories": ["varmor"],
    }
    if resource.short_names:
        names["shortNames"] = list(resource.short_names)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{resource.plural}.{api.GROUP}", "labels": {api.MANAGED_BY_LABEL: "varmor"}},
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced" if resource.namespaced else "Cluster",
            "names": names,
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns(resource.kind),
                    "schema": {"openAPIV3Schema": root_schema(tp)},
                }
            ],
        },
    }


def crds() -> list[JSON]:
    """All of varmor's CRDs, in a stable order."""
    return [crd(resource, tp) for resource, tp in KINDS]


def walk(schema: JSON) -> Iterator[JSON]:
    """Every schema node below `schema` (properties, items, additionalProperties)."""
    yield schema
    for child in schema.get("properties", {}).values():
        yield from walk(child)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from walk(schema[key])
