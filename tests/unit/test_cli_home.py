"""`varmor` starts for a uid with no passwd entry and no HOME: a pod's runAsUser need not
exist in the image, and a runtime then sets no HOME. The Kubernetes client computes
~/.kube/config when imported, which raised `Could not determine home directory`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from varmor import __version__
from varmor.dev.paths import REPO_ROOT

# What the C library answers for such a uid (getpwuid fails), then the `varmor` entry point.
NO_PASSWD_ENTRY = """
import pwd, sys

def no_entry(uid):
    raise KeyError(f"getpwuid(): uid not found: {uid}")

pwd.getpwuid = no_entry
from varmor.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("argv", [["--help"], ["version"], ["run", "--help"]])
def test_varmor_starts_with_no_home_and_no_passwd_entry(argv: list[str]) -> None:
    env = {"PATH": os.environ["PATH"]}  # env -i: no HOME, no KUBECONFIG
    result = subprocess.run(
        [sys.executable, "-c", NO_PASSWD_ENTRY, *argv],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Could not determine home directory" not in result.stderr
    if argv == ["version"]:
        assert result.stdout.strip() == __version__
