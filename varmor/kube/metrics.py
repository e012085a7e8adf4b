"""Metrics of the shared API access layer."""

from __future__ import annotations

from prometheus_client import Counter

API_WRITES = Counter(
    "varmor_api_writes_total", "Write requests sent to the API server, by varmor component.", ["component"]
)  # component: election | reconcile | agent | webhook | other
