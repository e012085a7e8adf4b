"""Prometheus metrics of the agent role. Labels are low-cardinality on purpose (actions,
outcomes, record kinds): never node, policy, namespace or profile names; the node is the
scrape target already, and per-policy detail goes to Events and the violation log."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SUPPORTED = Gauge("varmor_agent_apparmor_supported", "1 when this node can load AppArmor profiles.")
READY = Gauge("varmor_agent_ready", "1 once the agent finished its initial sync.")
PROFILES_LOADED = Gauge("varmor_agent_profiles_loaded", "varmor profiles loaded in this node's kernel.")
PROFILES_FAILED = Gauge("varmor_agent_profiles_failed", "varmor profiles this node failed to load.")
PARSER_RUNS = Counter(
    "varmor_agent_parser_runs_total", "apparmor_parser invocations.", ["action", "result"]
)  # action: replace | remove | names; result: ok | error
PARSER_DURATION = Histogram(
    "varmor_agent_parser_duration_seconds",
    "Wall time of one apparmor_parser invocation.",
    ["action"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PROFILE_OPS = Counter(
    "varmor_agent_profile_operations_total", "Per-profile outcomes.", ["action", "result"]
)  # action: load | unload; result: ok | error
PROFILE_RETRIES = Counter(
    "varmor_agent_profile_retries_total",
    "Profile loads, unloads or file writes retried by themselves after a failure that was not the profile's.",
    ["reason"],
)  # reason: timeout (parser past its deadline) | parser (killed, or failed naming no profile) | disk
for _reason in ("timeout", "parser", "disk"):  # exported at 0 from the start, for rate() and the docs' check
    PROFILE_RETRIES.labels(_reason)
PROFILE_DIR_WRITABLE = Gauge(
    "varmor_agent_profile_dir_writable", "0 while writes to the profile directory fail (full, read-only)."
)
INITIAL_SYNC_SECONDS = Gauge("varmor_agent_initial_sync_seconds", "Time from start to ready.")
STATUS_WRITES = Counter(
    "varmor_agent_status_writes_total", "ArmorNode writes.", ["result"]
)  # result: ok | error | skipped | heartbeat (a heartbeatTime-only write)
STATUS_PACING = Counter(
    "varmor_agent_status_pacing_seconds_total",
    "Time ArmorNode writes were held back because the API server answered the previous one slowly.",
)
VIOLATIONS = Counter(
    "varmor_violations_total", "AppArmor audit records attributed to varmor profiles.", ["action", "klass"]
)  # action: DENIED | AUDIT | ALLOWED; klass: file | net | cap | ...
VIOLATION_EVENTS = Counter(
    "varmor_agent_violation_events_total", "Kubernetes Events about violations.", ["result"]
)  # result: sent | suppressed | dropped | error
AUDIT_LINES = Counter("varmor_agent_audit_lines_total", "Audit source lines read.", ["result"])
# result: varmor | other (not a varmor profile / not AppArmor) | malformed
CONTAINERS_WAITING = Gauge(
    "varmor_agent_containers_waiting_for_profile",
    "Containers on this node the runtime refused because their varmor profile is not loaded here.",
)
WAITING_EVENTS = Counter(
    "varmor_agent_waiting_events_total", "Kubernetes Events about containers waiting for a profile.", ["result"]
)  # result: sent | dropped | error
UNATTRIBUTED = Counter(
    "varmor_agent_unattributed_records_total",
    "varmor audit records whose pod the agent could not name (the process was gone, or not a pod's).",
)
BEHAVIOR_RECORDS = Counter(
    "varmor_agent_behavior_records_total",
    "ALLOWED records of modelling profiles: collected into a rule, or excluded (runtime start-up, unusable).",
    ["result"],
)
BEHAVIOR_WRITES = Counter(
    "varmor_agent_behavior_writes_total", "Writes of this node's ArmorBehavior shares.", ["result"]
)
AUDIT_LOST = Gauge(
    "varmor_agent_audit_records_lost",
    "Audit records the kernel dropped (rate limits), measured since the agent started.",
)
