"""Which policy applies to an object (pure): the precedence the webhook, the leader's
rollouts and the unprotected-workload audit share.

Precedence (never map order): cluster policies before namespaced ones; within a tier a
`target.name` match beats a `target.selector` match; remaining ties go to the oldest
policy (creationTimestamp), then namespace, name and uid, so adding a policy never
steals a workload from an existing one. Only policies whose `status.profileName` is set
(the leader accepted them) can win; matching policies without it are reported as pending.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from varmor import api
from varmor.admission.objects import ObjectMeta, ObjectView, view_of
from varmor.admission.selector import LabelPredicate, LabelSelector, SelectorError

_NO_LABELS: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class Candidate:
    """A policy reduced to what matching needs; built once per policy version."""

    cluster: bool
    namespace: str  # "" for cluster policies
    name: str
    uid: str
    created: str
    kind: str
    target_name: str | None
    selector: LabelPredicate | None = field(compare=False, repr=False)
    containers: tuple[str, ...]
    profile_name: str | None
    policy: Mapping[str, Any] = field(compare=False, repr=False)
    label_selector: LabelSelector | None = None  # parsed; `selector` is its predicate
    allow_opt_out: bool = False  # spec.policy.allowOptOut

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    def matches(self, kind: str, meta: ObjectMeta | None, namespace: str) -> bool | None:
        """None if it does not match, else True for a name match and False for a selector match."""
        if kind != self.kind or (not self.cluster and namespace != self.namespace):
            return None
        if self.target_name is not None:
            return True if meta is not None and meta.name == self.target_name else None
        labels = meta.labels if meta is not None else None
        if self.selector is not None and self.selector(labels or _NO_LABELS):
            return False
        return None


def candidate_from(policy: Mapping[str, Any]) -> Candidate | None:
    """A Candidate, or None for a policy too malformed to ever match anything."""
    meta = policy.get("metadata") or {}
    spec = policy.get("spec") or {}
    target = spec.get("target") if isinstance(spec, dict) else None
    if not isinstance(meta, dict) or not isinstance(target, dict):
        return None
    kind = target.get("kind")
    if kind not in api.TARGET_KINDS or not isinstance(meta.get("name"), str):
        return None
    target_name = target.get("name")
    label_selector: LabelSelector | None = None
    if target_name is not None:
        if not isinstance(target_name, str) or not target_name or target.get("selector") is not None:
            return None
    else:
        try:
            label_selector = LabelSelector.parse(target.get("selector"))
        except SelectorError:
            return None
    containers = target.get("containers") or []
    if not isinstance(containers, list) or not all(isinstance(c, str) for c in containers):
        return None
    rules = spec.get("policy")
    allow_opt_out = isinstance(rules, dict) and rules.get("allowOptOut") is True
    status = policy.get("status")
    profile = status.get("profileName") if isinstance(status, dict) else None
    cluster = policy.get("kind") == api.VARMOR_CLUSTER_POLICY.kind
    return Candidate(
        cluster=cluster,
        namespace="" if cluster else str(meta.get("namespace") or ""),
        name=meta["name"],
        uid=str(meta.get("uid") or ""),
        created=str(meta.get("creationTimestamp") or ""),
        kind=kind,
        target_name=target_name,
        selector=label_selector.predicate() if label_selector is not None else None,
        label_selector=label_selector,
        containers=tuple(containers),
        profile_name=profile if isinstance(profile, str) and profile else None,
        policy=policy,
        allow_opt_out=allow_opt_out,
    )


@dataclass(slots=True)
class Match:
    candidate: Candidate
    by_name: bool

    @property
    def rank(self) -> tuple[int, int, str, str, str, str]:
        c = self.candidate
        return (0 if c.cluster else 1, 0 if self.by_name else 1, c.created, c.namespace, c.name, c.uid)


@dataclass(slots=True)
class Selection:
    """The winning policy (if any), the other eligible matches, and matches still pending."""

    winner: Match | None
    losers: tuple[Match, ...] = ()
    pending: tuple[Match, ...] = ()

    @property
    def selected(self) -> bool:
        return self.winner is not None or bool(self.pending)


def _select(candidates: Iterable[Candidate], kind: str, obj: ObjectView, namespace: str) -> Selection:
    eligible: list[Match] = []
    pending: list[Match] = []
    meta = obj.metadata
    for cand in candidates:
        by_name = cand.matches(kind, meta, namespace)
        if by_name is None:
            continue
        (eligible if cand.profile_name else pending).append(Match(cand, by_name))
    if not pending and len(eligible) == 1:  # the common case
        return Selection(eligible[0])
    if len(pending) > 1:
        pending.sort(key=lambda m: m.rank)
    if not eligible:
        return Selection(None, (), tuple(pending))
    if len(eligible) > 1:
        eligible.sort(key=lambda m: m.rank)
    return Selection(eligible[0], tuple(eligible[1:]), tuple(pending))


def select_policy(
    policies: Iterable[Mapping[str, Any]], kind: str, obj: Mapping[str, Any] | ObjectView, namespace: str
) -> Selection:
    """Pick the policy for `obj` (of `kind`, in `namespace`) from raw policy objects."""
    cands = (c for c in map(candidate_from, policies) if c is not None)
    return _select(cands, kind, view_of(obj), namespace)


class PolicyIndex:
    """Policies pre-parsed and grouped by (kind, namespace), for the admission hot path.

    Only cluster policies of the kind and namespaced policies of the request's namespace
    are ever examined, so admission cost does not grow with policies elsewhere.
    """

    def __init__(self, policies: Iterable[Mapping[str, Any]] = ()) -> None:
        grouped: dict[tuple[str, str], list[Candidate]] = {}
        for policy in policies:
            cand = candidate_from(policy)
            if cand is not None:
                grouped.setdefault((cand.kind, cand.namespace), []).append(cand)
        self._groups = {k: tuple(v) for k, v in grouped.items()}

    def candidates(self, kind: str, namespace: str) -> tuple[Candidate, ...]:
        cluster = self._groups.get((kind, ""), ())
        return cluster + self._groups.get((kind, namespace), ()) if namespace else cluster

    def select(self, kind: str, obj: Mapping[str, Any] | ObjectView, namespace: str) -> Selection:
        return _select(self.candidates(kind, namespace), kind, view_of(obj), namespace)

    def __len__(self) -> int:
        return sum(len(v) for v in self._groups.values())
