"""`varmor profile render FILE [--check]`: policy YAML in, profile text out, no cluster."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from varmor import settings
from varmor.pipeline import CompileError, compile_policy
from varmor.policy import DEFAULT_INSTALL_NAMESPACE


def register(sub: Any) -> None:
    parser = sub.add_parser("profile", help="work with generated AppArmor profiles")
    profile_sub = parser.add_subparsers(dest="profile_command", metavar="ACTION", required=True)
    render = profile_sub.add_parser("render", help="print the AppArmor profile for a policy")
    render.add_argument("file", help="VarmorPolicy or VarmorClusterPolicy YAML ('-' for stdin)")
    render.add_argument(
        "--check",
        action="store_true",
        help="also compile it with apparmor_parser under the pinned ABI (no rule dropped)",
    )
    settings.add_budget_arguments(render)  # --check compiles under the roles' budget, same flags
    render.add_argument(
        "--install-namespace",
        default=DEFAULT_INSTALL_NAMESPACE,
        help="varmor's namespace, used in cluster policies' profile names",
    )
    render.set_defaults(func=_render)


def _load(path: str) -> Any:
    if path == "-":
        return yaml.safe_load(sys.stdin)
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _render(args: argparse.Namespace) -> int:
    try:
        doc = _load(args.file)
    except (OSError, yaml.YAMLError) as exc:
        print(f"error: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    try:
        built = compile_policy(doc, args.install_namespace).profile
    except CompileError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    for warning in built.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.check:
        from varmor.parser import compile_check

        budget = settings.budget_from_args(args)
        result = compile_check({built.name: built.text}, budget=budget)[built.name]
        if result.exceeded:
            print(
                f"error: {result.message} ({result.reason}); raise --compile-cpu-seconds/--compile-memory-mib",
                file=sys.stderr,
            )
            return 1
        if not result.ok:
            print(f"error: apparmor_parser rejected the profile:\n{result.message}", file=sys.stderr)
            return 1
    sys.stdout.write(built.text)
    return 0
