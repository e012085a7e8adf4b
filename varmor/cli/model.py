"""`varmor model show|export|accept POLICY`: a policy's behaviour model, for people.

- `show` prints the model as the AppArmor rules a DefenseInDepth profile would allow, with
  the nodes and record counts behind it (and lost records: a model learnt while the kernel
  dropped records may lack behaviour);
- `export` prints a ready DefenseInDepth policy: by default the same policy switched in
  place (`profileType: BehaviorModel`, enforcing this cluster's model once applied), or
  with `--custom` a self-contained one holding the rules as its `customProfile`, to review
  or take to another cluster;
- `accept` lets a DefenseInDepth policy enforce the model as it is now: it writes the
  model's digest into the policy's `varmor.org/accept-model` annotation.

`show --file` reads an ArmorProfileModel from a file (`kubectl get -o yaml`) instead of the cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import yaml

from varmor import api
from varmor.behavior.codec import decode_model_data
from varmor.behavior.model import Behavior, WireError, digest
from varmor.behavior.profile import check_rule, model_rules
from varmor.cli.inputs import read_input
from varmor.events import printable
from varmor.models.policy import MAX_CUSTOM_PROFILE
from varmor.policy import DEFAULT_INSTALL_NAMESPACE


class ModelError(Exception):
    """Why there is no model to show (exit status 1)."""


def register(sub: Any) -> None:
    parser = sub.add_parser("model", help="show, export or accept a policy's behaviour model")
    actions = parser.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    for action, text in (
        ("show", "print the model as AppArmor rules, with where it came from"),
        ("export", "print a ready DefenseInDepth policy enforcing the model"),
        ("accept", "let a DefenseInDepth policy enforce the model as it is now"),
    ):
        p = actions.add_parser(action, help=text)
        p.add_argument("policy", help="the policy's name")
        p.add_argument("-n", "--namespace", default="default", help="a VarmorPolicy's namespace")
        p.add_argument("--cluster", action="store_true", help="a VarmorClusterPolicy")
        p.add_argument("--install-namespace", default=DEFAULT_INSTALL_NAMESPACE, help="varmor's namespace")
        p.add_argument("--kubeconfig", default=None)
        if action == "show":
            p.add_argument("--file", help="read the ArmorProfileModel from this file ('-': stdin), not the cluster")
        if action == "export":
            p.add_argument("--custom", action="store_true", help="inline the rules as a customProfile")
        if action == "accept":
            p.add_argument(
                "--sha256", required=True, help="the digest of the model you reviewed (printed by `varmor model show`)"
            )
        p.set_defaults(func=_run)


def _resource(args: argparse.Namespace) -> api.Resource:
    return api.VARMOR_CLUSTER_POLICY if args.cluster else api.VARMOR_POLICY


async def _fetch(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The policy and its model (None when it has none yet)."""
    from varmor.kube import paths
    from varmor.kube.client import ApiException, new_api_client
    from varmor.kube.kube import Kube

    api_client = await new_api_client(args.kubeconfig)
    try:
        kube = Kube(api_client, component="cli")
        ns = None if args.cluster else args.namespace
        try:
            policy: dict[str, Any] = await kube.request("GET", paths.custom_path(_resource(args), ns, args.policy))
        except ApiException as exc:
            raise ModelError(f"{_resource(args).kind} {args.policy}: {exc.reason or exc.status}") from None
        if args.model_command == "accept":
            return policy, None
        name = api.profile_name(ns, args.policy, args.install_namespace)
        model_ns = args.install_namespace if args.cluster else args.namespace
        try:
            model: dict[str, Any] = await kube.request(
                "GET", paths.custom_path(api.ARMOR_PROFILE_MODEL, model_ns, name)
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            return policy, None
        return policy, model
    finally:
        await api_client.close()


def _behavior(model: dict[str, Any]) -> Behavior:
    try:
        behavior = decode_model_data(model)
    except (WireError, ValueError) as exc:
        raise ModelError(f"the model is corrupt: {exc}") from None
    return Behavior(rules={r: c for r, c in behavior.rules.items() if check_rule(r) is None})


def _text(value: Any) -> str:
    """Any value of the model as one line a terminal shows as written: nodes and agents
    wrote it, so control and format characters are escaped, never interpreted."""
    return printable(str(value))


def show_text(model: dict[str, Any]) -> str:
    status = model.get("status") or {}
    behavior = _behavior(model)
    meta = model.get("metadata") or {}
    lines = [
        f"# ArmorProfileModel {_text(meta.get('namespace'))}/{_text(meta.get('name'))}: {len(behavior)} rules "
        f"from {_text(status.get('records', 0))} records; digest {digest(behavior)}",
    ]
    for node in status.get("nodes") or []:
        refused = f", {_text(node.get('refusedRules'))} rules refused" if node.get("refusedRules") else ""
        refused += f"; NOT MERGED: {_text(node['refused'])}" if node.get("refused") else ""
        lines.append(
            f"#   node {_text(node.get('nodeName'))}: {_text(node.get('rules', 0))} rules, "
            f"{_text(node.get('records', 0))} records, {_text(node.get('excludedRecords', 0))} excluded, "
            f"{_text(node.get('lostRecords', 0))} lost{refused}"
        )
    for pod in status.get("pods") or []:
        where = _text(f"{pod.get('namespace')}/{pod.get('name')}" if pod.get("name") else pod.get("namespace"))
        container = (
            f" container {_text(pod.get('container'))} ({_text(pod.get('image'))})" if pod.get("container") else ""
        )
        lines.append(f"#   pod {where}{container}: {_text(pod.get('records', 0))} records")
    if status.get("lostRecords"):
        lines.append(
            f"# WARNING: {_text(status['lostRecords'])} audit records were lost while modelling: the model may "
            "lack behaviour (see docs/modeling.md, lost records)"
        )
    for cond in status.get("conditions") or []:
        if cond.get("status") == "False":
            lines.append(
                f"# WARNING: {_text(cond.get('type'))} {_text(cond.get('reason'))}: {_text(cond.get('message'))}"
            )
    return "\n".join([*lines, *model_rules(behavior)]) + "\n"


def export_document(policy: dict[str, Any], model: dict[str, Any] | None, custom: bool) -> dict[str, Any]:
    """The policy switched to DefenseInDepth (its target and options kept). BehaviorModel:
    it accepts the digest of the model exported, so the switch enforces what was reviewed,
    or nothing if the model changed meanwhile."""
    meta = policy.get("metadata") or {}
    spec = dict(policy.get("spec") or {})
    apparmor: dict[str, Any] = {"profileType": "BehaviorModel"}
    if custom:
        if model is None:
            raise ModelError("no model to inline")
        text = "\n".join(model_rules(_behavior(model))) + "\n"
        if len(text) > MAX_CUSTOM_PROFILE:
            raise ModelError(
                f"the rules are {len(text)} bytes; a customProfile holds at most {MAX_CUSTOM_PROFILE}: "
                "export without --custom (the policy then enforces the cluster's model)"
            )
        apparmor = {"profileType": "Custom", "customProfile": text}
    spec["policy"] = {"enforcer": "AppArmor", "mode": "DefenseInDepth", "defenseInDepth": {"appArmor": apparmor}}
    out_meta: dict[str, Any] = {k: meta[k] for k in ("name", "namespace") if k in meta}
    if not custom and model is not None:
        out_meta["annotations"] = {api.ACCEPT_MODEL_ANNOTATION: digest(_behavior(model))}
    kind = policy.get("kind") or api.VARMOR_POLICY.kind
    return {"apiVersion": api.API_VERSION, "kind": kind, "metadata": out_meta, "spec": spec}


async def _accept(args: argparse.Namespace, policy: dict[str, Any]) -> str:
    from varmor.kube import paths
    from varmor.kube.client import new_api_client
    from varmor.kube.kube import MERGE_PATCH, Kube

    sha = ((policy.get("status") or {}).get("model") or {}).get("sha256")
    if not sha:
        raise ModelError(f"{args.policy} reports no model (status.model.sha256); nothing to accept")
    if sha != args.sha256:
        raise ModelError(
            f"the model is now {sha}, not the {args.sha256} you reviewed: `varmor model show` it again, then accept"
        )
    api_client = await new_api_client(args.kubeconfig)
    try:
        kube = Kube(api_client, component="cli")
        path = paths.custom_path(_resource(args), None if args.cluster else args.namespace, args.policy)
        body = {"metadata": {"annotations": {api.ACCEPT_MODEL_ANNOTATION: sha}}}
        await kube.request("PATCH", path, body=body, content_type=MERGE_PATCH)
    finally:
        await api_client.close()
    return str(sha)


def _run(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "file", None):
            try:
                model = yaml.safe_load(read_input(args.file))
            except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
                raise ModelError(f"{args.file} is not a readable ArmorProfileModel: {type(exc).__name__}") from None
            if not isinstance(model, dict):
                raise ModelError(f"{args.file} holds no ArmorProfileModel")
            stub = {"kind": _resource(args).kind, "metadata": {"name": args.policy, "namespace": args.namespace}}
            policy: dict[str, Any] = stub
        else:
            policy, fetched = asyncio.run(_fetch(args))
            model = fetched if fetched is not None else {}
        if args.model_command == "accept":
            print(f"{args.policy} now enforces model {asyncio.run(_accept(args, policy))}")
            return 0
        if not model:
            raise ModelError(f"{args.policy} has no behaviour model yet: run it in BehaviorModeling mode first")
        if args.model_command == "show":
            sys.stdout.write(show_text(model))
        else:
            sys.stdout.write(yaml.safe_dump(export_document(policy, model, args.custom), sort_keys=False))
    except (ModelError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
