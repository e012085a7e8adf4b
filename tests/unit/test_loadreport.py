"""The load report (`varmor/loadreport.py`): what an agent writes, its size, and what the
leader may conclude from it. The interleavings are in test_loadreport_interleavings.py."""

from __future__ import annotations

import orjson
import pytest

from varmor import api
from varmor.loadreport import (
    MAX_CHANGE_BYTES,
    MAX_FAILED,
    MAX_LOADING,
    Ledger,
    LoadException,
    NodeReport,
    delta,
    parse,
    resource_version,
    truncate_message,
    verdict,
)

SHA = "a" * 64


def arrive(
    ledger: Ledger, name: str, rv: int, generation: int = 1, namespace: str = "demo", deleted: bool = False
) -> None:
    obj = {
        "metadata": {"name": name, "namespace": namespace, "resourceVersion": str(rv), "generation": generation},
        "spec": {"profile": {"sha256": SHA}},
    }
    ledger.received((namespace, name), obj, deleted=deleted)


def settle_all(ledger: Ledger, *names: str) -> None:
    for name in names:
        ledger.settle(name, ledger.begin(name))


def loaded(_name: str) -> LoadException | None:
    return None


def test_resource_versions_compare_as_kubernetes_defines_them() -> None:
    assert resource_version("42") == 42
    assert resource_version("100000000000000000000") == 10**20  # no length limit
    for bad in ("", "0", "042", "-1", "12a", None, 7):
        assert resource_version(bad) is None


def test_everything_loaded_reports_the_highest_version_received_and_no_exceptions() -> None:
    ledger = Ledger()
    for rv in range(10, 20):
        arrive(ledger, f"varmor-demo-p{rv}", rv)
    settle_all(ledger, *(f"varmor-demo-p{rv}" for rv in range(10, 20)))
    report = ledger.report(loaded)
    assert (report.watermark, report.progress, dict(report.exceptions)) == (19, 19, {})
    assert report.to_json() == {"watermark": "19", "exceptions": {}}


def test_a_slow_profile_is_listed_and_does_not_hold_the_others_back() -> None:
    ledger = Ledger()
    for rv in range(1, 101):
        arrive(ledger, f"varmor-demo-p{rv}", rv)
    settle_all(ledger, *(f"varmor-demo-p{rv}" for rv in range(1, 101) if rv != 3))
    report = ledger.report(loaded)
    assert report.watermark == 100
    assert dict(report.exceptions) == {"varmor-demo-p3": LoadException("Loading", "demo", SHA)}


def test_a_burst_holds_the_watermark_just_below_the_first_profile_not_listed() -> None:
    ledger = Ledger()
    for rv in range(1, 1001):
        arrive(ledger, f"varmor-demo-p{rv:04d}", rv)
    settle_all(ledger, *(f"varmor-demo-p{rv:04d}" for rv in range(1, 101)))
    report = ledger.report(loaded)
    assert len(report.exceptions) == MAX_LOADING
    assert report.watermark == 100 + MAX_LOADING  # 101..108 listed, 109 not: held at 108
    assert report.progress == report.watermark


def test_failures_are_listed_up_to_their_cap_then_hold_the_watermark() -> None:
    ledger = Ledger()
    names = [f"varmor-demo-p{rv:03d}" for rv in range(1, 201)]
    for rv, name in enumerate(names, start=1):
        arrive(ledger, name, rv)
    settle_all(ledger, *names)

    def failed(name: str) -> LoadException | None:
        return LoadException("Failed", "demo", SHA, "syntax error") if int(name[-3:]) % 2 else None

    report = ledger.report(failed)
    assert sum(e.state == "Failed" for e in report.exceptions.values()) == MAX_FAILED
    assert report.watermark == 2 * MAX_FAILED  # the 65th failure (rv 129) is not listed
    assert api.MAX_FAILED_EXCEPTIONS == MAX_FAILED


def test_a_status_only_change_moves_the_watermark_but_not_the_progress() -> None:
    """The leader's own ArmorProfile status writes reach every agent: they must not make
    every node write (`progress` decides), yet heartbeats may carry the new watermark."""
    ledger = Ledger()
    arrive(ledger, "varmor-demo-web", 5)
    settle_all(ledger, "varmor-demo-web")
    arrive(ledger, "varmor-demo-web", 9)  # same generation: the leader wrote its status
    report = ledger.report(loaded)
    assert (report.watermark, report.progress, dict(report.exceptions)) == (9, 5, {})
    arrive(ledger, "varmor-demo-web", 12, generation=2)  # a new spec: to act on
    report = ledger.report(loaded)
    assert report.progress == 12
    assert set(report.exceptions) == {"varmor-demo-web"}


