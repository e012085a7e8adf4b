"""`varmor` command line: one entry point, subcommands registered by each component."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from varmor import __version__

# Each module exposes `register(subparsers)`; a subcommand sets `func` on its parser.
SUBCOMMAND_MODULES = (
    "varmor.rules.cli",
    "varmor.profile.cli",
    "varmor.crdgen",
    "varmor.dev.cli",
    "varmor.app",
    "varmor.webhook.cli",
)

Handler = Callable[[argparse.Namespace], int]


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The full CLI; for `varmor run ...` only the run command is registered, so a
    long-running process does not import (and keep in memory) every other subcommand."""
    parser = argparse.ArgumentParser(
        prog="varmor", description="Kubernetes-native AppArmor sandboxing: pick rules, not profiles."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=lambda _args: print(__version__) or 0)
    args = list(sys.argv[1:] if argv is None else argv)
    serving = bool(args) and args[0] == "run"
    for name in SUBCOMMAND_MODULES:
        if serving and name != "varmor.app":
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # component not built yet
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
