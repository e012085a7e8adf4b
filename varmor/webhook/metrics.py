"""Webhook metrics (prefix `varmor_`, low-cardinality labels only).

`varmor_admission_unconfined_total` and `varmor_unprotected_workloads` are the
fail-open signals: the first counts admissions the webhook saw that a policy selects
but that leave without a profile; the second is the leader's audit, which also catches
what the webhook never saw (it was down, or failurePolicy Ignore kicked in).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from varmor import api

KNOWN_KINDS = frozenset(api.TARGET_KINDS) | {api.VARMOR_POLICY.kind, api.VARMOR_CLUSTER_POLICY.kind}
OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})


def kind_label(kind: object) -> str:
    return kind if isinstance(kind, str) and kind in KNOWN_KINDS else "other"


UNCONFINED = Counter(
    "varmor_admission_unconfined_total",
    "Admissions selected by a policy but admitted without its profile, by reason "
    "(policy_pending, opted_out, unsupported, no_matching_container, not_synced, error).",
    ["kind", "reason"],
)
CONFLICTS = Counter("varmor_policy_conflicts_total", "Admissions where more than one ready policy matched.", ["kind"])
EVENTS_DROPPED = Counter("varmor_webhook_events_dropped_total", "Conflict events not sent (rate limit or queue).")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class AdmissionMetrics(Collector):
    """Per-admission counters and the latency histogram as plain Python numbers, turned
    into metric families only when scraped. prometheus_client's own Counter/Histogram
    take a lock per update and walk the buckets in Python, which measurably cost
    throughput on the admission path; the event loop is single-threaded, so plain
    increments are safe here.
    """

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str, str], int] = {}
        self.mutations: dict[str, int] = {}
        self.latency: dict[str, list[float]] = {}  # endpoint -> per-bucket counts, then +Inf, then sum

    def count_request(self, endpoint: str, kind: str, operation: str, result: str) -> None:
        key = (endpoint, kind, operation, result)
        self.requests[key] = self.requests.get(key, 0) + 1

    def record(self, endpoint: str, kind: str, operation: str, result: str, seconds: float) -> None:
        """One answered admission: its request count and its latency (one call on the hot path)."""
        key = (
            endpoint,
            kind if kind in KNOWN_KINDS else "other",
            operation if operation in OPERATIONS else "other",
            result,
        )
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        counts = self.latency.get(endpoint)
        if counts is None:
            counts = self.latency[endpoint] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        counts[-1] += seconds

    def count_mutation(self, kind: str) -> None:
        self.mutations[kind] = self.mutations.get(kind, 0) + 1

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "varmor_admission_requests",
            "AdmissionReview requests by endpoint, kind, operation and result.",
            labels=["endpoint", "kind", "operation", "result"],
        )
        for labels, value in sorted(self.requests.items()):
            requests.add_metric(list(labels), value)
        yield requests
        mutations = CounterMetricFamily(
            "varmor_admission_mutations", "Admissions answered with a non-empty patch.", labels=["kind"]
        )
        for kind, value in sorted(self.mutations.items()):
            mutations.add_metric([kind], value)
        yield mutations
        latency = HistogramMetricFamily(
            "varmor_admission_duration_seconds",
            "Time from request received to response ready, per endpoint.",
            labels=["endpoint"],
        )
        for endpoint, counts in sorted(self.latency.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts[:-1], strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            latency.add_metric([endpoint], buckets, counts[-1])
        yield latency


ADMISSION = AdmissionMetrics()
REGISTRY.register(ADMISSION)
count_request = ADMISSION.count_request
count_mutation = ADMISSION.count_mutation
record = ADMISSION.record
