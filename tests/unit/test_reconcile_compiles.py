"""The leader's compile gate with the real parser: verdicts by content, no compile in the
caller, two lanes so a flood of slow policies cannot hold back one that compiles at once."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import policy, slow_rule, wait_for
from varmor.parser import CompileBudget
from varmor.pipeline import compile_policy
from varmor.profile.builder import BuiltProfile
from varmor.reconcile.compiles import CompileGate, CompilePending


def built(name: str, rules: str) -> BuiltProfile:
    doc = policy(name, "demo", target_name="web", enhance={"appArmorRawRules": [{"rules": rules}]})
    return compile_policy(doc, "varmor").profile


async def test_verdicts_are_cached_by_content_and_waiters_are_notified() -> None:
    gate = CompileGate(CompileBudget(cpu_seconds=1))
    gate_task = asyncio.create_task(gate.run())
    try:
        good, slow = built("good", "deny /etc/shadow r,"), built("slow", slow_rule())
        done: list[str] = []
        for profile in (good, slow):
            with pytest.raises(CompilePending):
                gate.check(profile, None, lambda p=profile: done.append(p.name))
        await wait_for(lambda: len(done) == 2)
        assert gate.check(good, None, lambda: None) is None
        reason, message = gate.check(slow, None, lambda: None) or ("", "")
        assert reason == "CompileBudgetExceeded"
        assert "1 CPU-seconds" in message
        # An ArmorProfile already holding this content needs no compile.
        fresh = built("fresh", "deny /etc/passwd r,")
        assert gate.check(fresh, {"spec": {"profile": {"sha256": fresh.sha256}}}, lambda: None) is None
    finally:
        gate_task.cancel()
        await asyncio.gather(gate_task, return_exceptions=True)


async def test_slow_policies_cannot_hold_back_a_fast_one() -> None:
    gate = CompileGate(CompileBudget(cpu_seconds=600, memory_mib=4096), slots=2, slow_slots=1, probe_seconds=1)
    gate_task = asyncio.create_task(gate.run())
    try:
        slow = [built(f"slow{i}", slow_rule(24 + i)) for i in range(3)]
        for profile in slow:
            with pytest.raises(CompilePending):
                gate.check(profile, None, lambda: None)
        await wait_for(lambda: list(gate.running.values()) == ["full"])  # the probes are over
        fast = built("fast", "deny /etc/shadow r,")
        ready = asyncio.Event()
        with pytest.raises(CompilePending):
            gate.check(fast, None, ready.set)
        await ready.wait()
        assert gate.check(fast, None, lambda: None) is None
        assert list(gate.running.values()) == ["full"]  # a slow one still compiles, the others wait
        assert all(p.sha256 in gate._tasks for p in slow)
    finally:
        gate_task.cancel()
        await asyncio.gather(gate_task, return_exceptions=True)
    assert not gate.running
