"""`varmor run`: one process, any combination of the webhook, leader and agent roles.

Each role module exposes `add_arguments(parser)` and `async run(ctx)`. This shell wires
them to one event loop, one API client, and the shared health and metrics endpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from varmor import __version__, kubeversion
from varmor.kube.context import Health, RoleContext
from varmor.kube.tasks import task_group

ROLES = ("webhook", "leader", "agent")


def role_module(role: str) -> Any:
    """A role's module, imported on first use: an agent-only DaemonSet pod then does not
    carry the webhook's and leader's code (~12 MB of RSS). Plain imports, so the import
    contract sees them."""
    if role == "webhook":
        from varmor.webhook import role as webhook

        return webhook
    if role == "leader":
        from varmor.reconcile import role as leader

        return leader
    if role == "agent":
        from varmor.nodeexec import role as agent

        return agent
    raise KeyError(role)


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


HEALTH = web.AppKey("health", Health)


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "version": __version__})


async def readyz(request: web.Request) -> web.Response:
    failing = request.app[HEALTH].failing()
    return web.json_response({"ready": not failing, "waiting": failing}, status=503 if failing else 200)


async def metrics(_request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def health_app(health: Health) -> web.Application:
    app = web.Application()
    app[HEALTH] = health
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


def metrics_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app


@contextlib.asynccontextmanager
async def serving(app: web.Application, host: str, port: int) -> AsyncIterator[None]:
    """Serve `app` for the duration of the block (its cleanup_ctx runs on the way out)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield
    finally:
        await runner.cleanup()


class Stopped(Exception):
    """SIGTERM or SIGINT: end the roles' group cleanly."""


async def _until(stop: asyncio.Event) -> None:
    await stop.wait()
    raise Stopped


async def _role(name: str, ctx: RoleContext) -> None:
    try:
        await role_module(name).run(ctx)
    except Exception:
        log.exception("role %s crashed", name)
        raise


async def run_roles(args: argparse.Namespace) -> int:
    """Every requested role in one task group with the health and metrics endpoints:
    a role that crashes stops the others and the process exits 1 (the kubelet restarts
    it); SIGTERM stops them all and exits 0."""
    roles = frozenset(args.roles.split(","))
    unknown = roles - set(ROLES)
    if unknown:
        log.error("unknown roles %s; choose from %s", sorted(unknown), sorted(ROLES))
        return 2
    from varmor.kube.client import new_api_client  # ~0.3 s of imports: only when serving
    from varmor.kube.serverversion import ServerVersion

    api_client = await new_api_client(args.kubeconfig)
    try:
        server = await ServerVersion.read(api_client, interval=args.server_version_interval)
    except Exception as exc:
        await api_client.close()
        log.error("cannot read the API server's version: %s", exc)
        return 1
    refused = kubeversion.refusal(server.current)
    if refused:
        await api_client.close()
        log.error(refused)
        return 2
    health = Health()
    ctx = RoleContext(args=args, api_client=api_client, health=health, roles=roles, server=server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("varmor %s running roles %s on Kubernetes %s", __version__, ",".join(sorted(roles)), server.current)
    try:
        async with (
            serving(health_app(health), args.bind_address, args.health_port),
            serving(metrics_app(), args.bind_address, args.metrics_port),
            task_group() as group,
        ):
            group.create_task(_until(stop), name="signals")
            group.create_task(server.run(), name="server-version")
            for role in sorted(roles):
                group.create_task(_role(role, ctx), name=role)
    except Stopped:
        return 0
    except Exception:
        return 1
    finally:
        await api_client.close()
    return 0


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--roles", default="webhook,leader,agent", help="comma-separated: webhook, leader, agent")
    parser.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG, else in-cluster")
    parser.add_argument("--namespace", default=os.environ.get("VARMOR_NAMESPACE", "varmor"), help="install namespace")
    parser.add_argument("--bind-address", default="0.0.0.0")
    parser.add_argument("--health-port", type=int, default=8081)
    parser.add_argument("--metrics-port", type=int, default=8082)
    parser.add_argument("--log-level", default="info")
    parser.add_argument(
        "--server-version-interval",
        type=float,
        default=60.0,
        help="seconds between reads of the API server's release (an upgrade to 1.30 switches admission to "
        "the appArmorProfile field); 0: read once",
    )
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
        return list(ROLES)
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith("--roles="):
            value = arg.split("=", 1)[1]
        elif arg == "--roles" and i + 1 < len(argv):
            value = argv[i + 1]
    roles = [r for r in (value or "").split(",") if r in ROLES]
    return roles or list(ROLES)


def register(sub: Any, argv: Sequence[str] | None = None) -> None:
    run = sub.add_parser("run", help="run varmor's roles (webhook, leader, agent) in this process")
    add_common_arguments(run)
    for role in _roles_on_command_line(list(sys.argv[1:] if argv is None else argv)):
        role_module(role).add_arguments(run)

    def handler(args: argparse.Namespace) -> int:
        setup_logging(args.log_level)
        return run_on_loop(run_roles(args), args.event_loop)

    run.set_defaults(func=handler)
