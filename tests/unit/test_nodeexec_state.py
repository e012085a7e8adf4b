"""Pure agent logic: ArmorProfile validation and choice, ArmorNode status, securityfs and
/proc/partitions parsing, detection against stand-in paths, rate limiting, tailing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests import helpers
from varmor.loadreport import Ledger, Report
from varmor.nodeexec import kernel
from varmor.nodeexec.eventqueue import RateLimiter
from varmor.nodeexec.files import ProfileDir, atomic_write, is_varmor_name, parse_partitions
from varmor.nodeexec.state import Desired, Failed, Loaded, NodeState, choose, node_status, outcome, validate
from varmor.nodeexec.violations import Follower

TEXT = "profile varmor-demo-web {\n  file,\n}\n"


def armor_profile(
    name: str = "varmor-demo-web", namespace: str = "demo", text: str = TEXT, **over: Any
) -> dict[str, Any]:
    """`helpers.armor_profile` owned by VarmorPolicy web; `over` sets spec.profile fields
    (`spec_name`: its name), `uid` and `created` the metadata's."""
    meta = {
        "uid": over.pop("uid", f"uid-{namespace}"),
        "creationTimestamp": over.pop("created", "2026-01-01T00:00:00Z"),
    }
    owner = {"kind": "VarmorPolicy", "metadata": {"name": "web", "uid": "p1"}}
    obj = helpers.armor_profile(name, namespace, text, owner=owner, meta=meta)
    if "spec_name" in over:
        over["name"] = over.pop("spec_name")
    obj["spec"]["profile"].update(over)
    return obj


def test_validate_accepts_a_contract_shaped_armor_profile() -> None:
    desired = validate(armor_profile())
    assert not isinstance(desired, Failed)
    assert (desired.name, desired.namespace, desired.mode) == ("varmor-demo-web", "demo", "enforce")
    assert desired.policy is not None
    assert (desired.policy.kind, desired.policy.name) == ("VarmorPolicy", "web")
    assert desired.policy.namespace == "demo"


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        (armor_profile(name="docker-default"), "not a varmor profile name"),
        (armor_profile(name="varmor-x", spec_name="varmor-y"), "differs"),
        (armor_profile(sha256="0" * 64), "does not match"),
        (armor_profile(mode="kill"), "mode"),
        (armor_profile(enforcer="BPF"), "enforcer"),
        (armor_profile(appArmor=""), "empty"),
    ],
)
def test_validate_refuses(obj: dict[str, Any], fragment: str) -> None:
    result = validate(obj)
    assert isinstance(result, Failed)
    assert fragment in result.message


def test_choose_oldest_wins_and_the_other_is_a_conflict() -> None:
    old = armor_profile(namespace="a", created="2026-01-01T00:00:00Z")
    new = armor_profile(namespace="b", created="2026-01-02T00:00:00Z")
    for order in ([old, new], [new, old]):
        winner, rejected = choose(order)
        assert winner is not None
        assert winner.namespace == "a"
        assert [r.namespace for r in rejected] == ["b"]
        assert "conflict" in rejected[0].message


def test_choose_ignores_objects_being_deleted() -> None:
    gone = armor_profile()
    gone["metadata"]["deletionTimestamp"] = "2026-01-03T00:00:00Z"
    assert choose([gone]) == (None, [])


def test_node_status_shape_matches_the_contract() -> None:
    """A watermark and the exceptions, never a map of every loaded profile."""
    state = NodeState(
        loaded={"varmor-a": Loaded("demo", "h1", "enforce")},
        failures={"varmor-b": Failed("demo", "h2", "apparmor_parser: boom")},
    )
    desired = {"varmor-a": Desired("varmor-a", "demo", "", "h1", "enforce")}
    ledger = Ledger()
    for rv, name in ((5, "varmor-a"), (6, "varmor-b")):
        ledger.received(("demo", name), {"metadata": {"resourceVersion": str(rv), "generation": 1}}, deleted=False)
        ledger.settle(name, ledger.begin(name))
    report = ledger.report(lambda name: outcome(state, desired, name))
    status = node_status(
        supported=True, reason="", parser_version="3.0.8", agent_version="0.1.0", ready=True, report=report
    )
    assert status == {
        "phase": "Supported",
        "parserVersion": "3.0.8",
        "agentVersion": "0.1.0",
        "ready": True,
        "loaded": 0,
        "watermark": "6",
        "exceptions": {
            "varmor-b": {"state": "Failed", "namespace": "demo", "sha256": "h2", "message": "apparmor_parser: boom"}
        },
    }
    unsupported = node_status(
        supported=False,
        reason="no",
        parser_version="",
        agent_version="0.1.0",
        ready=True,
        report=Report(None, None, {}),
    )
    assert unsupported["phase"] == "Unsupported"
    assert unsupported["reason"] == "no"