def test_a_sync_that_started_before_a_newer_version_does_not_settle_it() -> None:
    ledger = Ledger()
    arrive(ledger, "varmor-demo-web", 5)
    token = ledger.begin("varmor-demo-web")
    arrive(ledger, "varmor-demo-web", 6, generation=2)
    ledger.settle("varmor-demo-web", token)
    assert set(ledger.report(loaded).exceptions) == {"varmor-demo-web"}
    settle_all(ledger, "varmor-demo-web")
    assert not ledger.report(loaded).exceptions


def test_a_deleted_profile_leaves_the_report() -> None:
    ledger = Ledger()
    arrive(ledger, "varmor-demo-web", 5)
    arrive(ledger, "varmor-demo-web", 6, deleted=True)
    report = ledger.report(loaded)
    assert (report.watermark, dict(report.exceptions)) == (6, {})


def test_verdicts() -> None:
    failed = LoadException("Failed", "demo", SHA, "apparmor_parser: boom")
    report = NodeReport(20, {"varmor-demo-bad": failed, "varmor-demo-slow": LoadException("Loading", "demo")})
    assert verdict(report, "varmor-demo-web", "demo", SHA, 15, 25) == ("Loaded", "")
    assert verdict(report, "varmor-demo-web", "demo", SHA, 21, 25)[0] == "Loading"  # not received yet
    assert verdict(report, "varmor-demo-web", "demo", SHA, 15, 19)[0] == "Loading"  # the leader is behind the node
    assert verdict(report, "varmor-demo-bad", "demo", SHA, 15, 25) == ("Failed", "apparmor_parser: boom")
    assert verdict(report, "varmor-demo-bad", "demo", "b" * 64, 15, 25)[0] == "Loading"  # failed other content
    assert verdict(report, "varmor-demo-bad", "other", SHA, 15, 25)[0] == "Loaded"  # the other namespace's object
    assert verdict(report, "varmor-demo-slow", "demo", SHA, 15, 25)[0] == "Loading"
    assert verdict(NodeReport(None, {}), "varmor-demo-web", "demo", SHA, 1, 25)[0] == "Loading"


def test_the_earlier_format_is_recognised() -> None:
    assert parse({"phase": "Supported", "profiles": {}}) is None
    assert parse({"phase": "Supported", "watermark": "7", "exceptions": {}}) == NodeReport(7, {})
    assert parse({"phase": "Supported"}) == NodeReport(None, {})


def test_one_profile_change_is_one_small_merge_patch_whatever_the_number_of_profiles() -> None:
    """1,000 profiles, the longest names and namespaces, a long parser message: the write
    for one profile failing, and then for it loading, stays within MAX_CHANGE_BYTES."""
    namespace = "n" * 63
    names = [f"varmor-{i:04d}-" + "x" * 51 for i in range(1000)]
    ledger = Ledger()
    for rv, name in enumerate(names, start=10_000_000_000):
        arrive(ledger, name, rv, namespace=namespace)
    settle_all(ledger, *names)
    base = {"phase": "Supported", "ready": True, **ledger.report(loaded).to_json()}
    bad = names[500]
    arrive(ledger, bad, 99_999_999_999, generation=2, namespace=namespace)
    settle_all(ledger, bad)

    def fails(name: str) -> LoadException | None:
        return LoadException("Failed", namespace, SHA, "apparmor_parser: " + "é" * 400) if name == bad else None

    after = {"phase": "Supported", "ready": True, **ledger.report(fails).to_json()}
    stamps = {"lastUpdateTime": "2026-12-01T00:00:00Z", "heartbeatTime": "2026-12-01T00:00:00Z"}
    for old, new in ((base, after), (after, base)):
        body = orjson.dumps({"status": {**delta(old, new), **stamps}})
        assert len(body) <= MAX_CHANGE_BYTES, (len(body), body)
    assert len(orjson.dumps(base)) < 200  # the whole status, at 1,000 profiles


def test_delta_is_per_exception() -> None:
    one, two = {"state": "Loading"}, {"state": "Failed"}
    old = {"watermark": "5", "exceptions": {"a": one, "b": one}, "reason": "x"}
    new = {"watermark": "6", "exceptions": {"b": two, "c": one}}
    assert delta(old, new) == {"watermark": "6", "exceptions": {"a": None, "b": two, "c": one}, "reason": None}
    assert delta(new, new) == {}


@pytest.mark.parametrize("text", ["short", "x" * 500, "é" * 300])
def test_messages_are_cut_at_a_utf8_boundary(text: str) -> None:
    cut = truncate_message(text)
    assert len(cut.encode()) <= 160
    assert cut == text or cut.endswith("…")
