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


# A place a selector policy is indexed under: (key, value) for an object label `key=value`,
# (key, None) for any object carrying `key`.
_Slot = tuple[str, str | None]
_Entry = tuple[int, Candidate]  # (position in its group, candidate): keeps the linear scan's order


def _choices(selector: LabelSelector) -> list[tuple[_Slot, ...]]:
    """The ways the selector's required labels can index it: every matchLabels pair, every
    `In` (one slot per value: an object has one value for the key), every `Exists`. `NotIn`
    and `DoesNotExist` require no label, so a selector of only those cannot be indexed."""
    out: list[tuple[_Slot, ...]] = [((k, v),) for k, v in selector.match_labels]
    for req in selector.match_expressions:
        if req.operator == "In":
            out.append(tuple((req.key, v) for v in dict.fromkeys(req.values)))
        elif req.operator == "Exists":
            out.append(((req.key, None),))
    return out


class _Group:
    """One (kind, namespace)'s candidates, bucketed so that an object meets only those that
    can match it: name targets by name, selector policies under their least common required
    label (so a label most policies share does not make a crowded bucket), and the few that
    cannot be indexed always."""

    __slots__ = ("always", "by_key", "by_name", "by_value", "candidates")

    def __init__(self, candidates: tuple[Candidate, ...]) -> None:
        self.candidates = candidates
        choices = [_choices(c.label_selector) if c.label_selector is not None else [] for c in candidates]
        seen: dict[_Slot, int] = {}
        for options in choices:
            for option in options:
                for slot in option:
                    seen[slot] = seen.get(slot, 0) + 1
        always: list[_Entry] = []
        by_name: dict[str, list[_Entry]] = {}
        by_value: dict[str, dict[str, list[_Entry]]] = {}
        by_key: dict[str, list[_Entry]] = {}
        for entry, options in zip(enumerate(candidates), choices, strict=True):
            cand = entry[1]
            if cand.target_name is not None:
                by_name.setdefault(cand.target_name, []).append(entry)
            elif not options:
                always.append(entry)
            else:
                for key, value in _rarest(options, seen):
                    if value is None:
                        by_key.setdefault(key, []).append(entry)
                    else:
                        by_value.setdefault(key, {}).setdefault(value, []).append(entry)
        self.always = tuple(always)
        self.by_name = {k: tuple(v) for k, v in by_name.items()}
        self.by_value = {k: {v: tuple(e) for v, e in vs.items()} for k, vs in by_value.items()}
        self.by_key = {k: tuple(v) for k, v in by_key.items()}

    def gather(self, meta: ObjectMeta | None, out: list[_Entry]) -> None:
        """Append the candidates that can match an object with this metadata (each once)."""
        start = len(out)
        out += self.always
        if meta is not None:
            if self.by_name and (named := self.by_name.get(meta.name)):
                out += named
            if labels := meta.labels:
                by_value, by_key = self.by_value, self.by_key
                for key, value in labels.items():
                    if (values := by_value.get(key)) is not None and (hit := values.get(value)):
                        out += hit
                    if by_key and (hit := by_key.get(key)):
                        out += hit
        if len(out) - start > 1:
            out[start:] = sorted(out[start:], key=_position)


def _rarest(options: list[tuple[_Slot, ...]], seen: dict[_Slot, int]) -> tuple[_Slot, ...]:
    """The option whose slots the fewest selectors of the group share (the first of equals)."""
    best, least = options[0], -1
    for option in options:
        cost = 0
        for slot in option:
            cost += seen[slot]
        if least < 0 or cost < least:
            best, least = option, cost
    return best


def _position(entry: _Entry) -> int:
    return entry[0]


class PolicyIndex:
    """Policies pre-parsed and indexed by kind, namespace and label, for the admission hot path.

    Only cluster policies of the kind and namespaced policies of the request's namespace are
    looked at, and of those only the ones indexed under one of the object's labels (or its
    name), plus selectors that require no label: admission cost grows with the policies
    that can match an object, not with the policies. The selection is exactly the linear
    scan's (`_select` over `candidates`).

    Built in O(policies). `previous` (the index this one replaces) lets a rebuild reuse
    the candidates of policy objects it has already parsed (the informer replaces a changed
    policy's object, never edits it in place) and the groups whose candidates are all the
    same: one changed policy costs one parse and one group's bucketing.
    """

    def __init__(self, policies: Iterable[Mapping[str, Any]] = (), previous: PolicyIndex | None = None) -> None:
        known: dict[int, Candidate] = previous._parsed if previous is not None else {}
        parsed: dict[int, Candidate] = {}
        grouped: dict[tuple[str, str], list[Candidate]] = {}
        for policy in policies:
            cand = known.get(id(policy))  # `previous` keeps those objects alive: the ids are theirs
            if cand is None:
                cand = candidate_from(policy)
                if cand is None:
                    continue
            parsed[id(policy)] = cand
            grouped.setdefault((cand.kind, cand.namespace), []).append(cand)
        self._parsed: dict[int, Candidate] = parsed
        self._groups = {k: tuple(v) for k, v in grouped.items()}
        before = previous._index if previous is not None else {}
        self._index: dict[tuple[str, str], _Group] = {
            k: _reuse(before.get(k), v) or _Group(v) for k, v in self._groups.items()
        }

    def candidates(self, kind: str, namespace: str) -> tuple[Candidate, ...]:
        """Every candidate of the kind for the namespace (cluster ones first): the linear scan's input."""
        cluster = self._groups.get((kind, ""), ())
        return cluster + self._groups.get((kind, namespace), ()) if namespace else cluster

    def select(self, kind: str, obj: Mapping[str, Any] | ObjectView, namespace: str) -> Selection:
        view = view_of(obj)
        meta = view.metadata
        found: list[_Entry] = []
        if (cluster := self._index.get((kind, ""))) is not None:
            cluster.gather(meta, found)
        if namespace and (local := self._index.get((kind, namespace))) is not None:
            local.gather(meta, found)
        return _select([c for _, c in found], kind, view, namespace)

    def __len__(self) -> int:
        return sum(len(v) for v in self._groups.values())


def _reuse(group: _Group | None, candidates: tuple[Candidate, ...]) -> _Group | None:
    """`group` if it was built from exactly these candidate objects, in this order."""
    if group is None or len(group.candidates) != len(candidates):
        return None
    return group if all(a is b for a, b in zip(group.candidates, candidates, strict=True)) else None
