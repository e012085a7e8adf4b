"""`varmor rules list [--json]`: the built-in catalog, for people and for tooling."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from varmor.rules import load_catalog


def register(sub: Any) -> None:
    parser = sub.add_parser("rules", help="inspect the built-in rule catalog")
    rules_sub = parser.add_subparsers(dest="rules_command", metavar="ACTION", required=True)
    list_parser = rules_sub.add_parser("list", help="list built-in rules")
    list_parser.add_argument("--json", action="store_true", help="print JSON (a list of rules)")
    list_parser.set_defaults(func=_list)


def _list(args: argparse.Namespace) -> int:
    catalog = load_catalog()
    if args.json:
        json.dump([rule.as_dict() for rule in catalog], sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    width = max(len(rule.id) for rule in catalog)
    for rule in catalog:
        marks = []
        if rule.aliases:
            marks.append("alias " + ", ".join(rule.aliases))
        if not rule.enforceable:
            marks.append("NOT ENFORCED by AppArmor")
        elif rule.warning:
            marks.append("see warning")
        extra = f"  [{'; '.join(marks)}]" if marks else ""
        print(f"{rule.id:<{width}}  {rule.category:<17}  {rule.title}{extra}")
    return 0
