"""Selected-but-unprotected workloads: the fail-open gap the webhook cannot see itself, and
the containers their owners opted out.

When the webhook is down and failurePolicy is Ignore, the API server admits workloads
without asking; only looking at what exists reveals it. A container opted out (allowed by
the policy or not) runs unconfined, so it counts as unprotected too, with the reason in
the example the condition message names. `audit` is pure (same planner
as the webhook); `collect` lists the workloads of the kinds and namespaces that have
policies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes.aio import client

from varmor import api
from varmor.admission.objects import ObjectView, view_of
from varmor.admission.planner import PlanError, effective_localhost, plan, pod_parts
from varmor.admission.registration import scopes
from varmor.admission.selection import PolicyIndex
from varmor.kube import paths
from varmor.kube.client import list_all
from varmor.reconcile.findings import Findings

PolicyKey = tuple[str, str]  # (namespace or "" for cluster policies, name)


def unprotected_reason(
    kind: str,
    obj: Mapping[str, Any] | ObjectView,
    profile: str,
    containers: Sequence[str] = (),
    allow_opt_out: bool = False,
) -> str | None:
    """Why a container the policy covers (every kind: regular, init, sidecar, ephemeral)
    runs without `profile`, or None when all of them run under it. An opted-out container
    is unprotected whether or not the policy allows opting out (`allow_opt_out` only words
    the reason)."""
    try:
        view = view_of(obj)
        result = plan(kind, view, profile, containers, use_field=True, allow_opt_out=True)
        meta, spec = pod_parts(kind, view)
    except PlanError as exc:
        return f"not shaped like a {kind}: {exc}"
    if result.unsupported or spec is None:
        return result.unsupported or "no pod template"
    if result.opted_out:
        how = "allowed by spec.policy.allowOptOut" if allow_opt_out else "the policy does not allow it"
        return f"container {result.opted_out[0]} opted out ({how})"
    confined = set(result.confined)
    for label, group in (
        ("container", spec.containers),
        ("init container", spec.init_containers),
        ("ephemeral container", spec.ephemeral_containers),
    ):
        for container in group or ():
            if container.name in confined and (effective := effective_localhost(meta, spec, container)) != profile:
                return f"{label} {container.name} runs " + (f"under {effective}" if effective else "without a profile")
    return None


def is_protected(kind: str, obj: Mapping[str, Any] | ObjectView, profile: str, containers: Sequence[str] = ()) -> bool:
    """Every container the policy covers runs under `profile`; opted-out ones never count."""
    return unprotected_reason(kind, obj, profile, containers) is None


def _live(kind: str, obj: Mapping[str, Any]) -> bool:
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return False
    return not (kind == "Pod" and (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"))


@dataclass(frozen=True)
class AuditResult:
    per_policy: dict[PolicyKey, int] = field(default_factory=dict)
    per_kind: dict[str, int] = field(default_factory=dict)
    examples: dict[PolicyKey, tuple[str, ...]] = field(default_factory=dict)
    # Per policy: live workloads it selects that another policy wins (precedence), with examples.
    lost: dict[PolicyKey, int] = field(default_factory=dict)
    lost_examples: dict[PolicyKey, tuple[str, ...]] = field(default_factory=dict)


def _note(counts: dict[PolicyKey, int], examples: dict[PolicyKey, list[str]], key: PolicyKey, ref: str) -> None:
    counts[key] = counts.get(key, 0) + 1
    refs = examples.setdefault(key, [])
    if len(refs) < 5:
        refs.append(ref)


def audit(
    policies: Iterable[Mapping[str, Any]],
    workloads: Mapping[str, Iterable[Mapping[str, Any]]],
    excluded_namespaces: Iterable[str] = ("kube-system",),
) -> AuditResult:
    """Count, per policy, the live workloads it wins that do not carry its profile, and
    the ones it selects but loses to a policy that takes precedence."""
    policies = list(policies)
    index = PolicyIndex(policies)
    excluded = set(excluded_namespaces)
    per_policy: dict[PolicyKey, int] = {}
    per_kind: dict[str, int] = {k: 0 for k in api.TARGET_KINDS}
    examples: dict[PolicyKey, list[str]] = {}
    lost: dict[PolicyKey, int] = {}
    lost_examples: dict[PolicyKey, list[str]] = {}
    for kind, objs in workloads.items():
        for obj in objs:
            meta = obj.get("metadata") or {}
            namespace = meta.get("namespace") or ""
            if namespace in excluded or not _live(kind, obj):
                continue
            try:
                view = view_of(obj)
            except PlanError:
                continue  # not a workload the API server could have stored; nothing to protect
            sel = index.select(kind, view, namespace)
            ref = f"{kind} {namespace}/{meta.get('name')}"
            for loser in sel.losers:
                _note(lost, lost_examples, loser.candidate.key, ref)
            if sel.winner is not None:
                cand = sel.winner.candidate
                assert cand.profile_name is not None
                why = unprotected_reason(kind, view, cand.profile_name, cand.containers, cand.allow_opt_out)
                if why is None:
                    continue
                ref = f"{ref}: {why}"
            elif sel.pending:
                cand = sel.pending[0].candidate
            else:
                continue
            _note(per_policy, examples, cand.key, ref)
            per_kind[kind] += 1
    for policy in policies:  # zero counts too, so a fixed gap is reported as fixed
        meta = policy.get("metadata") or {}
        cluster = policy.get("kind") == api.VARMOR_CLUSTER_POLICY.kind
        key = ("" if cluster else str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        per_policy.setdefault(key, 0)
        lost.setdefault(key, 0)
    return AuditResult(
        per_policy,
        per_kind,
        {k: tuple(v) for k, v in examples.items()},
        lost,
        {k: tuple(v) for k, v in lost_examples.items()},
    )


async def collect(
    api_client: client.ApiClient, policies: Iterable[Mapping[str, Any]], excluded_namespaces: Iterable[str]
) -> dict[str, list[Any]]:
    """The workloads of every kind and namespace some policy could select."""
    excluded = set(excluded_namespaces)
    out: dict[str, list[Any]] = {}
    for kind, namespaces in sorted(scopes(policies).items()):
        if namespaces is None:
            out[kind] = await list_all(api_client, paths.workload_path(kind))
        else:
            out[kind] = []
            for ns in sorted(namespaces - excluded):
                out[kind] += await list_all(api_client, paths.workload_path(kind, ns))
    return out


def findings_of(result: AuditResult, key: tuple[str, str, str]) -> Findings:
    """One policy's findings; `key` is the controller's (kind, namespace or "", name)."""
    short: PolicyKey = (key[1], key[2])
    return Findings(
        unprotected=result.per_policy.get(short, 0),
        unprotected_examples=tuple(result.examples.get(short, ())),
        lost=result.lost.get(short, 0),
        lost_examples=tuple(result.lost_examples.get(short, ())),
    )
