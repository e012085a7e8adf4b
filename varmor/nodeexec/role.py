"""`varmor run --roles agent`: the node agent role (see varmor.nodeexec.agent)."""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path
from typing import Any

from varmor import api, settings
from varmor.api import DEFAULT_HEARTBEAT
from varmor.kube.informer import Informer
from varmor.kube.tasks import task_group
from varmor.nodeexec import metrics
from varmor.nodeexec.agent import Agent, AgentConfig
from varmor.nodeexec.attribution import Attributor, PodIndex
from varmor.nodeexec.collector import BehaviorCollector
from varmor.nodeexec.eventqueue import EventQueue
from varmor.nodeexec.files import DEFAULT_PARTITIONS, DEFAULT_PROFILE_DIR
from varmor.nodeexec.kernel import DEFAULT_ENABLED_FILE, DEFAULT_SECURITYFS
from varmor.nodeexec.violations import ViolationReporter
from varmor.nodeexec.waiting import WaitingPods


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings.add_budget_arguments(parser)  # the agent compiles under the same budget
    g = parser.add_argument_group("agent")
    g.add_argument("--node-name", default=os.environ.get("NODE_NAME") or socket.gethostname())
    g.add_argument(
        "--profile-dir", type=Path, default=DEFAULT_PROFILE_DIR, help="where profile files are written (host)"
    )
    g.add_argument(
        "--securityfs", type=Path, default=DEFAULT_SECURITYFS, help="securityfs mount (holds apparmor/profiles)"
    )
    g.add_argument("--apparmor-enabled-file", type=Path, default=DEFAULT_ENABLED_FILE)
    g.add_argument("--proc-partitions", type=Path, default=DEFAULT_PARTITIONS, help="the host's disk list")
    g.add_argument("--apparmor-parser", default="", help="apparmor_parser binary (default: found on PATH)")
    g.add_argument(
        "--parser-timeout",
        type=float,
        default=300.0,
        help="seconds one apparmor_parser run may take before it is killed and its profiles retried",
    )
    g.add_argument(
        "--apparmor-base-dir",
        type=Path,
        default=Path("/etc/apparmor.d"),
        help="abstractions/tunables searched before the profile dir (the image's own)",
    )
    g.add_argument("--audit-log", default="", help="kernel audit source to tail: audit.log or kern.log")
    g.add_argument(
        "--host-proc",
        default="/proc",
        help="the host's /proc: which pod an audit record came from ('': no pod attribution, on a host without pods)",
    )
    g.add_argument("--violation-log", default="-", help="JSON lines of violations: a file, '-' (stdout) or ''")
    g.add_argument("--violation-event-interval", type=float, default=60.0, help="seconds between Events per policy")
    g.add_argument(
        "--behavior-flush", type=float, default=30.0, help="seconds between writes of this node's behaviour shares"
    )
    g.add_argument("--agent-resync", type=float, default=300.0, help="seconds between agent resyncs")
    g.add_argument("--agent-status-debounce", type=float, default=0.5, help="seconds to coalesce ArmorNode writes")
    g.add_argument(
        "--agent-heartbeat",
        type=float,
        default=DEFAULT_HEARTBEAT,
        help="seconds between ArmorNode heartbeatTime renewals, so the leader can tell a gone agent (0: off)",
    )


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    return AgentConfig(
        node_name=args.node_name,
        profile_dir=args.profile_dir,
        securityfs=args.securityfs,
        enabled_file=args.apparmor_enabled_file,
        partitions=args.proc_partitions,
        parser=args.apparmor_parser,
        parser_base_dir=args.apparmor_base_dir,
        parser_timeout=args.parser_timeout,
        resync_seconds=args.agent_resync,
        status_debounce=args.agent_status_debounce,
        heartbeat_seconds=args.agent_heartbeat,
        budget=settings.budget_from_args(args),
    )


async def run(ctx: Any) -> None:
    agent = Agent(config_from_args(ctx.args), ctx.api_client)
    ctx.health.add("agent-initial-sync", lambda: agent.ready)
    async with task_group() as group:
        group.create_task(agent.run(), name="agent")
        # This node's pods only (RBAC cannot narrow the agent's read to one node; the field
        # selector keeps what it asks for, and holds, to its own node).
        pods = Informer(
            ctx.api_client,
            api.POD,
            field_selector=f"spec.nodeName={ctx.args.node_name}",
            resync_seconds=ctx.args.agent_resync,
        )
        events = EventQueue(agent.kube, lambda result: metrics.WAITING_EVENTS.labels(result).inc())
        waiting = WaitingPods(ctx.args.node_name, agent.explain_missing, agent.owner, events)
        agent.synced_listeners.append(waiting.profile_known)
        index = PodIndex()
        pods.add_handler(waiting.on_pod)
        pods.add_handler(index.on_pod)
        group.create_task(pods.run(), name="agent-pods")
        group.create_task(events.run(), name="agent-pod-events")
        if ctx.args.audit_log:
            collector = BehaviorCollector(
                agent.kube, ctx.args.node_name, agent.owner, flush_seconds=ctx.args.behavior_flush
            )
            attributor = Attributor(Path(ctx.args.host_proc), index) if ctx.args.host_proc else None
            reporter = ViolationReporter.from_args(ctx.args, agent, attributor, collector)
            group.create_task(reporter.run(), name="agent-violations")
            group.create_task(collector.run(), name="agent-behavior")
