"""A real `varmor` agent process SIGKILLed at each step of a load, then started again.

The kill lands at a step held open by the parser wrapper (`ParserFault`): (a) the new
versions' load files are written but the parser has not run (the names check blocks),
(b) the parser is half-way through the batch (one profile reached the kernel, the rest
did not), (c) the kernel took every profile but the agent never heard back, so the
ArmorNode does not claim the new versions. Meanwhile a loaded profile's ArmorProfile is
deleted. After the restart the stand-in kernel, the ArmorNode and the profile dir are exact: every
desired profile loaded once at its desired version, the deleted one unloaded, no stale or
half-written file, and the status says what the kernel has.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientError, ClientSession
from kubernetes.aio import client

from tests.cluster.test_nodeexec_agent import Host, mine, node_status_when, put
from tests.faults.test_agent_faults import (
    ParserFault,
    cleanup_node,
    fault,
    host,
    kernel_version,
    loaded_status,
    profile,
    profile_dir_exact,
    replaced,
)
from tests.helpers import wait_for
from varmor import api
from varmor.dev.cluster import free_port
from varmor.nodeexec.files import ProfileDir

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("crds")]
G, V = api.GROUP, api.VERSION
__all__ = ["cleanup_node", "fault", "host"]  # fixtures shared with the parser and disk faults


@contextlib.asynccontextmanager
async def agent_process(kubeconfig: str, host: Host, fault: ParserFault, log: Path) -> AsyncIterator[Any]:
    """`varmor run --roles=agent` on the stand-in node with the wrapper as its parser,
    yielded once ready; killed (SIGKILL) on the way out if it still runs."""
    health = free_port()
    cmd = [sys.executable, "-m", "varmor.cli", "run", "--roles=agent", f"--kubeconfig={kubeconfig}"]
    cmd += [f"--health-port={health}", f"--metrics-port={free_port()}", "--bind-address=127.0.0.1", *host.args()]
    cmd += [f"--apparmor-parser={fault.path}"]
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=out, stderr=out, env={**os.environ})
    try:
        async with ClientSession() as http:

            async def ready() -> bool:
                assert proc.returncode is None, f"the agent exited:\n{log.read_text()[-3000:]}"
                with contextlib.suppress(ClientError, OSError):
                    async with http.get(f"http://127.0.0.1:{health}/readyz") as response:
                        return response.status == 200
                return False

            await wait_for(ready, timeout=60, what="the agent process ready")
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()


def nothing_loaded_yet(host: Host, fault: ParserFault, namespace: str, blocked: dict[str, Any]) -> None:
    """(a) The new versions' load files are written; the kernel has none of them."""
    loads = ProfileDir(host.profile_dir).root / "varmor" / "loads"
    assert all((loads / f).exists() for f in blocked["files"])
    assert kernel_version(host.kernel, f"varmor-{namespace}-p1") == 1
    assert f"varmor-{namespace}-new" not in host.kernel.top_level()


def first_loaded_only(host: Host, fault: ParserFault, namespace: str, blocked: dict[str, Any]) -> None:
    """(b) The run reached the kernel with its first profile, not with the rest."""
    mine_in_run = [f.split("@")[0] for f in blocked["files"] if namespace in f]
    first, rest = mine_in_run[0], mine_in_run[1:]
    assert first in host.kernel.top_level()
    assert kernel_version(host.kernel, first) == (2 if first.endswith("-p1") else 1)
    assert all(kernel_version(host.kernel, n) in (None, 1) for n in rest)


def kernel_took_all(host: Host, fault: ParserFault, namespace: str, blocked: dict[str, Any]) -> None:
    """(c) The kernel has the run's profiles at their new versions (the status does not: below)."""
    for name in [f.split("@")[0] for f in blocked["files"] if namespace in f]:
        assert kernel_version(host.kernel, name) == (2 if name.endswith("-p1") else 1)


STEPS: dict[str, tuple[dict[str, Any], Callable[[Host, ParserFault, str, dict[str, Any]], None]]] = {
    "before-the-parser": ({"action": "names", "fault": "block"}, nothing_loaded_yet),
    "while-the-parser-runs": ({"action": "replace", "fault": "block_after", "n": 1}, first_loaded_only),
    "after-the-kernel-took-it": ({"action": "replace", "fault": "block_at_exit"}, kernel_took_all),
}


@pytest.mark.parametrize("step", list(STEPS))
async def test_an_agent_killed_at_each_step_of_a_load_restarts_exact(
    step: str,
    api_client: Any,
    kubeconfig: str,
    namespace: str,
    host: Host,
    fault: ParserFault,
    cleanup_node: None,
    tmp_path: Path,
) -> None:
    rule, precondition = STEPS[step]
    before = [profile(namespace, "p1", 1), profile(namespace, "p2"), profile(namespace, "gone")]
    changes = [profile(namespace, "p1", 2), profile(namespace, "new")]
    desired = [changes[0], before[1], changes[1]]
    gone = before[2]["metadata"]["name"]
    for body in before:
        await put(api_client, body)
    log = tmp_path / "agent.log"
    async with agent_process(kubeconfig, host, fault, log) as first:
        await node_status_when(api_client, host.node, lambda s: mine(s["profiles"], namespace) == loaded_status(before))
        fault.inject({**rule, "match": namespace})
        for body in changes:
            await put(api_client, body)
        blocked: dict[str, Any] = (await wait_for(lambda: fault.events("blocked", match=namespace), what="the step"))[0]
        host.kernel.settle()
        precondition(host, fault, namespace, blocked)
        # The report claims none of the changes (whatever the kernel took): only the
        # unchanged profiles are loaded at their ArmorProfile's content, and nothing failed.
        status = await node_status_when(api_client, host.node, lambda s: True)
        assert mine(status["profiles"], namespace) == loaded_status(before[1:])
        assert mine(status["failures"], namespace) == {}
        first.send_signal(signal.SIGKILL)
        await first.wait()
    await wait_for(lambda: fault.alive() == [], what="the parser run gone with the agent")

    # While the agent is down: the parser works again, and one loaded profile's object goes.
    fault.inject()
    await client.CustomObjectsApi(api_client).delete_namespaced_custom_object(G, V, namespace, "armorprofiles", gone)
    host.kernel.clear_ops()
    async with agent_process(kubeconfig, host, fault, log):
        status = await node_status_when(
            api_client,
            host.node,
            lambda s: s.get("ready") and mine(s["profiles"], namespace) == loaded_status(desired),
        )
        assert mine(status["failures"], namespace) == {}
        host.kernel.settle()
        assert mine(host.kernel.top_level(), namespace) == dict.fromkeys(loaded_status(desired), "enforce")
        assert sorted(replaced(host.kernel, namespace)) == sorted(loaded_status(desired))  # each once
        for body in desired:
            name = body["metadata"]["name"]
            assert kernel_version(host.kernel, name) == (2 if name.endswith("-p1") else 1)
        assert [op.name for op in host.kernel.ops if op.action == "remove" and namespace in op.name] == [gone]
        profile_dir_exact(host.profile_dir, namespace, desired)
        stubs = host.profile_dir / "varmor" / "stubs"
        assert not stubs.exists() or not [p for p in stubs.iterdir() if namespace in p.name]
