"""`varmor run` reads the API server's release before it starts any role, and refuses one
below the supported range with the reason. No release below 1.29 is built here, so the test
raises the minimum above the real API server's release instead."""

from __future__ import annotations

import argparse
import logging

import pytest

from varmor import app, kubeversion
from varmor.dev.cluster import ControlPlane

pytestmark = pytest.mark.compat


async def test_varmor_run_refuses_a_release_below_the_supported_range(
    kubeconfig: str, compat_plane: ControlPlane, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    app.register(sub, ["run"])
    args = parser.parse_args(["run", "--roles=webhook,leader,agent", f"--kubeconfig={kubeconfig}"])
    minor = int(compat_plane.version.split(".")[1])
    monkeypatch.setattr(kubeversion, "MIN_SUPPORTED", (1, minor + 1))
    with caplog.at_level(logging.ERROR, logger="varmor"):
        assert await app.run_roles(args) == 2
    assert f"Kubernetes {compat_plane.version} is not supported: varmor needs 1.{minor + 1} or later" in caplog.text
