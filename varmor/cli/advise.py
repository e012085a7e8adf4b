"""`varmor advise`: which built-in rules a workload can take, from what it was seen to do.

Offline: reads an ArmorProfileModel (YAML or JSON, as `kubectl get -o yaml` prints it) or
an agent's violations log (JSON lines), and prints the report and an EnhanceProtect
VarmorPolicy proposing every rule the behaviour does not contradict. With `-o policy`
stdout is only the policy (the report goes to stderr), so it can be piped to
`kubectl apply -f -`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

from varmor import api
from varmor.behavior.advise import Advice, Observed, advise, observe_violations, policy_document, render_report
from varmor.behavior.codec import decode_model_data
from varmor.behavior.model import Behavior, BehaviorRule, WireError
from varmor.cli.inputs import read_input
from varmor.events import printable
from varmor.pipeline import CompileError, compile_policy
from varmor.policy import DEFAULT_INSTALL_NAMESPACE, DEFAULT_NAMESPACE
from varmor.rules import load_catalog

DEFAULT_POLICY_NAME = "advised"


class InputError(Exception):
    """The input cannot be read as what it claims to be (exit status 2)."""


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "advise",
        help="propose built-in rules a recorded behaviour does not contradict",
        description="Judge every built-in rule against a behaviour model or a violations log: "
        "propose those nothing recorded contradicts, and say which recorded behaviour each "
        "left-out rule would deny. No cluster needed.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="FILE", help="an ArmorProfileModel object, YAML or JSON ('-' for stdin)")
    source.add_argument("--violations", metavar="FILE", help="the agent's violations log, JSON lines ('-' for stdin)")
    parser.add_argument("--profile", help="with --violations: only this profile's records (and its children's)")
    parser.add_argument("--policy-name", default=DEFAULT_POLICY_NAME, help="the proposed policy's name")
    parser.add_argument("--namespace", help="its namespace (default: the model's, else 'default')")
    parser.add_argument("--target-kind", default="Deployment", choices=api.TARGET_KINDS, help="the workload's kind")
    parser.add_argument("--target-name", help="the workload's name (default: the policy's name)")
    parser.add_argument("--privileged", action="store_true", help="write `privileged: true` (a privileged container)")
    parser.add_argument(
        "-o",
        "--output",
        choices=("report", "policy"),
        default="report",
        help="report: the report, then the policy (stdout); policy: only the policy on stdout, the report on stderr",
    )
    parser.set_defaults(func=_advise)


def _model(text: str) -> tuple[Behavior, str | None]:
    """The model's behaviour and its namespace."""
    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"not YAML or JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InputError("expected an ArmorProfileModel object")
    if obj.get("kind") not in (None, api.ARMOR_PROFILE_MODEL.kind, api.ARMOR_BEHAVIOR.kind):
        raise InputError(f"expected an {api.ARMOR_PROFILE_MODEL.kind}, got kind {obj.get('kind')!r}")
    try:
        behavior = decode_model_data(obj)
    except WireError as exc:
        raise InputError(f"corrupt model: {exc}") from None
    meta = obj.get("metadata")
    namespace = meta.get("namespace") if isinstance(meta, dict) else None
    return behavior, namespace if isinstance(namespace, str) else None


def _violations(text: str, profile: str | None) -> tuple[Observed, int]:
    """The observed behaviour and the number of lines that were not JSON objects (a log
    being written may end in half a line)."""
    entries: list[Any] = []
    malformed = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except ValueError:
            malformed += 1
    return observe_violations(entries, profile=profile), malformed


def _load(args: argparse.Namespace) -> tuple[Behavior, dict[BehaviorRule, str] | None, str | None, list[str]]:
    """(behaviour, example records, namespace, warnings) from --model or --violations."""
    path = args.model if args.model is not None else args.violations
    if args.model is not None and args.profile is not None:
        raise InputError("--profile selects records of a violations log; a model is one profile's already")
    try:
        text = read_input(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    if args.model is not None:
        behavior, namespace = _model(text)
        if not behavior:  # proposing every rule for nothing observed would mislead
            raise InputError(f"the model in {path} holds no behaviour yet")
        return behavior, None, namespace, []
    observed, malformed = _violations(text, args.profile)
    warnings = [f"{malformed} lines are not JSON and were skipped"] if malformed else []
    if observed.skipped:
        warnings.append(f"{observed.skipped} records show no modelled behaviour and were skipped")
    if len(observed.profiles) > 1:
        warnings.append(f"records of {len(observed.profiles)} profiles were judged together; pass --profile for one")
    if not observed.behavior:
        raise InputError(f"no behaviour in {path}" + (f" for profile {args.profile}" if args.profile else ""))
    return observed.behavior, observed.examples, None, warnings


def _policy_text(advice: Advice, doc: dict[str, Any], source: str) -> str:
    header = (
        f"# Proposed by `varmor advise` from {source}: {len(advice.proposed)} built-in rules proposed, "
        f"{len(advice.left_out)} left out (see its report).\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False)


def _advise(args: argparse.Namespace) -> int:
    try:
        behavior, examples, model_namespace, warnings = _load(args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    advice = advise(behavior, load_catalog(), examples=examples)
    target = {"kind": args.target_kind, "name": args.target_name or args.policy_name}
    namespace = args.namespace or model_namespace or DEFAULT_NAMESPACE
    doc = policy_document(advice, args.policy_name, namespace, target, privileged=args.privileged)
    try:
        compile_policy(doc, DEFAULT_INSTALL_NAMESPACE)  # the proposal is a policy varmor accepts
    except CompileError as exc:
        print(f"error: the proposed policy: {exc.message}", file=sys.stderr)
        return 2
    report = "".join(f"warning: {w}\n" for w in warnings) + render_report(advice)
    path = args.model if args.model is not None else args.violations
    policy = _policy_text(advice, doc, "stdin" if path == "-" else printable(path))
    if args.output == "policy":
        sys.stderr.write(report)
        sys.stdout.write(policy)
    else:
        sys.stdout.write(report + "\nPolicy (`-o policy` prints only this):\n" + policy)
    return 0
