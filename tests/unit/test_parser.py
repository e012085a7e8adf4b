"""The compile edge: pinned ABI, rule-not-enforced as error, failures land on the right
file, and the budget: CPU and memory limits the kernel enforces, no parser outliving the
request or the process that started it."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from tests.helpers import slow_rule, wait_for
from varmor import parser
from varmor.parser import (
    BUDGET_REASON,
    COMPILE_FLAGS,
    CPU,
    DEADLINE,
    MEMORY,
    CompileBudget,
    compile_check,
    compile_command,
    compile_profile,
    features_file,
)

HEAD = "abi <abi/3.0>,\n#include <tunables/global>\n"


def profile(name: str, *rules: str) -> str:
    body = "".join(f"  {r},\n" for r in rules)
    return f"{HEAD}profile {name} {{\n  #include <abstractions/base>\n  file,\n{body}}}\n"


def test_features_file_is_pinned_and_packaged() -> None:
    text = features_file().read_text()
    assert "network_v8" in text
    assert "caps" in text


def test_one_file_compiles_in_the_parsers_own_process() -> None:
    assert "--jobs=0" in compile_command(["/x.aa"])
    assert "--jobs=0" not in compile_command(["/x.aa", "/y.aa"])  # a batch compiles in parallel workers


def test_command_uses_pinned_abi_and_werror() -> None:
    cmd = compile_command(["/x.aa"], ["/inc"])
    assert cmd[1:3] == ["--config-file", "/dev/null"]
    assert all(flag in cmd for flag in COMPILE_FLAGS)
    assert cmd[cmd.index("-M") + 1] == str(features_file())
    assert cmd[-3:] == ["-I", "/inc", "/x.aa"]


def test_batch_attributes_each_failure() -> None:
    texts = {
        "good1": profile("g1", "deny network packet"),
        "unenforced": profile("u", "deny unix addr=@/containerd-shim/**"),
        "good2": profile("g2", "deny capability sys_admin"),
        "syntax": profile("s", "bogus rule"),
        "dbus": profile("d", "dbus"),
        "good3": profile("g3", "deny mount fstype=securityfs"),
    }
    results = compile_check(texts)
    assert [k for k, r in results.items() if r.ok] == ["good1", "good2", "good3"]
    assert "not enforced" in results["unenforced"].message
    assert results["unenforced"].message.startswith("Warning converted to Error")
    assert "syntax error" in results["syntax"].message
    assert "syntax" in results["syntax"].message
    assert "dbus rules not enforced" in results["dbus"].message


def test_sample_node_local_include_is_provided() -> None:
    text = HEAD + "#include <varmor/node-local>\nprofile n {\n  deny @{VARMOR_DISK_DEVICES} rw,\n}\n"
    assert compile_check({"n": text})["n"].ok


def test_empty_input() -> None:
    assert compile_check({}) == {}


# -- the budget ----------------------------------------------------------------------
def _gone(pid: int) -> bool:
    """The process has exited (a zombie awaiting its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_slow_rule_fails_the_cpu_budget_as_its_own_result() -> None:
    texts = {"slow": profile("s", slow_rule().rstrip(",")), "fast": profile("f", "deny /etc/shadow r")}
    results = compile_check(texts, budget=CompileBudget(cpu_seconds=1))
    assert results["fast"].ok
    slow = results["slow"]
    assert (slow.ok, slow.exceeded, slow.reason) == (False, CPU, BUDGET_REASON)
    assert "1 CPU-seconds" in slow.message


def test_memory_budget_is_enforced() -> None:
    result = compile_check({"slow": profile("s", slow_rule().rstrip(","))}, budget=CompileBudget(memory_mib=64))["slow"]
    assert (result.ok, result.exceeded, result.reason) == (False, MEMORY, BUDGET_REASON)
    assert "64 MiB" in result.message


def test_wall_deadline_kills_the_parser() -> None:
    budget = CompileBudget(cpu_seconds=60, wall_seconds=0.5)
    result = compile_check({"slow": profile("s", slow_rule().rstrip(","))}, budget=budget)["slow"]
    assert (result.ok, result.exceeded) == (False, DEADLINE)


def test_an_ordinary_profile_fits_the_default_budget() -> None:
    assert compile_check({"p": profile("p", "deny /etc/shadow r")}, budget=CompileBudget())["p"].ok


async def test_cancelling_the_caller_kills_the_parser() -> None:
    task = asyncio.create_task(
        compile_profile("slow", profile("s", slow_rule(20).rstrip(",")), CompileBudget(cpu_seconds=600))
    )
    await wait_for(lambda: parser.RUNNING)
    (pid,) = parser.RUNNING
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    await wait_for(lambda: _gone(pid))


async def test_async_compile_reports_budget_and_success() -> None:
    over = await compile_profile("slow", profile("s", slow_rule().rstrip(",")), CompileBudget(cpu_seconds=1))
    assert (over.ok, over.exceeded) == (False, CPU)
    bad = await compile_profile("bad", profile("b", "bogus rule"))
    assert (bad.ok, bad.reason) == (False, "Invalid")
    assert "bad" in bad.message
    assert (await compile_profile("ok", profile("o", "deny /etc/shadow r"))).ok


async def test_no_parser_outlives_the_process_that_started_it(tmp_path: Path) -> None:
    """varmor killed with SIGKILL (no cleanup runs): PR_SET_PDEATHSIG ends its parser."""
    (tmp_path / "slow.aa").write_text(profile("s", slow_rule(20).rstrip(",")))
    script = (
        "from varmor.parser import CompileBudget, compile_command, run_sync\n"
        f"run_sync(compile_command([{str(tmp_path / 'slow.aa')!r}]), CompileBudget(cpu_seconds=600))\n"
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script)
    try:
        (child,) = await wait_for(lambda: _children(proc.pid))
        assert _group(child) == [child]  # one file compiles in the parser's own process: no worker to orphan
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        await wait_for(lambda: _gone(child) and not [p for p in _group(child) if not _gone(p)])
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _processes(field: int, value: int) -> list[int]:
    """Pids whose /proc stat field (1: parent, 2: process group) is `value`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[field]) == value:
                found.append(int(entry.name))
    return found


def _children(pid: int) -> list[int]:
    return _processes(1, pid)


def _group(pgid: int) -> list[int]:
    return _processes(2, pgid)
