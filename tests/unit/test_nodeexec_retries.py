"""The agent's answers to faults that are not a profile's: when a failed load is tried
again, what a failure says, how a refused write to the profile dir is reported, and how a
parser run that ended badly is classified."""

from __future__ import annotations

import asyncio
import errno
import math
import signal
from pathlib import Path

import pytest

from tests.helpers import wait_for
from varmor.loadreport import Report
from varmor.nodeexec.files import DiskHealth, disk_reason
from varmor.nodeexec.parser_runner import DISK, PARSER, TIMEOUT, ParserConfig, ParserRunner, Run
from varmor.nodeexec.retries import BUDGET, CONTENT, TRANSIENT, Attempt, Retries, RetryPolicy, describe
from varmor.nodeexec.state import node_status
from varmor.parser import CPU, DEADLINE, CompileBudget, classify

POLICY = RetryPolicy(base=1.0, cap=8.0, content=60.0, jitter=0.5)


def test_transient_failures_back_off_to_the_cap_and_start_over_for_new_content() -> None:
    first = POLICY.after(TRANSIENT, None, "s1", "enforce", now=100.0, rand=0.0)
    assert (first.not_before, first.failures) == (101.0, 1)
    delays = []
    attempt = first
    for _ in range(5):
        attempt = POLICY.after(TRANSIENT, attempt, "s1", "enforce", now=100.0, rand=0.0)
        delays.append(attempt.not_before - 100.0)
    assert delays == [2.0, 4.0, 8.0, 8.0, 8.0]
    assert POLICY.after(TRANSIENT, attempt, "s2", "enforce", now=100.0, rand=0.0).failures == 1
    assert POLICY.after(TRANSIENT, attempt, "s1", "complain", now=100.0, rand=0.0).failures == 1
    jittered = POLICY.after(TRANSIENT, first, "s1", "enforce", now=100.0, rand=0.99)
    assert 102.0 < jittered.not_before <= 108.0  # spread, never past the cap


def test_the_budget_is_never_retried_and_the_text_waits_for_content_seconds() -> None:
    assert POLICY.after(BUDGET, None, "s", "enforce", now=5.0, rand=0.5).not_before == math.inf
    assert POLICY.after(CONTENT, None, "s", "enforce", now=5.0, rand=0.5).not_before == 65.0


def test_an_attempt_blocks_only_its_own_version_until_due_or_forced() -> None:
    waiting = Attempt("s", "enforce", not_before=10.0)
    assert waiting.blocks("s", "enforce", now=9.0, forced=False)
    assert not waiting.blocks("s", "enforce", now=10.0, forced=False)
    assert not waiting.blocks("s", "enforce", now=9.0, forced=True)
    assert not waiting.blocks("other", "enforce", now=9.0, forced=False)
    assert not waiting.blocks("s", "complain", now=9.0, forced=False)
    never = Attempt("s", "enforce", not_before=math.inf)
    assert never.blocks("s", "enforce", now=1e12, forced=True)  # forcing never overrides the budget


def test_a_failure_message_names_the_cause_what_stays_loaded_and_what_happens_next() -> None:
    assert describe(TRANSIENT, TIMEOUT, "apparmor_parser did not finish", "abc", False) == (
        "ParserTimeout: apparmor_parser did not finish (the version with sha256 abc stays loaded); "
        "retried by the agent with backoff"
    )
    assert describe(TRANSIENT, DISK, "cannot write", None, True).startswith(
        "ProfileDirUnwritable: cannot write (a version loaded before the agent started stays in the kernel)"
    )
    assert describe(TRANSIENT, PARSER, "x", None, False) == "ParserFailed: x; retried by the agent with backoff"
    assert describe(BUDGET, "", "over 1 CPU-seconds", None, False) == (
        "CompileBudgetExceeded: over 1 CPU-seconds; not retried until the profile changes"
    )
    assert describe(CONTENT, "", "syntax error", None, False) == "syntax error"