def test_parse_profiles_keeps_modes_and_children() -> None:
    text = "varmor-a (enforce)\nvarmor-a//child_0 (enforce)\n/usr/bin/man (complain)\nodd name (unconfined)\n"
    loaded = kernel.parse_profiles(text)
    assert loaded == {
        "varmor-a": "enforce",
        "varmor-a//child_0": "enforce",
        "/usr/bin/man": "complain",
        "odd name": "unconfined",
    }
    assert kernel.top_level(loaded) == {"varmor-a": "enforce", "/usr/bin/man": "complain", "odd name": "unconfined"}


def test_detect_reports_why(tmp_path: Path) -> None:
    enabled, sfs = tmp_path / "enabled", tmp_path / "securityfs"
    assert "does not exist" in kernel.detect(sfs, enabled).reason
    enabled.write_text("N\n")
    assert kernel.detect(sfs, enabled).reason.endswith("is N")
    enabled.write_text("Y\n")
    assert "not mounted" in kernel.detect(sfs, enabled).reason
    (sfs / "apparmor").mkdir(parents=True)
    (sfs / "apparmor" / "profiles").write_text("")
    assert "lacks .replace, .remove" in kernel.detect(sfs, enabled).reason
    for name in (".replace", ".remove"):
        (sfs / "apparmor" / name).touch()
    assert kernel.detect(sfs, enabled) == kernel.Detection(True)


def test_parse_partitions() -> None:
    text = "major minor  #blocks  name\n\n 259  0  500107608 nvme0n1\n 259  1  524288 nvme0n1p1\n   8 0 1 sda\n"
    assert parse_partitions(text) == ["nvme0n1", "nvme0n1p1", "sda"]


def test_varmor_names_only(tmp_path: Path) -> None:
    assert is_varmor_name("varmor-demo-web")
    for bad in ("docker-default", "varmor-", "varmor-../x", "varmor-a/b", "varmor-" + "a" * 60, "Varmor-a"):
        assert not is_varmor_name(bad)
    pd = ProfileDir(tmp_path)
    with pytest.raises(ValueError, match="non-varmor"):
        pd.write("usr.bin.man", "x")
    (tmp_path / "usr.bin.man").write_text("host profile")
    pd.write("varmor-a", "x")
    assert pd.names() == ["varmor-a"]


def test_atomic_write_skips_identical_content(tmp_path: Path) -> None:
    path = tmp_path / "f"
    assert atomic_write(path, "a")
    assert not atomic_write(path, "a")
    assert atomic_write(path, "b")
    assert path.read_text() == "b"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_rate_limiter_counts_what_it_held_back() -> None:
    limiter = RateLimiter(10.0)
    assert limiter.admit("p", 0.0) == (True, 0)
    assert limiter.admit("p", 1.0) == (False, 0)
    assert limiter.admit("p", 2.0) == (False, 0)
    assert limiter.admit("q", 2.0) == (True, 0)
    assert limiter.admit("p", 10.5) == (True, 2)
    assert limiter.admit("p", 21.0) == (True, 0)


def test_follower_handles_partial_lines_rotation_and_truncation(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text("old line\n")
    follower = Follower(log)
    try:
        _follow(follower, log, tmp_path)
    finally:
        follower.close()


def _follow(follower: Follower, log: Path, tmp_path: Path) -> None:
    assert follower.read_lines() == []  # starts at the end
    with log.open("a") as f:
        f.write("one\ntw")
    assert follower.read_lines() == ["one"]
    with log.open("a") as f:
        f.write("o\n")
    assert follower.read_lines() == ["two"]
    with log.open("a") as f:
        f.write("last of the old file\n")
    os.rename(log, tmp_path / "audit.log.1")
    log.write_text("three\n")
    assert follower.read_lines() == ["last of the old file"]  # the old file is drained first
    assert follower.read_lines() == ["three"]
    log.write_text("")
    assert follower.read_lines() == []
    with log.open("a") as f:
        f.write("four\n")
    assert follower.read_lines() == ["four"]


def test_follower_reads_a_file_that_appears_later_from_its_start(tmp_path: Path) -> None:
    """Everything in a log created after the agent started is new: nothing is skipped."""
    log = tmp_path / "audit.log"
    follower = Follower(log)
    try:
        assert follower.read_lines() == []
        log.write_text("first\nsecond\n")
        assert follower.read_lines() == ["first", "second"]
    finally:
        follower.close()
