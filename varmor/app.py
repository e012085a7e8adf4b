"""`varmor run`: one process, any combination of the webhook, leader and agent roles.

Each role module exposes `add_arguments(parser)` and `async run(ctx)`. This shell wires
them to one event loop, one API client, and the shared health and metrics endpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from varmor import __version__
from varmor.tasks import cancel_and_wait

ROLE_MODULES = {
    "webhook": "varmor.webhook.role",
    "leader": "varmor.reconcile.role",
    "agent": "varmor.nodeexec.role",
}

log = logging.getLogger("varmor")


class JsonFormatter(logging.Formatter):
    """Structured logs, one JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        for key, value in getattr(record, "fields", {}).items():
            entry[key] = value
        return orjson.dumps(entry, default=str).decode()


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


@dataclass
class Health:
    """Readiness checks registered by roles; liveness is the loop answering at all."""

    checks: dict[str, Callable[[], bool]] = field(default_factory=dict)

    def add(self, name: str, check: Callable[[], bool]) -> None:
        self.checks[name] = check

    def failing(self) -> list[str]:
        return sorted(name for name, check in self.checks.items() if not check())


@dataclass
class RoleContext:
    args: argparse.Namespace
    api_client: Any
    health: Health
    roles: frozenset[str]


def health_app(health: Health) -> web.Application:
    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "version": __version__})

    async def readyz(_request: web.Request) -> web.Response:
        failing = health.failing()
        return web.json_response({"ready": not failing, "waiting": failing}, status=503 if failing else 200)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def metrics_app() -> web.Application:
    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def run_roles(args: argparse.Namespace) -> int:
    from varmor.kube import new_api_client

    roles = frozenset(args.roles.split(","))
    unknown = roles - set(ROLE_MODULES)
    if unknown:
        log.error("unknown roles %s; choose from %s", sorted(unknown), sorted(ROLE_MODULES))
        return 2
    api_client = await new_api_client(args.kubeconfig)
    health = Health()
    ctx = RoleContext(args=args, api_client=api_client, health=health, roles=roles)
    runners = [
        await serve(health_app(health), args.bind_address, args.health_port),
        await serve(metrics_app(), args.bind_address, args.metrics_port),
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = {asyncio.create_task(importlib.import_module(ROLE_MODULES[r]).run(ctx), name=r) for r in sorted(roles)}
    log.info("varmor %s running roles %s", __version__, ",".join(sorted(roles)))
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({*tasks, stopper}, return_when=asyncio.FIRST_COMPLETED)
    rc = 0
    for task in done - {stopper}:
        if task.exception() is not None:
            log.error("role %s crashed", task.get_name(), exc_info=task.exception())
            rc = 1
    await cancel_and_wait(tasks | {stopper})
    for runner in runners:
        await runner.cleanup()
    await api_client.close()
    return rc


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--roles", default="webhook,leader,agent", help="comma-separated: webhook, leader, agent")
    parser.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG, else in-cluster")
    parser.add_argument("--namespace", default=os.environ.get("VARMOR_NAMESPACE", "varmor"), help="install namespace")
    parser.add_argument("--bind-address", default="0.0.0.0")
    parser.add_argument("--health-port", type=int, default=8081)
    parser.add_argument("--metrics-port", type=int, default=8082)
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--event-loop",
        choices=EVENT_LOOPS,
        default="uvloop",
        help="uvloop (default; ~20%% more admissions per core than asyncio's own loop) or asyncio",
    )


EVENT_LOOPS = ("uvloop", "asyncio")


def run_on_loop(main: Coroutine[Any, Any, int], event_loop: str) -> int:
    """Run `main` on the chosen event loop; asyncio's own when uvloop is not installed."""
    if event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not installed; using asyncio's event loop")
        else:
            return uvloop.run(main)
    return asyncio.run(main)


def _roles_on_command_line(argv: list[str]) -> list[str]:
    """The roles `varmor run --roles=...` asks for, so a process imports only those role
    modules (an agent-only DaemonSet pod then does not carry the webhook's and leader's
    code: ~12 MB of RSS). All roles when --roles is absent, unknown, or for --help."""
    if "run" not in argv or "-h" in argv or "--help" in argv:
        return list(ROLE_MODULES)
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith("--roles="):
            value = arg.split("=", 1)[1]
        elif arg == "--roles" and i + 1 < len(argv):
            value = argv[i + 1]
    roles = [r for r in (value or "").split(",") if r in ROLE_MODULES]
    return roles or list(ROLE_MODULES)


def register(sub: Any) -> None:
    run = sub.add_parser("run", help="run varmor's roles (webhook, leader, agent) in this process")
    add_common_arguments(run)
    for role in _roles_on_command_line(sys.argv[1:]):
        with contextlib.suppress(ModuleNotFoundError):
            importlib.import_module(ROLE_MODULES[role]).add_arguments(run)

    def handler(args: argparse.Namespace) -> int:
        setup_logging(args.log_level)
        return run_on_loop(run_roles(args), args.event_loop)

    run.set_defaults(func=handler)
