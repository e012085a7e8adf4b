"""Prometheus metrics of the leader role. Labels are low-cardinality on purpose: kinds
and outcomes, never policy, namespace or node names."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

IS_LEADER = Gauge("varmor_leader_is_leader", "1 while this process holds the leader lease.")
LEADER_TRANSITIONS = Counter(
    "varmor_leader_transitions_total", "Leadership changes seen by this process.", ["event"]
)  # event: acquired | lost | released
FENCED_WRITES = Counter(
    "varmor_leader_fenced_writes_total",
    "Leader writes refused before sending because this process's lease may have expired.",
)
RECONCILE_DURATION = Histogram(
    "varmor_reconcile_duration_seconds",
    "Time to reconcile one policy (ArmorProfile and status).",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_ERRORS = Counter("varmor_reconcile_errors_total", "Reconciles that raised and were retried.", ["kind"])
POLICIES = Gauge("varmor_policies", "Policies known to the leader, by phase.", ["phase"])
NODES = Gauge("varmor_nodes", "ArmorNodes known to the leader, by state.", ["state"])
ROLLOUT_WORKLOADS = Counter(
    "varmor_rollout_workloads_total", "Workload templates patched by updateExistingWorkloads.", ["kind", "action"]
)
STATUS_WRITES = Counter("varmor_status_writes_total", "Status writes by the leader.", ["resource"])

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
REGISTRATION_WITHHELD = Counter(
    "varmor_webhook_registration_withheld_total",
    "Registrations not written because the chart's owner ClusterRole is gone (varmor is being uninstalled).",
)


async def track_counts(
    policies: Callable[[], list[dict[str, Any]]], node_states: Callable[[], Iterable[str]], every: float = 15.0
) -> None:
    """Keep POLICIES and NODES current (every phase and state always present, so a count
    can fall to 0)."""
    while True:
        counts = dict.fromkeys(("Pending", "Protecting", "Modeling", "Completed", "Error"), 0)
        for policy in policies():
            phase = (policy.get("status") or {}).get("phase", "Pending")
            counts[phase] = counts.get(phase, 0) + 1
        for phase, count in counts.items():
            POLICIES.labels(phase).set(count)
        states = dict.fromkeys(("Ready", "Syncing", "Unsupported", "AgentLost"), 0)
        for state in node_states():
            states[state] = states.get(state, 0) + 1
        for state, count in states.items():
            NODES.labels(state).set(count)
        await asyncio.sleep(every)
