"""What the shell hands each role: its parsed flags, the shared API client, and the
readiness checks it registers. Lives below the roles so they can type it without
importing the shell."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the shell imports this before it needs (or loads) the client
    from kubernetes.aio import client

    from varmor.kube.serverversion import ServerVersion


@dataclass
class Health:
    """Readiness checks registered by roles; liveness is the loop answering at all."""

    checks: dict[str, Callable[[], bool]] = field(default_factory=dict)

    def add(self, name: str, check: Callable[[], bool]) -> None:
        self.checks[name] = check

    def failing(self) -> list[str]:
        return sorted(name for name, check in self.checks.items() if not check())


@dataclass(frozen=True)
class RoleContext:
    args: argparse.Namespace
    api_client: client.ApiClient
    health: Health
    roles: frozenset[str]
    server: ServerVersion  # the API server's release, kept current by the shell
