"""The admission index picks exactly what the linear scan over every policy picks, and
meets only the policies that can match the object."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests import helpers
from varmor.admission.objects import ObjectMeta, view_of
from varmor.admission.selection import PolicyIndex, _select, candidate_from

KEYS = ["app", "x"]
VALUES = ["web", ""]  # small pools: matches, shared buckets and rank ties are common

requirements_st = st.one_of(
    st.builds(
        lambda key, op, values: {"key": key, "operator": op, "values": values},
        st.sampled_from(KEYS),
        st.sampled_from(["In", "NotIn"]),
        st.lists(st.sampled_from([*VALUES, "db"]), min_size=1, max_size=3),  # repeated values included
    ),
    st.builds(
        lambda key, op: {"key": key, "operator": op}, st.sampled_from(KEYS), st.sampled_from(["Exists", "DoesNotExist"])
    ),
)
selectors_st = st.builds(
    lambda labels, exprs: {
        **({"matchLabels": labels} if labels else {}),
        **({"matchExpressions": exprs} if exprs else {}),
    },
    st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2),
    st.lists(requirements_st, max_size=3),
)


@st.composite
def policies_st(draw: st.DrawFn) -> dict[str, Any]:
    """A policy of any shape precedence looks at; names, uids and timestamps come from small
    pools so that ties (even whole-rank ties) happen."""
    cluster = draw(st.booleans())
    namespace = None if cluster else draw(st.sampled_from(["team-a", "team-b"]))
    kind = draw(st.sampled_from(["Pod", "Deployment"]))
    name = draw(st.sampled_from(["p", "q"]))
    meta = {
        "uid": draw(st.sampled_from(["u1", ""])),
        "creationTimestamp": draw(st.sampled_from(["2026-01-01T00:00:00Z", ""])),
    }
    profile = draw(st.sampled_from([None, f"varmor-{name}", "other"]))
    if draw(st.integers(0, 4)) == 0:
        target = {"kind": kind, "name": draw(st.sampled_from(["web", "db"]))}
    else:
        target = {"kind": kind, "selector": draw(selectors_st)}
    if draw(st.booleans()):
        target["containers"] = draw(st.lists(st.sampled_from(["a", "b"]), max_size=2))
    return helpers.policy(name, namespace, kind, cluster=cluster, target=target, profile=profile, meta=meta)


@st.composite
def objects_st(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.integers(0, 9)) == 0:
        return {}  # no metadata at all
    labels = draw(st.none() | st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2))
    return {
        "metadata": {"name": draw(st.sampled_from(["web", ""])), **({"labels": labels} if labels is not None else {})}
    }


def _in(values: list[str], profile: str) -> dict[str, Any]:
    target = {"kind": "Pod", "selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": values}]}}
    return helpers.policy("p", "team-a", "Pod", target=target, profile=profile)


def _exists(key: str, profile: str) -> dict[str, Any]:
    target = {"kind": "Pod", "selector": {"matchExpressions": [{"key": key, "operator": "Exists"}]}}
    return helpers.policy("p", "team-a", "Pod", target=target, profile=profile)


WEB = {"metadata": {"labels": {"app": "web"}}}
WEB_X = {"metadata": {"labels": {"app": "web", "x": ""}}}


def linear(policies: list[dict[str, Any]], kind: str, obj: dict[str, Any], namespace: str) -> Any:
    """The reference: every candidate, in the order given, through the precedence rules."""
    cands = [c for c in map(candidate_from, policies) if c is not None]
    return _select(cands, kind, view_of(obj), namespace)


@settings(max_examples=600, deadline=None)
@given(
    policies=st.lists(policies_st(), max_size=14),
    obj=objects_st(),
    kind=st.sampled_from(["Pod", "Deployment"]),
    namespace=st.sampled_from(["team-a", "team-a", "team-b", "other", ""]),
)
@example([_in(["web", "web"], "x")], WEB, "Pod", "team-a")  # a value repeated in `In`
@example([_exists("x", "a"), _in(["web"], "b")], WEB_X, "Pod", "team-a")  # a whole-rank tie across buckets
def test_the_index_selects_what_the_linear_scan_selects(
    policies: list[dict[str, Any]], obj: dict[str, Any], kind: str, namespace: str
) -> None:
    """Winner, losers (in precedence order) and pending policies alike."""
    got = PolicyIndex(policies).select(kind, obj, namespace)
    assert got == linear(policies, kind, obj, namespace)


@settings(max_examples=300, deadline=None)
@given(
    before=st.lists(policies_st(), max_size=10),
    changes=st.lists(st.tuples(st.sampled_from(["replace", "drop", "add"]), st.integers(0, 9), policies_st())),
    obj=objects_st(),
    namespace=st.sampled_from(["team-a", "team-b"]),
)
def test_a_rebuild_from_the_previous_index_equals_a_fresh_build(
    before: list[dict[str, Any]],
    changes: list[tuple[str, int, dict[str, Any]]],
    obj: dict[str, Any],
    namespace: str,
) -> None:
    """What the webhook does on every policy change: unchanged policy objects and groups are
    reused, changed ones (new objects, as the informer delivers them) are parsed again."""
    after = list(before)
    for change, at, policy in changes:
        if change == "add":
            after.insert(min(at, len(after)), policy)
        elif after and change == "drop":
            del after[at % len(after)]
        elif after:
            after[at % len(after)] = policy
    previous = PolicyIndex(before)
    rebuilt = PolicyIndex(after, previous=previous)
    assert len(rebuilt) == len(PolicyIndex(after))
    for kind in ("Pod", "Deployment"):
        assert rebuilt.select(kind, obj, namespace) == linear(after, kind, obj, namespace)
        assert rebuilt.candidates(kind, namespace) == PolicyIndex(after).candidates(kind, namespace)


def gathered(index: PolicyIndex, kind: str, namespace: str, labels: dict[str, str], name: str = "w") -> int:
    """How many candidates of the namespace's group an object meets (what one admission costs)."""
    found: list[Any] = []
    index._index[(kind, namespace)].gather(ObjectMeta(name=name, labels=labels), found)
    return len(found)


