"""`varmor run --roles=leader`: elect one leader; while leading, reconcile policies,
aggregate node status, roll workloads, and run the webhook's leader-only tasks.

Every replica runs the elector. Leader work starts on acquire and is cancelled the
moment the lease is lost; it keeps no state the next leader would need. Every write of
leader work passes the elector's fence first, so a process that was stopped past its
lease sends nothing on waking, before it even notices it lost the lease.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

from varmor import settings as webhook_settings
from varmor.api import DEFAULT_LOST_AFTER
from varmor.kube.kube import Kube
from varmor.kube.tasks import task_group
from varmor.kubeversion import attachment
from varmor.reconcile.election import ElectionConfig, KubeLeaseStore, LeaderElector, default_identity
from varmor.reconcile.policies import PolicyController, Settings
from varmor.reconcile.rollout import Rollouts
from varmor.reconcile.webhooks import run_leader_tasks

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    webhook_settings.add_arguments(parser)  # the leader registers the webhook it describes
    g = parser.add_argument_group("leader")
    g.add_argument("--lease-name", default="varmor-leader", help="Lease (in --namespace) used for election")
    g.add_argument("--lease-duration", type=float, default=15.0, help="seconds a lease is valid without renewal")
    g.add_argument("--renew-deadline", type=float, default=10.0, help="seconds the leader retries renewing")
    g.add_argument("--retry-period", type=float, default=2.0, help="seconds between election attempts")
    g.add_argument("--leader-identity", default=None, help="default: $POD_NAME, else hostname plus a suffix")
    g.add_argument("--reconcile-workers", type=int, default=4, help="policies reconciled concurrently")
    g.add_argument("--resync-period", type=float, default=300.0, help="seconds between full resyncs")
    g.add_argument("--status-delay", type=float, default=0.5, help="seconds to coalesce node reports")
    g.add_argument(
        "--agent-lost-after",
        type=float,
        default=DEFAULT_LOST_AFTER,
        help="seconds without an ArmorNode heartbeat until its agent is lost and stops blocking Ready (0: never)",
    )
    g.add_argument("--rollout-qps", type=float, default=2.0, help="workload patches per second (updateExisting)")
    g.add_argument("--rollout-burst", type=int, default=5)
    g.add_argument(
        "--no-leader-webhook-tasks",
        dest="leader_webhook_tasks",
        action="store_false",
        help="do not run certificate management and webhook registration while leading",
    )


async def lead(ctx: Any, fence: Callable[[], None] | None = None) -> None:
    """Everything the leader does, until cancelled; `fence` guards each of its writes."""
    args = ctx.args
    settings = Settings(
        install_namespace=args.namespace,
        workers=args.reconcile_workers,
        resync_seconds=args.resync_period,
        status_delay=args.status_delay,
        lost_after=args.agent_lost_after,
        attachment=lambda: attachment(args.apparmor_api, ctx.server.current, ctx.server.seen_without_field),
        budget=webhook_settings.budget_from_args(args),
    )
    controller = PolicyController(
        ctx.api_client, settings, kube=Kube(ctx.api_client, component="reconcile", role="leader", fence=fence)
    )
    rollouts = Rollouts(controller, qps=args.rollout_qps, burst=args.rollout_burst)
    async with task_group() as group:
        group.create_task(controller.run(), name="leader-policies")
        group.create_task(rollouts.run(), name="leader-rollouts")
        if args.leader_webhook_tasks:
            group.create_task(run_leader_tasks(ctx, controller.take_audit, fence), name="leader-webhook")


async def run(ctx: Any) -> None:
    args = ctx.args
    config = ElectionConfig(
        namespace=args.namespace,
        lease_name=args.lease_name,
        identity=args.leader_identity or default_identity(),
        lease_duration=args.lease_duration,
        renew_deadline=args.renew_deadline,
        retry_period=args.retry_period,
    )
    kube = Kube(ctx.api_client, component="election")
    elector = LeaderElector(KubeLeaseStore(kube, config.namespace, config.lease_name), config)
    log.info("leader election as %s on lease %s/%s", config.identity, config.namespace, config.lease_name)

    async def leading() -> None:
        await lead(ctx, elector.fence)

    await elector.run(leading)
