"""`varmor cleanup`: the chart's pre-delete hook (see varmor.reconcile.cleanup)."""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from varmor.app import setup_logging
from varmor.kube.client import new_api_client
from varmor.reconcile.cleanup import cleanup


async def _main(args: argparse.Namespace) -> int:
    api_client = await new_api_client(args.kubeconfig)
    try:
        await cleanup(
            api_client,
            args.webhook_config_name,
            resources=not args.webhooks_only,
            unload_timeout=args.unload_timeout,
            keep_models=args.keep_models,
        )
    finally:
        await api_client.close()
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("cleanup", help="uninstall hook: remove webhook configurations and varmor's objects")
    p.add_argument("--kubeconfig", default=None)
    p.add_argument("--namespace", default=os.environ.get("VARMOR_NAMESPACE", "varmor"), help="install namespace")
    p.add_argument("--webhook-config-name", default="varmor")
    p.add_argument("--webhooks-only", action="store_true", help="keep policies, ArmorProfiles and ArmorNodes")
    p.add_argument("--keep-models", action="store_true", help="keep ArmorProfileModels (behaviour models)")
    p.add_argument("--unload-timeout", type=float, default=120.0, help="seconds to wait for agents to unload")

    def handler(args: argparse.Namespace) -> int:
        setup_logging("info")
        return asyncio.run(_main(args))

    p.set_defaults(func=handler)
