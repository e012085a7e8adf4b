"""The fault layer: varmor on its own control plane, which the tests break on purpose.

Its own plane because its tests kill and restart the API server, compact etcd and throttle
requests: the rest of the suite must not see that. The plane differs from the default one
in three flags, each serving a fault:

* an audit log of every request a ServiceAccount makes (every varmor role authenticates
  as one), so a test counts requests per role and verb, and sees which writes a paused
  leader got through;
* `--watch-cache=false`: watches are served by etcd, so compacting etcd makes a resumed
  watch end in 410 Gone, as it does behind a watch cache whose window has moved on;
* `--etcd-compaction-interval=0`: only the tests compact, when they mean to.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.audit import AUDIT_POLICY
from tests.helpers import install_crds_with
from varmor.dev.cluster import ControlPlane, ControlPlaneError, ControlPlaneState

_PLANES: list[ControlPlane] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Show the fault plane's log tails on a failed fault test."""
    report = yield
    if report.failed and _PLANES and item.get_closest_marker("faults"):
        report.sections.append(("fault control plane logs", _PLANES[0].logs()))
    return report


@pytest.fixture(scope="package")
def fault_plane() -> Iterator[ControlPlane]:
    workdir = Path(tempfile.mkdtemp(prefix="varmor-cp-faults-"))
    policy = workdir / "audit-policy.yaml"
    workdir.mkdir(parents=True, exist_ok=True)
    policy.write_text(AUDIT_POLICY)
    plane = ControlPlane(
        workdir,
        apiserver_flags=(
            f"--audit-policy-file={policy}",
            f"--audit-log-path={workdir / 'audit.log'}",
            "--audit-log-mode=blocking",  # a request's record is written before its response
            "--watch-cache=false",
            "--etcd-compaction-interval=0",
        ),
    )
    _PLANES.append(plane)
    try:
        plane.start()
    except ControlPlaneError as exc:
        plane.stop()
        pytest.fail(f"the fault layer's control plane did not start: {exc}\n(run `make setup`)", pytrace=False)
    try:
        yield plane
    finally:
        plane.stop()
        _PLANES.remove(plane)
        if os.environ.get("VARMOR_KEEP_LOGS"):
            print(f"fault control plane logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="package")
def control_plane(fault_plane: ControlPlane) -> ControlPlaneState:
    assert fault_plane.state is not None
    return fault_plane.state


@pytest.fixture(scope="package")
def kubeconfig(control_plane: ControlPlaneState) -> str:
    """The fault plane's admin kubeconfig, in place of the default suite's."""
    return control_plane.kubeconfig


@pytest.fixture(scope="package")
async def crds(kubeconfig: str) -> list[str]:
    """The CRDs on the fault plane."""
    return await install_crds_with(kubeconfig)
