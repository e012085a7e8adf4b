"""Metrics of the shared API access layer."""

from __future__ import annotations

from prometheus_client import Counter

API_WRITES = Counter(
    "varmor_api_writes_total", "Write requests sent to the API server, by varmor component.", ["component"]
)  # component: election | reconcile | agent | webhook | other
API_THROTTLED = Counter(
    "varmor_api_throttled_total",
    "Requests the API server answered 429 Too Many Requests (priority and fairness), retried after Retry-After.",
)
WATCH_RESTARTS = Counter(
    "varmor_watch_restarts_total",
    "Watches that ended, by resource and reason: ended (the server's timeout; resumed), "
    "error (a failed request or a cut connection; resumed after a backoff), gone (410: relisted).",
    ["resource", "reason"],
)
