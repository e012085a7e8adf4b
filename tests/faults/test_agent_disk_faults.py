"""The node agent with a broken disk: its profile dir is a real tmpfs, filled up (ENOSPC)
or remounted read-only (EROFS) under the running agent. The agent reports it (per-profile
failures, the ArmorNode condition ProfileDirWritable, a gauge), keeps loading what needs no
write, and recovers by itself once space returns or the fs is writable again."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes.aio import client

from tests.cluster.test_nodeexec_agent import Host, logged_failure, mine, node_status_when, put, running
from tests.faults.test_agent_faults import (
    cleanup_node,
    host,
    kernel_version,
    loaded_status,
    profile,
    profile_dir_exact,
    sample,
)
from tests.helpers import wait_for
from varmor import api
from varmor.nodeexec.agent import Agent

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("crds")]
G, V = api.GROUP, api.VERSION
__all__ = ["cleanup_node", "host"]  # fixtures shared with the parser faults


# -- a node whose profile dir is a small tmpfs ------------------------------------------------
@dataclass
class Disk:
    """A tmpfs mounted on the profile dir: `fill` it, make it read-only, and back."""

    root: Path

    def fill(self) -> None:
        free = os.statvfs(self.root)
        with open(self.root / "filler", "wb") as out:
            out.write(b"\0" * (free.f_bavail * free.f_frsize))

    def free(self) -> None:
        (self.root / "filler").unlink()

    def remount(self, mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.root)], check=True)


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "8m") -> Iterator[Disk]:
    if os.geteuid() != 0:
        pytest.fail("the disk faults mount a tmpfs: run the fault layer as root", pytrace=False)
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "varmor-faults", str(path)], check=True)
    try:
        yield Disk(path)
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True)


# -- a broken disk --------------------------------------------------------------------------------
async def test_a_full_profile_dir_is_reported_and_recovers_when_space_returns(
    api_client: Any, namespace: str, host: Host, cleanup_node: None, caplog: pytest.LogCaptureFixture
) -> None:
    keep, steady = profile(namespace, "keep", 1), profile(namespace, "steady")
    keep_name, steady_name = keep["metadata"]["name"], steady["metadata"]["name"]
    await put(api_client, keep)
    await put(api_client, steady)
    with tmpfs(host.profile_dir) as disk:
        config = host.config(retry_base=0.2, retry_seconds=1.0)
        async with running(Agent(config, api_client)) as agent:
            await node_status_when(api_client, host.node, lambda s: len(mine(s.get("profiles") or {}, namespace)) == 2)
            for features in agent.files.cache_dir.iterdir():  # the parser must write its cache anew
                shutil.rmtree(features)
            disk.fill()
            changed = [profile(namespace, "keep", 2), profile(namespace, "new1"), profile(namespace, "new2")]
            for body in changed:
                await put(api_client, body)
            names = {b["metadata"]["name"] for b in changed}

            def full(s: dict[str, Any]) -> bool:
                return set(mine(s.get("failures") or {}, namespace)) == names and bool(s.get("conditions"))

            status = await node_status_when(api_client, host.node, full, timeout=60)
            (condition,) = status["conditions"]
            assert (condition["type"], condition["status"], condition["reason"]) == (
                "ProfileDirWritable",
                "False",
                "NoSpace",
            )
            assert "No space left on device" in condition["message"]
            failure = status["failures"][keep_name]
            assert failure["sha256"] == changed[0]["spec"]["profile"]["sha256"]
            message = logged_failure(caplog, keep_name, failure["message"])  # the report has its start
            assert message.startswith(f"ProfileDirUnwritable: cannot write its load file in {host.profile_dir}")
            assert "No space left on device" in message
            assert f"the version with sha256 {keep['spec']['profile']['sha256']} stays loaded" in message
            # The new version of `keep` is not loaded (the kernel still has the first: below).
            assert mine(status["profiles"], namespace) == loaded_status([steady])
            assert sample("varmor_agent_profile_dir_writable") == 0
            host.kernel.settle()
            assert kernel_version(host.kernel, keep_name) == 1
            assert set(mine(host.kernel.top_level(), namespace)) == {keep_name, steady_name}
            # What is staged still loads with the disk full (the parser's cache cannot be
            # written, so it loads uncached): someone unloads `steady`, the refresh repairs it.
            host.kernel.set_loaded({k: v for k, v in host.kernel.loaded.items() if not k.startswith(steady_name)})
            await agent.refresh()
            await wait_for(lambda: steady_name in host.kernel.loaded, what="the unchanged profile reloaded")

            disk.free()
            status = await node_status_when(
                api_client,
                host.node,
                lambda s: mine(s["profiles"], namespace) == loaded_status([*changed, steady]) and writable(s),
                timeout=60,
            )
            assert mine(status["failures"], namespace) == {}
            (condition,) = status["conditions"]
            assert condition["reason"] == "Writable"
            assert sample("varmor_agent_profile_dir_writable") == 1
            host.kernel.settle()
            assert kernel_version(host.kernel, keep_name) == 2
            assert set(mine(host.kernel.top_level(), namespace)) == {*names, steady_name}
            await wait_for(lambda: _tidy(host.profile_dir, namespace, [*changed, steady]), what="old versions tidied")


def writable(status: dict[str, Any]) -> bool:
    return [c["status"] for c in status.get("conditions") or []] == ["True"]


def _tidy(profile_dir: Path, namespace: str, bodies: list[dict[str, Any]]) -> bool:
    try:
        profile_dir_exact(profile_dir, namespace, bodies)
    except AssertionError:
        return False
    return True


async def test_a_read_only_profile_dir_is_reported_and_recovers_when_writable_again(
    api_client: Any, namespace: str, host: Host, cleanup_node: None, caplog: pytest.LogCaptureFixture
) -> None:
    keep, gone = profile(namespace, "keep", 1), profile(namespace, "gone")
    keep_name, gone_name = keep["metadata"]["name"], gone["metadata"]["name"]
    for body in (keep, gone):
        await put(api_client, body)
    with tmpfs(host.profile_dir) as disk:
        config = host.config(retry_base=0.2, retry_seconds=1.0)
        async with running(Agent(config, api_client)):
            await node_status_when(api_client, host.node, lambda s: len(mine(s.get("profiles") or {}, namespace)) == 2)
            disk.remount("ro")
            changed = [profile(namespace, "keep", 2), profile(namespace, "new")]
            for body in changed:
                await put(api_client, body)
            await client.CustomObjectsApi(api_client).delete_namespaced_custom_object(
                G, V, namespace, "armorprofiles", gone_name
            )
            names = {b["metadata"]["name"] for b in changed}

            def refused(s: dict[str, Any]) -> bool:
                host.kernel.settle()
                return set(mine(s.get("failures") or {}, namespace)) == names and gone_name not in host.kernel.loaded

            status = await node_status_when(api_client, host.node, refused, timeout=60)
            (condition,) = status["conditions"]
            assert (condition["status"], condition["reason"]) == ("False", "ReadOnly")
            new_name = f"varmor-{namespace}-new"
            assert "Read-only file system" in logged_failure(caplog, new_name, status["failures"][new_name]["message"])
            # Neither new version is loaded (the kernel still has the first `keep`: below).
            assert mine(status["profiles"], namespace) == {}
            host.kernel.settle()
            # A deleted profile leaves the kernel even though its file cannot go yet.
            assert set(mine(host.kernel.top_level(), namespace)) == {keep_name}
            assert (host.profile_dir / gone_name).exists()

            disk.remount("rw")
            # Writable again once every refused write went through (other tests' profiles too).
            status = await node_status_when(
                api_client,
                host.node,
                lambda s: mine(s["profiles"], namespace) == loaded_status(changed) and writable(s),
                timeout=60,
            )
            assert mine(status["failures"], namespace) == {}
            host.kernel.settle()
            assert kernel_version(host.kernel, keep_name) == 2
            await wait_for(lambda: _tidy(host.profile_dir, namespace, changed), what="the deleted profile's file gone")
