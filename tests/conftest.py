"""Shared fixtures: one real control plane per test session, a namespace per test."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from varmor.dev.cluster import ControlPlane, ControlPlaneError, ControlPlaneState

_PLANES: list[ControlPlane] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    """Show the control plane's log tails on a failed cluster test."""
    report = yield
    if report.failed and _PLANES and item.get_closest_marker("cluster"):
        report.sections.append(("control plane logs", _PLANES[0].logs()))
    return report


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlaneState]:
    """etcd + kube-apiserver + kube-controller-manager on loopback, shared by all cluster tests.

    Set VARMOR_TEST_KUBECONFIG to reuse a running `varmor dev cluster up` instead.
    """
    existing = os.environ.get("VARMOR_TEST_KUBECONFIG")
    if existing:
        yield ControlPlaneState(workdir="", api_port=0, kubeconfig=existing)
        return
    workdir = Path(tempfile.mkdtemp(prefix="varmor-cp-"))
    plane = ControlPlane(workdir)
    _PLANES.append(plane)
    try:
        state = plane.start()
    except ControlPlaneError as exc:
        plane.stop()
        pytest.fail(f"control plane did not start: {exc}\n(run `make setup` to build it)", pytrace=False)
    try:
        yield state
    finally:
        plane.stop()
        if os.environ.get("VARMOR_KEEP_LOGS"):
            print(f"control plane logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def scheduler(control_plane: ControlPlaneState) -> None:
    """kube-scheduler on the shared control plane, from the first test that runs pods of a
    DaemonSet, Deployment or Job on a real node (before that, pods stay unscheduled)."""
    if not _PLANES:
        pytest.fail("a scheduler needs the suite's own control plane (unset VARMOR_TEST_KUBECONFIG)", pytrace=False)
    _PLANES[0].start_scheduler()


@pytest.fixture(scope="session")
def kubeconfig(control_plane: ControlPlaneState) -> str:
    return control_plane.kubeconfig


@pytest.fixture(scope="session")
async def crds(kubeconfig: str) -> list[str]:
    """All four varmor CRDs from chart/crds/, installed and Established (once per session)."""
    from tests.helpers import install_crds_with

    return await install_crds_with(kubeconfig)


@pytest.fixture
async def api_client(kubeconfig: str) -> AsyncIterator[object]:
    from varmor.kube.client import new_api_client

    client = await new_api_client(kubeconfig)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def namespace(api_client: object) -> AsyncIterator[str]:
    """A fresh namespace with its default ServiceAccount ready, deleted afterwards."""
    import asyncio

    from kubernetes.aio import client

    core = client.CoreV1Api(api_client)
    name = f"t-{uuid.uuid4().hex[:10]}"
    await core.create_namespace({"metadata": {"name": name, "labels": {"varmor-test": "true"}}})
    for _ in range(200):  # the controller-manager creates the default SA
        sas = await core.list_namespaced_service_account(name)
        if any(sa.metadata.name == "default" for sa in sas.items):
            break
        await asyncio.sleep(0.05)
    try:
        yield name
    finally:
        await core.delete_namespace(name)
