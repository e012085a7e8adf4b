"""The README's main command: `varmor dev up` shows a policy protecting a workload end
to end on a fresh state directory, and `varmor dev down` removes everything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster


def varmor(*args: str, state: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VARMOR_STATE": str(state)}
    env.pop("KUBECONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "varmor.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie of ours would still answer; the children are detached, so check its state
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_dev_up_shows_protection_and_dev_down_cleans_up(tmp_path: Path) -> None:
    up = varmor("dev", "up", "--timeout=90", state=tmp_path, timeout=240)
    output = up.stdout + up.stderr
    try:
        assert up.returncode == 0, output
        assert "policy demo/web: READY=True phase=Protecting" in output
        assert "abi <abi/3.0>," in output  # the generated profile is printed
        assert "profile varmor-demo-web flags=" in output
        assert "localhostProfile: varmor-demo-web" in output  # the admitted pod spec
        assert "varmor dev down" in output
        pids = list(json.loads((tmp_path / "dev" / "state.json").read_text())["pids"].values())
        pids += list(json.loads((tmp_path / "dev-cluster" / "state.json").read_text())["pids"].values())
        assert all(alive(pid) for pid in pids)
    finally:
        down = varmor("dev", "down", state=tmp_path, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not (tmp_path / "dev-cluster").exists()
    assert not any(alive(pid) for pid in pids)
