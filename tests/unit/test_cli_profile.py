"""`varmor profile render --check`: the same compile budget as the leader and the webhook,
with flags to change it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers import policy, slow_rule
from varmor.cli import main


def _write(tmp_path: Path, rules: str) -> str:
    doc = policy("p", "demo", target_name="web", enhance={"appArmorRawRules": [{"rules": rules}]})
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_check_refuses_a_policy_over_the_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, slow_rule())
    assert main(["profile", "render", "--check", "--compile-cpu-seconds", "1", path]) == 1
    err = capsys.readouterr().err
    assert "exceeded its budget of 1 CPU-seconds" in err
    assert "CompileBudgetExceeded" in err
    assert main(["profile", "render", "--check", "--compile-memory-mib", "64", path]) == 1
    assert "64 MiB" in capsys.readouterr().err


def test_check_passes_an_ordinary_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "render", "--check", _write(tmp_path, "deny /etc/shadow r,")]) == 0
    assert "profile varmor-demo-p" in capsys.readouterr().out
