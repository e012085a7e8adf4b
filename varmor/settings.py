"""Webhook, certificate and registration flags (shared by the webhook and leader roles).

The flag names are the chart's contract (chart/templates/_helpers.tpl, varmor.webhookArgs).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from varmor.certs.bundle import CertConfig
from varmor.kubeversion import APPARMOR_API_CHOICES, AppArmorApi
from varmor.parser import DEFAULT_BUDGET, CompileBudget

DAY = 86400.0


def _failure_policy(value: str) -> str:
    if value not in ("Ignore", "Fail"):
        raise argparse.ArgumentTypeError("must be Ignore or Fail")
    return value


def _timeout(value: str) -> int:
    seconds = int(value)
    if not 1 <= seconds <= 30:
        raise argparse.ArgumentTypeError("must be between 1 and 30 (the API server's limits)")
    return seconds


def _added(parser: argparse.ArgumentParser, flag: str) -> bool:
    """Whether a flag group is on `parser` already: several role modules add the shared
    groups, and argparse refuses a flag twice."""
    return flag in parser._option_string_actions


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The webhook and certificate flags; both the webhook and the leader role add them
    (the leader registers what the webhook serves), so a second call is a no-op."""
    if _added(parser, "--webhook-port"):
        return
    g = parser.add_argument_group("webhook")
    g.add_argument("--webhook-port", type=int, default=8443, help="HTTPS port of /mutate and /validate")
    g.add_argument("--webhook-service", default="varmor-webhook", help="Service the API server calls")
    g.add_argument("--webhook-service-port", type=int, default=443)
    g.add_argument(
        "--webhook-url", default="", help="call https://HOST:PORT instead of the Service (local clusters, tests)"
    )
    g.add_argument("--webhook-config-name", default="varmor", help="name of both webhook configurations")
    g.add_argument("--webhook-failure-policy", type=_failure_policy, default="Ignore")
    g.add_argument("--webhook-timeout-seconds", type=_timeout, default=5)
    g.add_argument("--webhook-max-request-bytes", type=int, default=6 * 1024 * 1024)
    g.add_argument(
        "--apparmor-api",
        choices=APPARMOR_API_CHOICES,
        default="auto",
        help="securityContext.appArmorProfile (>= 1.30) or the beta annotation; auto follows the API server's "
        "release (and writes both after an upgrade from 1.29, until restarted)",
    )
    g.add_argument("--owner-cluster-role", default="", help="cluster-scoped owner of the webhook configurations")
    g.add_argument("--unprotected-audit-interval", type=float, default=60.0, help="seconds; 0 disables")
    g.add_argument("--conflict-event-interval", type=float, default=300.0, help="min seconds between equal Events")
    g.add_argument("--webhook-compile-slots", type=int, default=2, help="policy compiles run at once at admission")
    g.add_argument(
        "--webhook-compile-waiting", type=int, default=2, help="compiles that may wait for a slot; more: 'busy, retry'"
    )
    g.add_argument(
        "--node-report-guard-accounts",
        default="",
        help="comma-separated users (system:serviceaccount:NS:NAME) whose ArmorNode writes the validating "
        "webhook limits to their token's node; for clusters without ValidatingAdmissionPolicy (< 1.30)",
    )
    g.add_argument(
        "--webhook-client-ca",
        default="",
        help="PEM file: require a client certificate signed by this CA on /mutate and /validate (the API "
        "server's, from its AdmissionConfiguration kubeConfigFile); default: no client authentication",
    )
    add_budget_arguments(parser)
    c = parser.add_argument_group("certificates")
    c.add_argument("--cert-secret", default="varmor-webhook-tls")
    c.add_argument("--cert-mode", choices=("self", "external"), default="self")
    c.add_argument("--cert-validity-days", type=float, default=365.0, help="serving certificate lifetime")
    c.add_argument("--ca-validity-days", type=float, default=0.0, help="CA lifetime (default: 10x the serving cert)")
    c.add_argument("--cert-rotation-grace", type=float, default=30.0, help="seconds between rotation phases")
    c.add_argument("--cert-extra-sans", default="", help="comma-separated extra DNS names / IPs")


