"""The real apparmor_parser against a stand-in securityfs: what reaches .replace/.remove,
batching, per-profile failure attribution, and the names guard."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import BAD_TEXT, NOT_ENFORCED, SLOW_TEXT, profile_text
from varmor.nodeexec.files import ProfileDir
from varmor.nodeexec.parser_runner import ParserConfig, ParserRunner, blame, succeeded
from varmor.nodeexec.standin import Op, StandInSecurityfs, decode_blob
from varmor.parser import CPU, CompileBudget


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[StandInSecurityfs]:
    with StandInSecurityfs(tmp_path / "securityfs") as fs:
        yield fs


@pytest.fixture
def profile_dir(tmp_path: Path) -> ProfileDir:
    partitions = tmp_path / "partitions"
    partitions.write_text("major minor  #blocks  name\n\n 254        0   52428800 vda\n 254        1   52427759 vda1\n")
    pd = ProfileDir(tmp_path / "apparmor.d")
    pd.write_node_local(partitions)
    return pd


def runner_for(standin: StandInSecurityfs, profile_dir: ProfileDir, **config: Any) -> ParserRunner:
    return ParserRunner(
        ParserConfig(
            subdomainfs=standin.dir, include_dirs=(Path("/etc/apparmor.d"), profile_dir.root), timeout=60, **config
        )
    )


async def test_a_profile_over_the_budget_fails_alone_and_says_so(
    standin: StandInSecurityfs, profile_dir: ProfileDir
) -> None:
    runner = runner_for(standin, profile_dir, budget=CompileBudget(cpu_seconds=1))
    files = {f"varmor-t-ok{i}": profile_dir.write(f"varmor-t-ok{i}", profile_text(f"varmor-t-ok{i}")) for i in range(2)}
    files["varmor-t-slow"] = profile_dir.write("varmor-t-slow", SLOW_TEXT.format(name="varmor-t-slow"))
    assert all(o.ok for o in (await runner.check_names(files)).values())
    results = await runner.replace(files, complain=False)
    slow = results.pop("varmor-t-slow")
    assert (slow.ok, slow.exceeded) == (False, CPU)
    assert "1 CPU-seconds" in slow.message
    assert all(o.ok for o in results.values()), results
    standin.settle()
    assert set(standin.top_level()) == {"varmor-t-ok0", "varmor-t-ok1"}


async def test_batch_replace_reaches_replace_with_modes(standin: StandInSecurityfs, profile_dir: ProfileDir) -> None:
    runner = runner_for(standin, profile_dir)
    files = {f"varmor-t-p{i}": profile_dir.write(f"varmor-t-p{i}", profile_text(f"varmor-t-p{i}")) for i in range(5)}
    assert all(o.ok for o in (await runner.check_names(files)).values())
    results = await runner.replace(files, complain=False)
    assert all(o.ok for o in results.values()), results
    complain = {"varmor-t-c": profile_dir.write("varmor-t-c", profile_text("varmor-t-c"))}
    assert (await runner.replace(complain, complain=True))["varmor-t-c"].ok
    standin.settle()
    assert standin.top_level() == {**dict.fromkeys(files, "enforce"), "varmor-t-c": "complain"}
    assert {op.name for op in standin.ops if op.action == "replace"} == {*files, "varmor-t-c"}
    # the kernel-format `profiles` file is what the agent reads back
    text = (standin.dir / "profiles").read_text()
    assert "varmor-t-p0 (enforce)\n" in text
    assert "varmor-t-c (complain)\n" in text


async def test_failure_is_attributed_and_does_not_block_others(
    standin: StandInSecurityfs, profile_dir: ProfileDir
) -> None:
    runner = runner_for(standin, profile_dir)
    files = {f"varmor-t-ok{i}": profile_dir.write(f"varmor-t-ok{i}", profile_text(f"varmor-t-ok{i}")) for i in range(3)}
    files["varmor-t-bad"] = profile_dir.write("varmor-t-bad", BAD_TEXT.format(name="varmor-t-bad"))
    files["varmor-t-unix"] = profile_dir.write("varmor-t-unix", NOT_ENFORCED.format(name="varmor-t-unix"))
    results = await runner.replace(files, complain=False)
    assert not results["varmor-t-bad"].ok
    assert "syntax error" in results["varmor-t-bad"].message
    assert not results["varmor-t-unix"].ok
    assert "not enforced" in results["varmor-t-unix"].message
    assert "varmor-t-ok0" not in results["varmor-t-bad"].message
    assert all(results[f"varmor-t-ok{i}"].ok for i in range(3))
    standin.settle()
    assert set(standin.top_level()) == {"varmor-t-ok0", "varmor-t-ok1", "varmor-t-ok2"}


async def test_names_guard_refuses_foreign_profiles(standin: StandInSecurityfs, profile_dir: ProfileDir) -> None:
    runner = runner_for(standin, profile_dir)
    good = profile_dir.write("varmor-t-good", profile_text("varmor-t-good"))
    evil = profile_dir.write("varmor-t-evil", "profile varmor-t-evil { file, }\nprofile docker-default { file, }\n")
    wrong = profile_dir.write("varmor-t-wrong", "profile varmor-t-other { file, }\n")
    # A child of a host profile (or a namespaced one) is not this file's child either.
    kid = profile_dir.write("varmor-t-kid", "profile varmor-t-kid { file, }\nprofile sshd//evil { file, }\n")
    files = {"varmor-t-good": good, "varmor-t-evil": evil, "varmor-t-wrong": wrong, "varmor-t-kid": kid}
    checked = await runner.check_names(files)
    assert checked["varmor-t-good"].ok
    assert not checked["varmor-t-evil"].ok
    assert "docker-default" in checked["varmor-t-evil"].message
    assert not checked["varmor-t-wrong"].ok
    assert not checked["varmor-t-kid"].ok
    assert "sshd//evil" in checked["varmor-t-kid"].message
    assert standin.ops == []  # -N never loads anything


async def test_remove_by_name_reaches_remove(
    standin: StandInSecurityfs, profile_dir: ProfileDir, tmp_path: Path
) -> None:
    standin.set_loaded({"varmor-t-a": "enforce", "varmor-t-a//child_x": "enforce", "varmor-t-b": "enforce"})
    runner = runner_for(standin, profile_dir)
    results = await runner.remove(["varmor-t-a"], tmp_path / "stubs")
    assert results["varmor-t-a"].ok
    standin.settle()
    assert standin.ops == [Op("remove", "varmor-t-a")]
    assert standin.loaded == {"varmor-t-b": "enforce"}  # the child went with its parent
    assert list((tmp_path / "stubs").iterdir()) == []


async def test_remove_works_when_the_stub_dir_cannot_be_written(
    standin: StandInSecurityfs, profile_dir: ProfileDir, tmp_path: Path
) -> None:
    """A full or read-only profile dir must not keep a deleted profile in the kernel: the
    stubs go to a temporary directory instead (here the stub dir's parent is a file)."""
    standin.set_loaded({"varmor-t-a": "enforce"})
    (tmp_path / "not-a-dir").write_text("")
    results = await runner_for(standin, profile_dir).remove(["varmor-t-a"], tmp_path / "not-a-dir" / "stubs")
    assert results["varmor-t-a"].ok
    standin.settle()
    assert standin.loaded == {}
    assert not list(Path(tempfile.gettempdir()).glob("varmor-stubs-*/varmor-t-a"))  # and it cleaned up


async def test_parser_version(standin: StandInSecurityfs, profile_dir: ProfileDir) -> None:
    version = await runner_for(standin, profile_dir).version()
    assert version[0].isdigit()
    assert "." in version


def test_success_lines_and_blame() -> None:
    out = 'Replacement succeeded for "varmor-a".\nAddition succeeded for "child_0".\nRemoval succeeded for "x".\n'
    assert succeeded(out) == {"varmor-a", "child_0", "x"}
    err = "AppArmor parser error for /d/varmor-b in profile /d/varmor-b at line 2: syntax\nother line\n"
    assert blame(err, Path("/d/varmor-b"), "varmor-b").startswith("AppArmor parser error")
    assert blame('apparmor_parser: Unable to replace "varmor-c".  x', Path("/d/c"), "varmor-c")


def test_decode_blob_ignores_garbage() -> None:
    assert decode_blob(b"") == []
    assert decode_blob(b"\x04\x08\x00version\x00\x02\x07\x20\x20\x00junk") == []


async def test_force_complain_marker_survives_a_reboot_load(
    standin: StandInSecurityfs, profile_dir: ProfileDir
) -> None:
    """After a reboot the host's AppArmor service loads the profile dir with the host's
    parser (base dir = the profile dir): the marker keeps complain profiles in complain."""
    quiet = profile_dir.write("varmor-t-quiet", profile_text("varmor-t-quiet"))
    loud = profile_dir.write("varmor-t-loud", profile_text("varmor-t-loud"))
    profile_dir.set_force_complain("varmor-t-quiet", True)
    assert profile_dir.complain_markers() == ["varmor-t-quiet"]
    runner = runner_for(standin, profile_dir)
    cmd = [*runner._base(), "--base", str(profile_dir.root), "-r", str(quiet), str(loud)]
    proc = await asyncio.create_subprocess_exec(*cmd, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 0, err
    assert b"forcing complain mode" in err
    standin.settle()
    assert standin.top_level() == {"varmor-t-quiet": "complain", "varmor-t-loud": "enforce"}
    profile_dir.remove("varmor-t-quiet")
    assert profile_dir.complain_markers() == []