async def test_retries_call_back_when_due_and_a_clear_cancels() -> None:
    due: list[str] = []
    retries = Retries(RetryPolicy(base=0.01, cap=0.05), due.append, monotonic=asyncio.get_running_loop().time)
    retries.failed("a", TRANSIENT, "s", "enforce", "parser")
    retries.failed("b", TRANSIENT, "s", "enforce", "parser")
    retries.failed("c", CONTENT, "s", "enforce", "")  # waits for an event: no timer
    retries.clear("b")
    retries.again("d", "disk")
    await wait_for(lambda: sorted(due) == ["a", "d"], timeout=5, interval=0.01)
    assert retries.blocks("c", "s", "enforce", forced=False)
    assert "b" not in retries.attempts


def test_disk_health_reports_from_the_first_refusal_until_every_refused_write_went_through() -> None:
    health = DiskHealth("/etc/apparmor.d")
    assert health.writable
    assert health.condition is None
    health.failed("varmor-a", OSError(errno.ENOSPC, "No space left on device"), "t1")
    health.failed("node-local include", OSError(errno.ENOSPC, "No space left on device"), "t2")
    assert not health.writable
    assert health.condition is not None
    assert {k: health.condition[k] for k in ("type", "status", "reason", "lastTransitionTime")} == {
        "type": "ProfileDirWritable",
        "status": "False",
        "reason": "NoSpace",
        "lastTransitionTime": "t1",  # the transition, not the latest refusal
    }
    assert "No space left on device" in health.condition["message"]
    health.succeeded("varmor-a", "t3")
    assert health.condition["status"] == "False"
    health.succeeded("node-local include", "t4")
    assert health.writable
    assert (health.condition["status"], health.condition["reason"], health.condition["lastTransitionTime"]) == (
        "True",
        "Writable",
        "t4",
    )
    health.succeeded("varmor-b", "t5")  # nothing was pending for it: no change
    assert health.condition["lastTransitionTime"] == "t4"


def test_disk_reasons() -> None:
    assert disk_reason(OSError(errno.EROFS, "Read-only file system")) == "ReadOnly"
    assert disk_reason(OSError(errno.EDQUOT, "Disk quota exceeded")) == "NoSpace"
    assert disk_reason(OSError(errno.EIO, "Input/output error")) == "WriteFailed"
    assert disk_reason("Failed setting up policy cache (/x): No space left on device") == "NoSpace"


def test_the_condition_is_in_the_node_status_only_once_there_is_one() -> None:
    common = {"supported": True, "reason": "", "parser_version": "3", "agent_version": "1", "ready": True}
    empty = Report(None, None, {})
    assert "conditions" not in node_status(**common, report=empty)  # type: ignore[arg-type]
    condition = {"type": "ProfileDirWritable", "status": "True"}
    assert node_status(**common, report=empty, conditions=[condition])["conditions"] == [condition]  # type: ignore[arg-type]


def test_a_parser_killed_sooner_than_its_cpu_budget_allows_was_not_over_the_budget() -> None:
    budget = CompileBudget(cpu_seconds=10)
    assert classify(-signal.SIGKILL, "", elapsed=0.2, budget=budget) == ""
    assert classify(-signal.SIGKILL, "", elapsed=10.5, budget=budget) == CPU
    assert classify(-signal.SIGXCPU, "", elapsed=0.2, budget=budget) == CPU


@pytest.fixture
def runner(tmp_path: Path) -> ParserRunner:
    return ParserRunner(ParserConfig(subdomainfs=tmp_path, parser="/bin/false", timeout=7.0))


@pytest.mark.parametrize(
    ("run", "transient", "exceeded", "message"),
    [
        (
            Run(-9, "", "apparmor_parser did not finish within 7s and was killed", DEADLINE),
            TIMEOUT,
            "",
            "did not finish",
        ),
        (Run(-9, "", "", CPU), "", CPU, "10 CPU-seconds"),
        (Run(-9, "", ""), PARSER, "", "killed by SIGKILL"),
        (Run(1, "", "apparmor_parser: out of luck"), PARSER, "", "out of luck"),
        (Run(1, "", "Failed setting up policy cache (/c): Read-only file system"), DISK, "", "Read-only"),
        (Run(1, "", ""), PARSER, "", "exited 1"),
    ],
)
def test_a_failure_the_parser_pins_on_no_profile_is_classified_by_how_the_run_ended(
    runner: ParserRunner, run: Run, transient: str, exceeded: str, message: str
) -> None:
    outcome = runner._unattributed(run)
    assert (outcome.ok, outcome.transient, outcome.exceeded) == (False, transient, exceeded)
    assert message in outcome.message
