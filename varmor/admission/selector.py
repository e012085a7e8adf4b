"""Kubernetes LabelSelector matching (pure).

Policies select workloads with a metav1.LabelSelector; this is the same semantics as
`metav1.LabelSelectorAsSelector`: an empty selector matches everything, an invalid one
matches nothing (a policy the API server should have rejected must not grab workloads).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

LabelPredicate = Callable[[Mapping[str, str]], bool]


class SelectorError(ValueError):
    pass


def _requirement(expr: Any) -> LabelPredicate:
    if not isinstance(expr, dict):
        raise SelectorError("matchExpressions entries must be objects")
    key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
    if not isinstance(key, str) or not key:
        raise SelectorError("matchExpressions entry without a key")
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise SelectorError(f"matchExpressions values for {key!r} must be strings")
    allowed = frozenset(values)
    if op == "In":
        if not allowed:
            raise SelectorError(f"operator In on {key!r} needs values")
        return lambda labels: labels.get(key) in allowed
    if op == "NotIn":
        if not allowed:
            raise SelectorError(f"operator NotIn on {key!r} needs values")
        return lambda labels: labels.get(key) not in allowed
    if op == "Exists":
        if allowed:
            raise SelectorError(f"operator Exists on {key!r} takes no values")
        return lambda labels: key in labels
    if op == "DoesNotExist":
        if allowed:
            raise SelectorError(f"operator DoesNotExist on {key!r} takes no values")
        return lambda labels: key not in labels
    raise SelectorError(f"unknown operator {op!r} on {key!r}")


def compile_selector(selector: Any) -> LabelPredicate:
    """A predicate over a label map. Raises SelectorError on a malformed selector."""
    if not isinstance(selector, dict):
        raise SelectorError("selector must be an object")
    match_labels = selector.get("matchLabels") or {}
    exprs = selector.get("matchExpressions") or []
    if not isinstance(match_labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in match_labels.items()
    ):
        raise SelectorError("matchLabels must map strings to strings")
    if not isinstance(exprs, list):
        raise SelectorError("matchExpressions must be a list")
    pairs = tuple(sorted(match_labels.items()))
    reqs = tuple(_requirement(e) for e in exprs)

    if not reqs and len(pairs) == 1:  # the common `matchLabels: {app: x}`: no generators per call
        key: str = pairs[0][0]
        value: str = pairs[0][1]

        def matches_one(labels: Mapping[str, str]) -> bool:
            return labels.get(key) == value

        return matches_one

    def matches(labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in pairs) and all(r(labels) for r in reqs)

    return matches