def add_budget_arguments(parser: argparse.ArgumentParser) -> None:
    """The compile budget of every apparmor_parser run (webhook, leader, agent). Idempotent,
    so each role module may call it."""
    if _added(parser, "--compile-cpu-seconds"):
        return
    b = parser.add_argument_group("compile budget")
    b.add_argument(
        "--compile-cpu-seconds",
        type=float,
        default=DEFAULT_BUDGET.cpu_seconds,
        help="CPU-seconds one apparmor_parser process may use (RLIMIT_CPU); over it the profile is refused",
    )
    b.add_argument(
        "--compile-memory-mib",
        type=int,
        default=DEFAULT_BUDGET.memory_mib,
        help="address space one apparmor_parser process may use (RLIMIT_AS), in MiB",
    )


def budget_from_args(args: Any) -> CompileBudget:
    """The budget the flags ask for; the default budget where a parser lacks the flags."""
    return CompileBudget(
        float(getattr(args, "compile_cpu_seconds", DEFAULT_BUDGET.cpu_seconds)),
        int(getattr(args, "compile_memory_mib", DEFAULT_BUDGET.memory_mib)),
    )


@dataclass(frozen=True)
class WebhookSettings:
    namespace: str
    port: int
    service: str
    service_port: int
    url: str
    config_name: str
    failure_policy: str
    timeout_seconds: int
    max_request_bytes: int
    apparmor_api: AppArmorApi
    owner_cluster_role: str
    audit_interval: float
    conflict_event_interval: float
    cert_secret: str
    cert_mode: str
    cert: CertConfig
    budget: CompileBudget = DEFAULT_BUDGET
    client_ca: str = ""
    compile_slots: int = 2
    compile_waiting: int = 2
    node_report_accounts: tuple[str, ...] = ()

    @property
    def compile_deadline(self) -> float:
        """Seconds an admission compile may take: the API server's timeout less a margin
        for the network and the rest of the review."""
        return max(0.5, self.timeout_seconds - 1.0)

    @property
    def excluded_namespaces(self) -> tuple[str, ...]:
        return tuple(sorted({"kube-system", self.namespace}))


def _sans(service: str, namespace: str, url: str, extra: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    dns = [service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]
    ips: list[str] = []
    hosts = [h.strip() for h in extra.split(",") if h.strip()]
    if url:
        host = urlsplit(url).hostname
        if host:
            hosts.append(host)
    for host in hosts:
        try:
            ips.append(str(ipaddress.ip_address(host)))
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9*.-]+", host):
                raise ValueError(f"bad SAN {host!r}") from None
            dns.append(host)
    return tuple(dict.fromkeys(dns)), tuple(dict.fromkeys(ips))


def _with_defaults(args: Any) -> argparse.Namespace:
    """`args` completed with this module's defaults, so a caller whose parser lacks the
    webhook flags (an embedding test, another role's parser) still gets valid settings."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    merged = parser.parse_args([])
    for key, value in vars(merged).items():
        setattr(merged, key, getattr(args, key, value))
    merged.namespace = getattr(args, "namespace", "varmor")
    return merged


def from_args(args: Any) -> WebhookSettings:
    args = _with_defaults(args)
    dns, ips = _sans(args.webhook_service, args.namespace, args.webhook_url, args.cert_extra_sans)
    cert_days = args.cert_validity_days
    ca_days = args.ca_validity_days or cert_days * 10
    return WebhookSettings(
        namespace=args.namespace,
        port=args.webhook_port,
        service=args.webhook_service,
        service_port=args.webhook_service_port,
        url=args.webhook_url.rstrip("/"),
        config_name=args.webhook_config_name,
        failure_policy=args.webhook_failure_policy,
        timeout_seconds=args.webhook_timeout_seconds,
        max_request_bytes=args.webhook_max_request_bytes,
        apparmor_api=args.apparmor_api,
        owner_cluster_role=args.owner_cluster_role,
        audit_interval=args.unprotected_audit_interval,
        conflict_event_interval=args.conflict_event_interval,
        cert_secret=args.cert_secret,
        cert_mode=args.cert_mode,
        cert=CertConfig(
            dns_names=dns,
            ip_addresses=ips,
            cert_lifetime=dt.timedelta(seconds=cert_days * DAY),
            ca_lifetime=dt.timedelta(seconds=ca_days * DAY),
            grace=dt.timedelta(seconds=args.cert_rotation_grace),
        ),
        budget=budget_from_args(args),
        client_ca=args.webhook_client_ca,
        compile_slots=max(1, args.webhook_compile_slots),
        compile_waiting=max(0, args.webhook_compile_waiting),
        node_report_accounts=tuple(a for a in args.node_report_guard_accounts.split(",") if a),
    )
