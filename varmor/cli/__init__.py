"""`varmor` command line: one entry point, subcommands registered by each component."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from varmor import __version__

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
    from varmor import app

    app.register(sub, args)
    if args and args[0] == "run":
        return parser
    # Each module exposes `register(subparsers)`; a subcommand sets `func` on its parser.
    from varmor import crdgen
    from varmor.cli import advise, cleanup, model, profile, rules
    from varmor.dev import cli as dev

    for module in (rules, profile, model, advise, crdgen, dev, cleanup):
        module.register(sub)
    return parser


def without_home() -> None:
    """Let varmor start for a user with no home: `kubernetes.aio` computes ~/.kube/config
    when it is imported (even with KUBECONFIG set) and raises when HOME is unset and the uid
    has no passwd entry, as under `runAsUser` in an image without that user. varmor never
    reads that file (it takes --kubeconfig, KUBECONFIG or the pod's ServiceAccount), so HOME
    then points at a directory that does not exist, as Debian's `nobody` has."""
    if "HOME" in os.environ:
        return
    try:
        Path.home()
    except RuntimeError:
        os.environ["HOME"] = "/nonexistent"


def main(argv: Sequence[str] | None = None) -> int:
    without_home()
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    func: Handler | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        code = int(func(args) or 0)
        sys.stdout.flush()
    except BrokenPipeError:
        return closed_pipe()
    return code


def closed_pipe() -> int:
    """The reader went away (`varmor rules list | head`): stop quietly, as Unix tools do,
    with SIGPIPE's exit status. Python would otherwise print a traceback, and a second one
    when it flushes stdout at exit; pointing stdout at /dev/null spares that flush."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
