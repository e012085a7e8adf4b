"""The leader's load index (`varmor/reconcile/loadindex.py`): the same answer as the
node-by-node definition, and a node's new report names only the profiles it can change."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from varmor.reconcile.liveness import Liveness
from varmor.reconcile.loadindex import ALL, LoadIndex, NodeView
from varmor.reconcile.nodecounts import aggregate, lost_message

SHA = "a" * 64
OTHER = "b" * 64
NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
LOST_AFTER = 180.0


def profile(
    name: str, rv: int, generation: int = 1, uid: str = "u", status: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "demo",
            "name": name,
            "uid": uid,
            "resourceVersion": str(rv),
            "generation": generation,
        },
        "spec": {"profile": {"sha256": SHA}},
        "status": status or {},
    }


def report(watermark: int, **exceptions: dict[str, Any]) -> dict[str, Any]:
    return {"phase": "Supported", "ready": True, "watermark": str(watermark), "exceptions": exceptions}


def index_with(*profiles: tuple[str, int]) -> LoadIndex:
    index = LoadIndex()
    for name, rv in profiles:
        index.profile(("demo", name), profile(name, rv))
    return index


def changed(index: LoadIndex, name: str, status: dict[str, Any]) -> set[tuple[str, str]] | None:
    index.node(name, status)
    return index.take_changed()


def test_a_new_watermark_names_the_profiles_whose_spec_it_passed() -> None:
    index = index_with(("varmor-demo-a", 10), ("varmor-demo-b", 20), ("varmor-demo-c", 30))
    index.take_changed()
    assert changed(index, "n1", report(10)) is ALL  # a new node: every desired count changes
    assert changed(index, "n1", report(25)) == {("demo", "varmor-demo-b")}
    assert changed(index, "n1", report(30)) == {("demo", "varmor-demo-c")}
    failing = {"state": "Failed", "namespace": "demo", "sha256": SHA[:16], "message": "boom"}
    assert changed(index, "n1", report(30, **{"varmor-demo-a": failing})) == {("demo", "varmor-demo-a")}
    assert changed(index, "n1", {**report(30, **{"varmor-demo-a": failing}), "heartbeatTime": "x"}) == set()
    assert changed(index, "n1", {**report(30), "ready": False}) is ALL  # eligibility: every count changes
    # Many reports between two looks: one pass over the union of what they can change.
    index.node("n1", report(30))
    index.node("n2", report(10))
    index.take_changed()
    index.node("n1", report(30))
    index.node("n2", report(20))
    index.node("n2", report(25))
    assert index.take_changed() == {("demo", "varmor-demo-b")}


def test_a_report_ahead_of_the_leader_waits_while_the_previous_one_counts() -> None:
    index = index_with(("varmor-demo-a", 10))
    index.node("n1", report(10))
    assert index.status(("demo", "varmor-demo-a"), frozenset(), str).current == 1
    index.take_changed()
    assert changed(index, "n1", report(12)) == set()  # the leader has seen up to 10 only
    assert index.status(("demo", "varmor-demo-a"), frozenset(), str).current == 1
    index.profile(("demo", "varmor-demo-b"), profile("varmor-demo-b", 12))
    assert index.take_changed() == {("demo", "varmor-demo-b")}  # caught up: the waiting report counts now
    assert index.nodes["n1"].watermark == 12
    assert index.status(("demo", "varmor-demo-b"), frozenset(), str).current == 1


def test_a_new_leader_takes_the_spec_version_its_predecessor_recorded() -> None:
    recorded = {"observedGeneration": 3, "specResourceVersion": "40"}
    index = LoadIndex()
    index.profile(("demo", "varmor-demo-a"), profile("varmor-demo-a", 55, generation=3, status=recorded))
    assert index.specs[("demo", "varmor-demo-a")].spec_rv == 40
    index.profile(("demo", "varmor-demo-b"), profile("varmor-demo-b", 56, generation=4, status=recorded))
    assert index.specs[("demo", "varmor-demo-b")].spec_rv == 56  # recorded for another generation: not used
    index.profile(("demo", "varmor-demo-a"), profile("varmor-demo-a", 60, generation=3))  # status only
    assert index.specs[("demo", "varmor-demo-a")].spec_rv == 40
    index.profile(("demo", "varmor-demo-a"), profile("varmor-demo-a", 70, generation=4), watched=False)
    assert (index.specs[("demo", "varmor-demo-a")].spec_rv, index.seen) == (70, 60)  # our write: not "seen up to"
    index.profile(("demo", "varmor-demo-a"), profile("varmor-demo-a", 65, generation=3))  # older than our write
    assert index.specs[("demo", "varmor-demo-a")].generation == 4


# -- the index against the definition -----------------------------------------------------
node_kinds = st.sampled_from(["new", "legacy", "unsupported", "syncing"])


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[dict[str, Any]], set[str]]:
    nodes, lost = [], set()
    for i in range(draw(st.integers(0, 12))):
        name, kind = f"n{i:02d}", draw(node_kinds)
        status: dict[str, Any] = {
            "phase": "Supported",
            "ready": kind != "syncing",
            "heartbeatTime": "2026-12-01T11:59:00Z",
        }
        if kind == "unsupported":
            status |= {"phase": "Unsupported", "reason": "AppArmor is off"}
        elif kind == "legacy":
            entry = {"namespace": "demo", "sha256": draw(st.sampled_from([SHA, OTHER]))}
            status[draw(st.sampled_from(["profiles", "failures"]))] = {
                draw(st.sampled_from(["varmor-demo-a", "varmor-demo-b"])): entry | {"message": "m", "mode": "enforce"}
            }
        else:
            status["watermark"] = str(draw(st.integers(1, 40)))
            exceptions = {}
            for name_ in draw(st.sets(st.sampled_from(["varmor-demo-a", "varmor-demo-b"]))):
                state = draw(st.sampled_from(["Failed", "Loading"]))
                sha = draw(st.sampled_from([SHA, OTHER]))[:16]
                exceptions[name_] = {
                    "state": state,
                    "namespace": draw(st.sampled_from(["demo", "other"])),
                    "sha256": sha,
                }
            status["exceptions"] = exceptions
        nodes.append({"metadata": {"name": name}, "status": status})
        if draw(st.booleans()) and draw(st.booleans()):
            lost.add(name)
    return nodes, lost


@settings(max_examples=300, deadline=None)
@given(fleets(), st.integers(1, 40), st.integers(1, 40))
def test_the_index_gives_the_same_status_as_the_definition(fleet: Any, spec_a: int, spec_b: int) -> None:
    nodes, lost = fleet
    index = LoadIndex()
    seen = 41
    for name, rv in (("varmor-demo-a", spec_a), ("varmor-demo-b", spec_b)):
        index.profile(("demo", name), profile(name, rv))
    index.profile(("demo", "varmor-demo-z"), profile("varmor-demo-z", seen))  # the leader has seen up to 41
    for node in nodes:
        index.node(node["metadata"]["name"], node["status"])
    heard = {
        n["metadata"]["name"]: NOW - dt.timedelta(seconds=1000 if n["metadata"]["name"] in lost else 1) for n in nodes
    }
    liveness = Liveness(NOW, LOST_AFTER, heard)

    def lost_text(view: NodeView) -> str:
        return lost_message(view.status, LOST_AFTER)

    for name, rv in (("varmor-demo-a", spec_a), ("varmor-demo-b", spec_b)):
        fast = index.status(("demo", name), frozenset(lost), lost_text)
        slow = aggregate(name, "demo", SHA, nodes, liveness, spec_rv=rv, leader_seen=seen)
        assert (fast.desired, fast.current, fast.conditions, dict(fast.counts)) == (
            slow.desired,
            slow.current,
            slow.conditions,
            dict(slow.counts),
        )
        assert set(fast.pending) <= {n["metadata"]["name"] for n in nodes}
        assert fast.ready == slow.ready
