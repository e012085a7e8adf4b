"""Webhook metrics (prefix `varmor_`, low-cardinality labels only).

`varmor_admission_unconfined_total` and `varmor_unprotected_workloads` are the
fail-open signals: the first counts admissions the webhook saw that a policy selects
but that leave without a profile; the second is the leader's audit, which also catches
what the webhook never saw (it was down, or failurePolicy Ignore kicked in).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from varmor import api

KNOWN_KINDS = frozenset(api.TARGET_KINDS) | {api.VARMOR_POLICY.kind, api.VARMOR_CLUSTER_POLICY.kind}


def kind_label(kind: object) -> str:
    return kind if isinstance(kind, str) and kind in KNOWN_KINDS else "other"


REQUESTS = Counter(
    "varmor_admission_requests_total",
    "AdmissionReview requests by endpoint, kind, operation and result.",
    ["endpoint", "kind", "operation", "result"],
)
MUTATIONS = Counter("varmor_admission_mutations_total", "Admissions answered with a non-empty patch.", ["kind"])
LATENCY = Histogram(
    "varmor_admission_duration_seconds",
    "Time from request received to response ready, per endpoint.",
    ["endpoint"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
UNCONFINED = Counter(
    "varmor_admission_unconfined_total",
    "Admissions selected by a policy but admitted without its profile, by reason "
    "(policy_pending, opted_out, unsupported, no_matching_container, not_synced, error).",
    ["kind", "reason"],
)
CONFLICTS = Counter("varmor_policy_conflicts_total", "Admissions where more than one ready policy matched.", ["kind"])
EVENTS_DROPPED = Counter("varmor_webhook_events_dropped_total", "Conflict events not sent (rate limit or queue).")
UNPROTECTED = Gauge(
    "varmor_unprotected_workloads",
    "Existing workloads a policy selects that do not carry its profile (leader audit).",
    ["kind"],
)
REGISTRATION_UPDATES = Counter(
    "varmor_webhook_registration_updates_total", "Writes of the webhook configurations.", ["config"]
)
REGISTERED_KINDS = Gauge(
    "varmor_webhook_registered_kinds", "Kinds the mutating webhook is registered for (1) or not (0).", ["kind"]
)


# Hot-path helpers: `labels()` costs about a microsecond per call, so the admission path
# resolves each label combination once (the label sets are small and bounded).
_children: dict[tuple[object, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    key = (id(metric), *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def count_request(endpoint: str, kind: str, operation: str, result: str) -> None:
    _child(REQUESTS, endpoint, kind, operation, result).inc()


def observe_latency(endpoint: str, seconds: float) -> None:
    _child(LATENCY, endpoint).observe(seconds)


def count_mutation(kind: str) -> None:
    _child(MUTATIONS, kind).inc()
