"""Golden profiles per mode and feature: the exact bytes, reviewed once, compiled always.

Regenerate after an intended change with `VARMOR_UPDATE_GOLDEN=1 pytest tests/unit/test_profile_builder_golden.py`
and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from tests.helpers import assert_compiles
from varmor.policy import parse_policy
from varmor.profile import BuiltProfile, build_profile

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.stem for p in GOLDEN.glob("*.yaml"))
UPDATE = os.environ.get("VARMOR_UPDATE_GOLDEN") == "1"


def render(case: str) -> BuiltProfile:
    policy = parse_policy(yaml.safe_load((GOLDEN / f"{case}.yaml").read_text()))
    return build_profile(policy, policy.profile_name("varmor"))


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    built = render(case)
    expected = GOLDEN / f"{case}.apparmor"
    if UPDATE:
        expected.write_text(built.text)
    assert built.text == expected.read_text(), f"{case}: regenerate with VARMOR_UPDATE_GOLDEN=1"


def test_goldens_compile() -> None:
    assert_compiles({case: (GOLDEN / f"{case}.apparmor").read_text() for case in CASES})


def test_golden_set_covers_modes_and_features() -> None:
    assert {
        "always-allow",
        "runtime-default",
        "ep-deny",
        "ep-audit-deny",
        "ep-audit-allow",
        "ep-complain",
        "ep-privileged",
        "ep-targets",
        "ep-raw",
        "ep-unix-deny",
        "ep-disk-devices",
        "cluster",
    } <= set(CASES)
