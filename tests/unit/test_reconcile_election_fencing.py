"""The leader's write fence, on a fake clock: a leader's writes are refused from the moment
another candidate could possibly hold the lease (well before: renew_deadline, not
lease_duration), even when the leader has not run since (a stopped process); the leader's
`Kube` asks the fence before every write and never before a read; and status writes are
conditional on the version they were computed from."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from tests.unit.test_reconcile_election import FakeClock, MemoryStore, config
from varmor.kube import kube as kube_module
from varmor.kube.kube import Kube
from varmor.reconcile.election import LeaderElector, NotLeading
from varmor.reconcile.statuswrites import Written

LEASE, RENEW, RETRY = 4.0, 3.0, 1.0


def pair() -> tuple[FakeClock, LeaderElector, LeaderElector]:
    """Two candidates on one Lease (in memory, resourceVersion-checked) and one clock."""
    clock, store = FakeClock(), MemoryStore()
    make = lambda who: LeaderElector(  # noqa: E731
        store, config(who, lease_duration=LEASE, renew_deadline=RENEW, retry_period=RETRY), clock
    )
    return clock, make("a"), make("b")


def refused() -> float:
    return REGISTRY.get_sample_value("varmor_leader_fenced_writes_total") or 0.0


async def election_round(elector: LeaderElector) -> None:
    """One round as run()/hold() play it: lead on success; on failure step down when
    another holder is seen or the renew deadline passed, else keep leading."""
    if await elector.try_acquire_or_renew():
        elector.leading = True
        return
    seen = elector.state.observed
    other = seen is not None and seen.holder not in ("", elector.config.identity)
    if other or elector.clock.monotonic() - elector._last_renew >= elector.config.renew_deadline:
        elector.leading = False


def fenced(elector: LeaderElector) -> bool:
    try:
        elector.fence()
    except NotLeading:
        return True
    return False


async def test_fence_is_closed_until_leading_and_closes_at_the_renew_deadline() -> None:
    clock, a, _ = pair()
    assert fenced(a)  # a candidate writes nothing
    assert await a.try_acquire_or_renew()
    a.leading = True  # as run() sets it once acquired
    assert not fenced(a)
    clock.advance(RENEW - 0.01)
    assert not fenced(a)
    before = refused()
    clock.advance(0.01)  # the process did not run (stopped): no renewal, fence closed all the same
    assert fenced(a)
    assert refused() == before + 1
    assert await a.try_acquire_or_renew()  # renewed: open again
    assert not fenced(a)


async def test_a_stopped_leader_is_fenced_before_the_other_candidate_can_take_over() -> None:
    clock, a, b = pair()
    assert await a.try_acquire_or_renew()
    a.leading = True
    assert not await b.try_acquire_or_renew()  # b observes a's record
    waited = 0.0
    while not await b.try_acquire_or_renew():  # a is stopped; b retries every 50 ms
        clock.advance(0.05)
        waited += 0.05
        assert waited < 2 * LEASE
    assert waited >= LEASE - 1e-9  # b waited out the whole lease on its own clock
    assert fenced(a)  # and a, on waking, sends nothing


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(min_value=0, max_value=2.5), st.sampled_from("ab")), max_size=40))
def test_never_two_writers_whatever_the_schedule(steps: list[tuple[float, str]]) -> None:
    """Any interleaving of clock advances and election rounds (a process that does not get
    to run simply takes no step): whenever one candidate holds the lease, the other's
    fence is closed."""

    async def run() -> None:
        clock, a, b = pair()
        electors = {"a": a, "b": b}
        for delta, who in steps:
            clock.advance(delta)
            await election_round(electors[who])
            assert fenced(a) or fenced(b)
            lease = await a.store.get()
            if lease is not None and lease.holder:  # the one not holding it is fenced
                assert fenced(electors["b" if lease.holder == "a" else "a"])

    asyncio.run(run())


async def test_kube_asks_the_fence_before_every_write_and_never_before_a_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[str] = []

    async def transport(_client: Any, method: str, path: str, before_send: Any = None, **_: Any) -> dict[str, Any]:
        if before_send is not None:
            before_send()
        sent.append(f"{method} {path}")
        return {}

    monkeypatch.setattr(kube_module, "raw_request", transport)
    open_ = [True]

    def fence() -> None:
        if not open_[0]:
            raise NotLeading("lease may have expired")

    kube = Kube(None, component="reconcile", fence=fence)  # type: ignore[arg-type]
    await kube.request("PATCH", "/x/status", body={})
    open_[0] = False
    await kube.request("GET", "/x")
    for method in ("PATCH", "PUT", "POST", "DELETE"):
        with pytest.raises(NotLeading):
            await kube.request(method, "/x", body={})
    await kube.event({"kind": "VarmorPolicy", "metadata": {"name": "p", "namespace": "n"}}, "Normal", "R", "m")
    assert sent == ["PATCH /x/status", "GET /x"]  # the refused Event is logged, not sent
    assert kube.writes == 1


def obj(rv: str, status: dict[str, Any] | None = None, uid: str = "u1") -> dict[str, Any]:
    return {"metadata": {"uid": uid, "resourceVersion": rv}, "status": status or {}}


def test_status_memory_trusts_itself_only_at_versions_it_knows() -> None:
    written = Written()
    assert written.previous(obj("5", {"phase": "Pending"})) == {"phase": "Pending"}
    assert written.version(obj("5")) == "5"
    written.remember(obj("5"), {"phase": "Protecting"}, "6")  # our write made version 6
    # the cache still shows 5 (lagging our own write): compare with memory, write on top of 6
    assert written.previous(obj("5", {"phase": "Pending"})) == {"phase": "Protecting"}
    assert written.version(obj("5")) == "6"
    assert written.previous(obj("6", {"phase": "Protecting"})) == {"phase": "Protecting"}
    # someone else wrote since (a previous leader's late write): what it holds counts
    assert written.previous(obj("9", {"phase": "Error"})) == {"phase": "Error"}
    assert written.version(obj("9")) == "9"
    written.remember(obj("9"), {"phase": "Protecting"}, "10")
    assert written.version(obj("9")) == "10"
    written.forget("u1")
    assert written.previous(obj("10", {"phase": "x"})) == {"phase": "x"}


def test_our_spec_write_is_a_known_version_only_if_the_status_is_ours() -> None:
    written = Written()
    written.remember(obj("5"), {"desiredNumberLoaded": 1}, "6")
    written.moved(obj("7", {"desiredNumberLoaded": 1}))  # our PUT of the spec returned 7
    assert written.version(obj("5")) == "7"
    written.moved(obj("9", {"desiredNumberLoaded": 3}))  # returned a status we did not write
    assert written.version(obj("5")) == "7"
    assert written.previous(obj("9", {"desiredNumberLoaded": 3})) == {"desiredNumberLoaded": 3}
