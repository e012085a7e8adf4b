"""metav1.LabelSelector: the one definition varmor has (pure).

Semantics are `metav1.LabelSelectorAsSelector`'s: every `matchLabels` pair and every
`matchExpressions` requirement must hold. **An empty selector matches every object**,
as in Kubernetes; varmor's policy validation (and the CRD) refuses an empty selector in a
policy target, so a policy never selects a whole namespace by accident: to target every
workload of a kind, a user must say so with an expression. A malformed selector raises
SelectorError; callers that meet one in stored data treat it as matching nothing (a
policy the API server should have rejected must not grab workloads).

One parsed value serves every use: matching in the webhook and the audit (`predicate`),
the objectSelector the leader registers (`as_dict`), and the list query its rollouts
send (`query`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

LabelPredicate = Callable[[Mapping[str, str]], bool]
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class SelectorError(ValueError):
    """A malformed selector. `path` is relative to the selector (e.g. `matchExpressions[0].values`)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.reason = message


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return labels.get(self.key) in self.values
        if self.operator == "NotIn":
            return labels.get(self.key) not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist


@dataclass(frozen=True, slots=True)
class LabelSelector:
    match_labels: tuple[tuple[str, str], ...] = ()  # sorted by key
    match_expressions: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )

    def predicate(self) -> LabelPredicate:
        """`matches` as a function, specialised for the common `matchLabels: {app: x}` (the
        admission hot path runs it per candidate policy)."""
        if not self.match_expressions and len(self.match_labels) == 1:
            key, value = self.match_labels[0]

            def matches_one(labels: Mapping[str, str]) -> bool:
                return labels.get(key) == value

            return matches_one
        return self.matches

    def as_dict(self) -> dict[str, Any]:
        """As the API server stores it: sorted matchLabels, no empty `values`; {} when empty."""
        out: dict[str, Any] = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            out["matchExpressions"] = [
                {"key": r.key, "operator": r.operator, **({"values": list(r.values)} if r.values else {})}
                for r in self.match_expressions
            ]
        return out

    def query(self) -> str:
        """The `labelSelector` query-string form ('' when empty: every object)."""
        parts = [f"{k}={v}" for k, v in self.match_labels]
        for r in self.match_expressions:
            if r.operator == "In":
                parts.append(f"{r.key} in ({','.join(r.values)})")
            elif r.operator == "NotIn":
                parts.append(f"{r.key} notin ({','.join(r.values)})")
            elif r.operator == "Exists":
                parts.append(r.key)
            else:
                parts.append(f"!{r.key}")
        return ",".join(parts)

    @classmethod
    def parse(cls, raw: Any) -> LabelSelector:
        """A metav1.LabelSelector from the API's JSON. Raises SelectorError naming the field."""
        if not isinstance(raw, Mapping):
            raise SelectorError("", "must be an object")
        unknown = sorted(set(raw) - {"matchLabels", "matchExpressions"})
        if unknown:
            raise SelectorError(unknown[0], "unknown field")
        labels = raw.get("matchLabels") or {}
        if not isinstance(labels, Mapping):
            raise SelectorError("matchLabels", "must be an object")
        for key, value in labels.items():
            if not isinstance(key, str) or not key:
                raise SelectorError("matchLabels", "keys must be non-empty strings")
            if not isinstance(value, str):
                raise SelectorError(f"matchLabels.{key}", "must be a string")
        exprs = raw.get("matchExpressions") or []
        if not isinstance(exprs, list):
            raise SelectorError("matchExpressions", "must be a list")
        return cls(
            tuple(sorted(labels.items())), tuple(_requirement(e, f"matchExpressions[{i}]") for i, e in enumerate(exprs))
        )


def _requirement(raw: Any, path: str) -> Requirement:
    if not isinstance(raw, Mapping):
        raise SelectorError(path, "must be an object")
    unknown = sorted(set(raw) - {"key", "operator", "values"})
    if unknown:
        raise SelectorError(f"{path}.{unknown[0]}", "unknown field")
    key, op, values = raw.get("key"), raw.get("operator"), raw.get("values") or []
    if not isinstance(key, str) or not key:
        raise SelectorError(f"{path}.key", "must be a non-empty string")
    if op not in OPERATORS:
        raise SelectorError(f"{path}.operator", f"must be one of {sorted(OPERATORS)}")
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise SelectorError(f"{path}.values", "must be a list of strings")
    if op in ("In", "NotIn") and not values:
        raise SelectorError(f"{path}.values", f"must be non-empty for operator {op}")
    if op in ("Exists", "DoesNotExist") and values:
        raise SelectorError(f"{path}.values", f"must be empty for operator {op}")
    return Requirement(key, op, tuple(values))


def compile_selector(raw: Any) -> LabelPredicate:
    """Parse and return the predicate: what the planner keeps per candidate policy."""
    return LabelSelector.parse(raw).predicate()
