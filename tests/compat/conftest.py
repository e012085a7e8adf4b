"""The compat layer: the core of varmor against the oldest supported Kubernetes release
and the first with the pod AppArmor field (COMPAT_K8S_VERSIONS), one control plane per
release for the whole layer. The default suite runs on the newest release."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import install_crds_with
from varmor.dev.cluster import ControlPlane, ControlPlaneError
from varmor.dev.paths import COMPAT_K8S_VERSIONS


def start_plane(version: str) -> ControlPlane:
    """A running control plane of `version` in a fresh directory (fails the test, naming
    how to build it, when it cannot start)."""
    plane = ControlPlane(Path(tempfile.mkdtemp(prefix=f"varmor-cp-{version}-")), version=version)
    try:
        plane.start()
    except ControlPlaneError as exc:
        plane.stop()
        pytest.fail(f"Kubernetes {version} did not start: {exc}\n(run `make setup` to build it)", pytrace=False)
    return plane


def stop_plane(plane: ControlPlane) -> None:
    plane.stop()
    if os.environ.get("VARMOR_KEEP_LOGS"):
        print(f"control plane logs kept in {plane.workdir}")
    else:
        shutil.rmtree(plane.workdir, ignore_errors=True)


@pytest.fixture(scope="package", params=COMPAT_K8S_VERSIONS)
def compat_plane(request: pytest.FixtureRequest) -> Iterator[ControlPlane]:
    plane = start_plane(request.param)
    try:
        yield plane
    finally:
        stop_plane(plane)


@pytest.fixture(scope="package")
def kubeconfig(compat_plane: ControlPlane) -> str:
    """The compat release's admin kubeconfig, in place of the default suite's."""
    assert compat_plane.state is not None
    return compat_plane.state.kubeconfig


@pytest.fixture(scope="package")
async def crds(kubeconfig: str) -> list[str]:
    """The CRDs on this layer's control plane (the root fixture's, per compat release)."""
    return await install_crds_with(kubeconfig)