def test_an_object_meets_only_the_policies_indexed_under_its_labels() -> None:
    """10,000 policies in one namespace, most sharing the object's `app: web`: each is indexed
    under its rarest required label, so the object meets only the one that matches, plus
    those that require no label and the name targets for its name."""
    policies = [
        helpers.policy(f"p{i}", "ns", "Pod", selector=sel, profile=f"varmor-ns-p{i}")
        for i, sel in enumerate(
            [{"matchLabels": {"app": "web", "tier": f"t{i}"}} for i in range(5000)]
            + [
                {"matchExpressions": [{"key": "app", "operator": "In", "values": [f"a{i}", f"b{i}"]}]}
                for i in range(4000)
            ]
            + [{"matchExpressions": [{"key": f"k{i}", "operator": "Exists"}]} for i in range(997)]
            + [
                {"matchLabels": {"app": "web", "tier": "front"}},
                {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["db"]}]},  # cannot be indexed
            ]
        )
    ]
    policies.append(helpers.policy("named", "ns", "Pod", target_name="w", profile="varmor-ns-named"))
    index = PolicyIndex(policies)
    assert gathered(index, "Pod", "ns", {"app": "web", "tier": "front", "pod-template-hash": "x"}) == 3
    assert gathered(index, "Pod", "ns", {"app": "web", "tier": "front"}, name="other") == 2
    assert gathered(index, "Pod", "ns", {"app": "b7", "k3": ""}, name="other") == 3  # In (either value) and Exists
    sel = index.select("Pod", {"metadata": {"name": "w", "labels": {"app": "web", "tier": "front"}}}, "ns")
    assert sel.winner is not None
    assert sel.winner.candidate.name == "named"  # a name match beats selectors
    assert [m.candidate.name for m in sel.losers] == ["p9997", "p9998"]


def test_a_rebuild_reuses_unchanged_candidates_and_groups() -> None:
    a = helpers.policy("a", "team-a", "Pod", profile="varmor-team-a-a")
    b = helpers.policy("b", "team-b", "Pod", profile="varmor-team-b-b")
    first = PolicyIndex([a, b])
    changed = copy.deepcopy(b)
    changed["spec"]["target"]["selector"] = {"matchLabels": {"app": "api"}}
    second = PolicyIndex([a, changed], previous=first)
    assert second._index[("Pod", "team-a")] is first._index[("Pod", "team-a")]
    assert second._index[("Pod", "team-b")] is not first._index[("Pod", "team-b")]
    assert second.select("Pod", {"metadata": {"labels": {"app": "api"}}}, "team-b").winner is not None
    assert second.select("Pod", {"metadata": {"labels": {"app": "b"}}}, "team-b").winner is None
