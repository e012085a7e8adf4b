"""The policy pipeline: one way from a policy to its profile, bounded in what it builds."""

from __future__ import annotations

import time

import pytest

from tests.helpers import policy_doc
from varmor.pipeline import MAX_PROFILE_BYTES, MAX_TARGETS, CompileError, compile_policy


def targets_policy(count: int, global_rules: str = "deny /g r,") -> dict[str, object]:
    groups = [{"rules": f"deny /t{i} r,", "targets": [f"/usr/bin/t{i}"]} for i in range(count)]
    return policy_doc(appArmorRawRules=[{"rules": global_rules}, *groups])


def test_too_many_targets_are_refused_before_anything_is_built() -> None:
    """Profile text grows with the square of the targets (each child repeats every rule and
    a transition to every other target): 3,000 targets built 405 MB before this bound."""
    start = time.process_time()
    with pytest.raises(CompileError) as refused:
        compile_policy(targets_policy(3000), "varmor")
    assert time.process_time() - start < 2.0
    assert refused.value.reason == "Invalid"
    assert f"at most {MAX_TARGETS}" in refused.value.message
    assert compile_policy(targets_policy(MAX_TARGETS), "varmor").profile_name


def test_a_profile_over_the_size_an_agent_accepts_is_refused_here() -> None:
    big_rules = "".join(f"deny /{'x' * 200}/{i} r,\n" for i in range(250))  # ~52 KB, repeated per child
    with pytest.raises(CompileError) as refused:
        compile_policy(targets_policy(30, big_rules), "varmor")
    assert f"at most {MAX_PROFILE_BYTES}" in refused.value.message
