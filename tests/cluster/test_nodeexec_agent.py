"""The node agent against the real API server and the real apparmor_parser, with a
stand-in securityfs (this host's kernel has no AppArmor): ArmorProfile -> loaded ->
ArmorNode, coalesced status, deletes, parser failures, restarts, reboots, unsupported
nodes, the `varmor run` process, and violations."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientSession
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException
from prometheus_client import REGISTRY

from tests import helpers
from tests.helpers import BAD_TEXT, NOT_ENFORCED, profile_text, wait_for
from varmor import api
from varmor.dev.cluster import free_port
from varmor.loadreport import truncate_message
from varmor.nodeexec.agent import Agent, AgentConfig
from varmor.nodeexec.files import ProfileDir
from varmor.nodeexec.standin import StandInSecurityfs, write_enabled_file
from varmor.nodeexec.state import sha256_text
from varmor.nodeexec.violations import ViolationReporter
from varmor.parser import CompileBudget

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("crds")]
G, V = api.GROUP, api.VERSION


@dataclass
class Host:
    """One simulated node: its stand-in kernel and its host paths."""

    node: str
    root: Path
    kernel: StandInSecurityfs

    @property
    def profile_dir(self) -> Path:
        return self.root / "etc-apparmor.d"

    def config(self, **over: Any) -> AgentConfig:
        values: dict[str, Any] = {
            "node_name": self.node,
            "profile_dir": self.profile_dir,
            "securityfs": self.kernel.root,
            "enabled_file": self.root / "enabled",
            "partitions": self.root / "partitions",
            "status_debounce": 0.2,
            **over,
        }
        return AgentConfig(**values)

    def args(self) -> list[str]:
        return [
            f"--node-name={self.node}",
            f"--profile-dir={self.profile_dir}",
            f"--securityfs={self.kernel.root}",
            f"--apparmor-enabled-file={self.root / 'enabled'}",
            f"--proc-partitions={self.root / 'partitions'}",
            "--agent-status-debounce=0.2",
        ]


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    write_enabled_file(tmp_path / "enabled")
    (tmp_path / "partitions").write_text("major minor  #blocks  name\n\n 254        0   52428800 vda\n")
    with StandInSecurityfs(tmp_path / "securityfs") as kernel:
        yield Host(f"node-{uuid.uuid4().hex[:8]}", tmp_path, kernel)


@pytest.fixture
async def cleanup_node(api_client: Any, host: Host) -> AsyncIterator[None]:
    """ArmorNodes are cluster-scoped: delete this test's, so the leader's counts elsewhere
    are not disturbed."""
    yield
    custom = client.CustomObjectsApi(api_client)
    with contextlib.suppress(ApiException):
        await custom.delete_cluster_custom_object(G, V, "armornodes", host.node)
    with contextlib.suppress(ApiException):
        await client.CoreV1Api(api_client).delete_node(host.node)


@contextlib.asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[Agent]:
    task = asyncio.create_task(agent.run())
    try:
        yield agent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def create_policy(api_client: Any, namespace: str, name: str = "web") -> dict[str, Any]:
    doc = helpers.policy(name, namespace, target_name=name, enhance={"hardeningRules": ["disallow-write-core-pattern"]})
    custom = client.CustomObjectsApi(api_client)
    result: dict[str, Any] = await custom.create_namespaced_custom_object(G, V, namespace, "varmorpolicies", doc)
    return result


def armor_profile(
    namespace: str, short: str, text: str | None = None, mode: str = "enforce", policy: Any = None
) -> dict[str, Any]:
    """ArmorProfile varmor-<namespace>-<short>; `text` is a template with {name}."""
    name = f"varmor-{namespace}-{short}"
    text = text.format(name=name) if text is not None else profile_text(name)
    return helpers.armor_profile(name, namespace, text, mode=mode, owner=policy)


async def put(api_client: Any, body: Any) -> Any:
    custom = client.CustomObjectsApi(api_client)
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        current = await custom.get_namespaced_custom_object(G, V, ns, "armorprofiles", name)
    except ApiException as exc:
        if exc.status != 404:
            raise
        return await custom.create_namespaced_custom_object(G, V, ns, "armorprofiles", body)
    current["spec"] = body["spec"]
    return await custom.replace_namespaced_custom_object(G, V, ns, "armorprofiles", name, current)


async def armor_node(api_client: Any, node: str) -> dict[str, Any] | None:
    try:
        result: dict[str, Any] = await client.CustomObjectsApi(api_client).get_cluster_custom_object(
            G, V, "armornodes", node
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return result


async def node_status_when(api_client: Any, node: str, check: Any, timeout: float = 30.0) -> dict[str, Any]:
    """The ArmorNode's status once `check` holds for it, with the per-profile maps the
    leader would derive from its load report (`helpers.armor_node_maps`): `profiles`
    (loaded at the ArmorProfile's current content) and `failures`. A deleted ArmorProfile
    leaves them at once: whether it was unloaded is the kernel's to say, or `loaded`'s."""

    async def probe() -> dict[str, Any] | None:
        status = await helpers.armor_node_maps(api_client, node)
        return status if status and check(status) else None

    result: dict[str, Any] = await wait_for(probe, timeout=timeout, interval=0.1)
    return result


def ops(host: Host, namespace: str) -> list[tuple[str, str]]:
    """What reached the stand-in kernel for this test's profiles (the agent also serves
    other tests' ArmorProfiles, which come and go cluster-wide)."""
    prefix = f"varmor-{namespace}-"
    return [(op.action, op.name) for op in host.kernel.ops if op.name.startswith(prefix) and "//" not in op.name]


def status_settled(agent: Agent) -> bool:
    """Nothing marked and nothing unwritten: no further write follows without a new change."""
    writer = agent.status
    return not writer._dirty.is_set() and writer._last is not None and writer._last_key == writer.key(writer.build())


def synced(agent: Agent, name: str) -> Callable[[], bool]:
    """A probe, true once a sync of `name` finished after this call: everything that sync
    did (an unload, the profile's files) is done."""
    done: list[str] = []

    def heard(synced_name: str) -> None:
        if synced_name == name:
            done.append(synced_name)

    agent.synced_listeners.append(heard)
    return lambda: bool(done)


async def reported(api_client: Any, agent: Agent) -> bool:
    """The agent has nothing left to write, and its ArmorNode counts what it holds."""
    if not status_settled(agent):
        return False
    status = (await armor_node(api_client, agent.config.node_name) or {}).get("status") or {}
    return status.get("loaded") == len(agent.state.loaded)


def logged_failure(caplog: pytest.LogCaptureFixture, name: str, reported: str) -> str:
    """The whole failure message the agent logged for `name` whose start the ArmorNode
    reports (a report carries at most 160 bytes of it; the log has it all)."""
    logged = [r.args[2] for r in caplog.records if isinstance(r.args, tuple) and len(r.args) == 3 and r.args[0] == name]
    whole = [m for m in logged if isinstance(m, str) and truncate_message(m) == reported]
    assert whole, f"no logged failure of {name} starts with {reported!r}: {logged}"
    return whole[-1]


def mine(loaded: dict[str, Any], namespace: str) -> dict[str, Any]:
    return {k: v for k, v in loaded.items() if k.startswith(f"varmor-{namespace}-")}


# -- the flow ------------------------------------------------------------------------
async def test_profiles_load_and_status_is_exact(
    api_client: Any, namespace: str, host: Host, cleanup_node: None
) -> None:
    core = client.CoreV1Api(api_client)
    node_obj = await core.create_node({"metadata": {"name": host.node}})
    policy = await create_policy(api_client, namespace)
    bodies = [armor_profile(namespace, f"p{i}", policy=policy) for i in range(3)]
    bodies.append(armor_profile(namespace, "quiet", mode="complain", policy=policy))
    for body in bodies:
        await put(api_client, body)
    names = {b["metadata"]["name"] for b in bodies}
    agent = Agent(host.config(), api_client)
    async with running(agent):
        status = await node_status_when(api_client, host.node, lambda s: s.get("ready"))
        assert status["phase"] == "Supported"
        assert status["agentVersion"]
        assert status["parserVersion"][0].isdigit()
        assert mine(status["profiles"], namespace) == {
            b["metadata"]["name"]: {
                "namespace": namespace,
                "sha256": b["spec"]["profile"]["sha256"],
                "mode": b["spec"]["profile"]["mode"],
            }
            for b in bodies
        }
        assert mine(status.get("failures", {}), namespace) == {}
        host.kernel.settle()
        assert mine(host.kernel.top_level(), namespace) == {
            n: ("complain" if "quiet" in n else "enforce") for n in names
        }
        for name in names:
            assert (host.profile_dir / name).read_text() == next(
                b["spec"]["profile"]["appArmor"] for b in bodies if b["metadata"]["name"] == name
            )
        assert "/dev/vda" in (host.profile_dir / "varmor" / "node-local").read_text()
        quiet = f"varmor-{namespace}-quiet"
        assert mine(dict.fromkeys(ProfileDir(host.profile_dir).complain_markers()), namespace) == {quiet: None}
        owner = (await armor_node(api_client, host.node) or {})["metadata"]["ownerReferences"]
        assert owner == [{"apiVersion": "v1", "kind": "Node", "name": host.node, "uid": node_obj.metadata.uid}]

        # One policy change: one replace in the kernel, one status write (two when the load
        # outlasts the writer's debounce: the profile as loading, then as loaded).
        host.kernel.clear_ops()
        writes = agent.status.writes
        changed = armor_profile(
            namespace, "p0", text=NOT_ENFORCED.replace("deny unix addr=@/containerd-shim/**,", "deny /x r,")
        )
        await put(api_client, changed)
        new_sha = changed["spec"]["profile"]["sha256"]
        name0 = changed["metadata"]["name"]
        await node_status_when(api_client, host.node, lambda s: s["profiles"].get(name0, {}).get("sha256") == new_sha)
        await wait_for(lambda: status_settled(agent), what="the status writer with nothing left to write")
        assert 1 <= agent.status.writes - writes <= 2
        host.kernel.settle()
        assert ops(host, namespace) == [("replace", name0)]

        # Delete: unloaded (by name, through .remove), file removed, status updated.
        host.kernel.clear_ops()
        name1 = bodies[1]["metadata"]["name"]
        unloaded = synced(agent, name1)
        await client.CustomObjectsApi(api_client).delete_namespaced_custom_object(
            G, V, namespace, "armorprofiles", name1
        )
        await wait_for(unloaded, what=f"the sync of the deleted {name1}")
        await wait_for(lambda: reported(api_client, agent), what="the unload reported")
        host.kernel.settle()
        assert ops(host, namespace) == [("remove", name1)]
        host.kernel.settle()
        assert name1 not in host.kernel.top_level()
        assert not (host.profile_dir / name1).exists()


async def test_parser_failure_is_reported_and_does_not_block_others(
    api_client: Any, namespace: str, host: Host, cleanup_node: None
) -> None:
    for body in (
        armor_profile(namespace, "good1"),
        armor_profile(namespace, "bad", text=BAD_TEXT),
        armor_profile(namespace, "unix", text=NOT_ENFORCED),
        armor_profile(namespace, "good2"),
    ):
        await put(api_client, body)
    bad, unix = f"varmor-{namespace}-bad", f"varmor-{namespace}-unix"
    async with running(Agent(host.config(), api_client)):
        status = await node_status_when(api_client, host.node, lambda s: s.get("ready"))
        assert set(mine(status["profiles"], namespace)) == {f"varmor-{namespace}-good1", f"varmor-{namespace}-good2"}
        failures = mine(status["failures"], namespace)
        assert set(failures) == {bad, unix}
        assert "syntax error" in failures[bad]["message"]
        assert bad in failures[bad]["message"]
        assert "varmor/loads" not in failures[bad]["message"]
        assert "not enforced" in failures[unix]["message"]
        assert failures[bad]["sha256"] == sha256_text(BAD_TEXT.format(name=bad))
        assert not (host.profile_dir / bad).exists()  # never a text that failed in the profile dir
        # Fixing the text clears the failure.
        await put(api_client, armor_profile(namespace, "bad"))
        status = await node_status_when(api_client, host.node, lambda s: bad in s["profiles"])
        assert bad not in status["failures"]


async def test_restart_unloads_orphans_keeps_host_profiles_and_restores_after_reboot(
    api_client: Any, namespace: str, host: Host, cleanup_node: None
) -> None:
    keep = armor_profile(namespace, "keep")
    await put(api_client, keep)
    keep_name, orphan = keep["metadata"]["name"], f"varmor-{namespace}-orphan"
    # Left over from a previous agent: an orphan and a stale version in the kernel, a stale
    # file; plus the host's own profiles, which must not be touched.
    host.kernel.set_loaded(
        {
            keep_name: "complain",
            orphan: "enforce",
            f"{orphan}//child_0": "enforce",
            "/usr/bin/man": "enforce",
            "docker-default": "enforce",
        }
    )
    host.profile_dir.mkdir(parents=True)
    (host.profile_dir / orphan).write_text("old")
    (host.profile_dir / "usr.bin.man").write_text("host profile")
    async with running(Agent(host.config(), api_client)):
        status = await node_status_when(api_client, host.node, lambda s: s.get("ready"))
        assert mine(status["profiles"], namespace) == {
            keep_name: {"namespace": namespace, "sha256": keep["spec"]["profile"]["sha256"], "mode": "enforce"}
        }
        host.kernel.settle()
        loaded = host.kernel.top_level()
        assert loaded[keep_name] == "enforce"
        assert orphan not in loaded
        host.kernel.settle()
        assert f"{orphan}//child_0" not in host.kernel.loaded
        assert loaded["/usr/bin/man"] == "enforce"
        assert loaded["docker-default"] == "enforce"
        removed = {op.name for op in host.kernel.ops if op.action == "remove"}
        assert orphan in removed
        assert not removed & {"/usr/bin/man", "docker-default", keep_name}
        assert not (host.profile_dir / orphan).exists()
        assert (host.profile_dir / "usr.bin.man").read_text() == "host profile"

    # A reboot: the kernel comes back empty (the files stayed). The same start-up restores.
    host.kernel.set_loaded({"/usr/bin/man": "enforce"})
    host.kernel.clear_ops()
    async with running(Agent(host.config(), api_client)) as agent:
        await wait_for(lambda: agent.ready and keep_name in host.kernel.loaded, timeout=30)
        host.kernel.settle()
        assert host.kernel.top_level()[keep_name] == "enforce"
        assert (host.profile_dir / keep_name).exists()


async def test_unchanged_profiles_reload_from_the_parser_cache_and_versions_never_mix(
    api_client: Any, namespace: str, host: Host, cleanup_node: None
) -> None:
    """Each version is loaded from a file named by its content, with the parser's compiled
    policy cached under that name: after a reboot an unchanged profile is not recompiled,
    and a new version never meets the old version's cache entry."""
    first = armor_profile(namespace, "cached")
    name, sha = first["metadata"]["name"], first["spec"]["profile"]["sha256"]
    await put(api_client, first)
    files = ProfileDir(host.profile_dir)
    async with running(Agent(host.config(), api_client)):
        await node_status_when(api_client, host.node, lambda s: name in s.get("profiles", {}))
    load_file = files.load_path(name, sha)
    assert load_file.read_text() == first["spec"]["profile"]["appArmor"]
    (entry,) = files.cache_root.glob(f"*/*/{load_file.name}")
    assert entry.parent.parent.name.startswith("parser-")  # keyed by what compiled it
    compiled = entry.stat().st_mtime_ns

    # A reboot: the kernel comes back empty; the profile is loaded from the cache as compiled.
    host.kernel.set_loaded({})
    host.kernel.clear_ops()
    async with running(Agent(host.config(), api_client)) as agent:
        await wait_for(lambda: agent.ready and name in host.kernel.loaded, timeout=30)
        assert entry.stat().st_mtime_ns == compiled  # a cache hit: nothing recompiled
        assert (host.profile_dir / name).read_text() == first["spec"]["profile"]["appArmor"]

        # A new version: its own load file and cache entry; the old version's are gone.
        text = profile_text(name, hardeningRules=["disallow-umount"])
        second = armor_profile(namespace, "cached", text=text.replace("{", "{{").replace("}", "}}"))
        await put(api_client, second)
        new_sha = second["spec"]["profile"]["sha256"]
        await node_status_when(api_client, host.node, lambda s: s["profiles"].get(name, {}).get("sha256") == new_sha)
        new_file = files.load_path(name, new_sha)
        assert [p.name for p in files.cache_root.glob(f"*/*/{name}@*")] == [new_file.name]
        assert not load_file.exists()
        assert (host.profile_dir / name).read_text() == second["spec"]["profile"]["appArmor"]

        # Deleting the profile takes its load file and cache entry with it.
        custom = client.CustomObjectsApi(api_client)
        unloaded = synced(agent, name)
        await custom.delete_namespaced_custom_object(G, V, namespace, "armorprofiles", name)
        await wait_for(unloaded, what=f"the sync of the deleted {name}")
        host.kernel.settle()
        assert name not in host.kernel.top_level()
        assert not new_file.exists()
        assert not list(files.cache_root.glob(f"*/*/{name}@*"))


async def test_node_without_apparmor_reports_unsupported(api_client: Any, host: Host, cleanup_node: None) -> None:
    (host.root / "enabled").unlink()
    agent = Agent(host.config(), api_client)
    async with running(agent):
        status = await node_status_when(api_client, host.node, lambda s: s.get("phase") == "Unsupported")
        assert "does not exist" in status["reason"]
        assert status["ready"] is True
        assert agent.ready
        assert status["loaded"] == 0
        assert status["profiles"] == {}
    host.kernel.settle()
    assert host.kernel.ops == []


async def test_idle_agent_renews_its_heartbeat(api_client: Any, namespace: str, host: Host, cleanup_node: None) -> None:
    """The leader tells a gone agent by a stale heartbeatTime: an idle agent renews it
    alone (profiles untouched, lastUpdateTime kept) with heartbeat-only writes. (The
    cadence, one beat per interval, is asserted on a manual clock in
    tests/unit/test_nodeexec_status.py; here only that the beat advances for real.)"""
    await put(api_client, armor_profile(namespace, "beat"))
    name = f"varmor-{namespace}-beat"
    agent = Agent(host.config(heartbeat_seconds=1.0), api_client)
    async with running(agent):
        first = await node_status_when(api_client, host.node, lambda s: s.get("ready") and name in s["profiles"])
        assert first["heartbeatTime"]
        writes, beats = agent.status.writes, agent.status.heartbeats
        later = await node_status_when(api_client, host.node, lambda s: s["heartbeatTime"] > first["heartbeatTime"])
        now = await node_status_when(api_client, host.node, lambda s: s["heartbeatTime"] > later["heartbeatTime"])
        # Other tests' ArmorProfiles may come and go meanwhile (each such change is a
        # full write, which is a beat too), so wait for heartbeat-only writes themselves.
        await wait_for(lambda: agent.status.heartbeats - beats >= 2, what="two heartbeat-only writes")
        assert now["profiles"][name] == first["profiles"][name]
        assert now["ready"] is True
        idle = agent.status.writes - writes == agent.status.heartbeats - beats
    if idle:  # no full write since the first status: lastUpdateTime kept
        assert now["lastUpdateTime"] == first["lastUpdateTime"]


# -- the real process ----------------------------------------------------------------
async def test_varmor_run_agent_process_ready_after_initial_sync(
    api_client: Any, kubeconfig: str, namespace: str, host: Host, cleanup_node: None
) -> None:
    await put(api_client, armor_profile(namespace, "proc"))
    health = free_port()
    cmd = [sys.executable, "-m", "varmor.cli", "run", "--roles=agent", f"--kubeconfig={kubeconfig}"]
    cmd += [f"--health-port={health}", f"--metrics-port={free_port()}", "--bind-address=127.0.0.1", *host.args()]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env={**os.environ}
    )
    try:
        async with ClientSession() as http:

            async def ready() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{health}/readyz") as response:
                        return response.status == 200
                except OSError:
                    return False

            await wait_for(ready, timeout=60, interval=0.1)
        status = (await armor_node(api_client, host.node) or {}).get("status") or {}
        assert status.get("ready")
        host.kernel.settle()
        assert f"varmor-{namespace}-proc" in host.kernel.loaded
        assert (
            f"varmor-{namespace}-proc"
            in (await node_status_when(api_client, host.node, lambda s: s["profiles"]))["profiles"]
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]


# -- violations ----------------------------------------------------------------------
async def test_violations_are_attributed_logged_and_rate_limited(
    api_client: Any, namespace: str, host: Host, cleanup_node: None
) -> None:
    policy = await create_policy(api_client, namespace)
    await put(api_client, armor_profile(namespace, "web", policy=policy))
    name = f"varmor-{namespace}-web"
    audit_log, out = host.root / "audit.log", host.root / "violations.jsonl"
    audit_log.write_text("")
    agent = Agent(host.config(), api_client)
    reporter = ViolationReporter(
        agent.kube, host.node, audit_log, agent.owner, json_out=str(out), poll=0.05, from_start=True
    )
    async with running(agent):
        await wait_for(lambda: agent.ready, timeout=30)
        sent = REGISTRY.get_sample_value("varmor_agent_violation_events_total", {"result": "sent"}) or 0.0
        suppressed = REGISTRY.get_sample_value("varmor_agent_violation_events_total", {"result": "suppressed"}) or 0.0
        task = asyncio.create_task(reporter.run())
        try:
            lines = [
                f'type=AVC msg=audit(1700000000.{i:03d}:{100 + i}): apparmor="DENIED" operation="open" class="file" '
                f'profile="{name}//child_0" name="/etc/shadow" pid=42 comm="cat" requested_mask="r" '
                f'denied_mask="r" fsuid=0 ouid=0'
                for i in range(5)
            ]
            lines.append(
                'type=AVC msg=audit(1.0:1): apparmor="DENIED" operation="open" profile="docker-default" name="/x"'
            )
            with audit_log.open("a") as f:
                f.write("\n".join(lines) + "\n")

            async def logged() -> list[dict[str, Any]]:
                text = out.read_text() if out.exists() else ""
                entries = [orjson.loads(line) for line in text.splitlines()]
                return entries if len(entries) == 5 else []

            entries = await wait_for(logged, timeout=15, interval=0.05)
            assert entries[0]["policy"] == {"kind": "VarmorPolicy", "namespace": namespace, "name": "web"}
            assert entries[0]["profile"] == f"{name}//child_0"
            assert entries[0]["target"] == "/etc/shadow"
            assert entries[0]["node"] == host.node

            core = client.CoreV1Api(api_client)

            async def events() -> list[Any]:
                listed = await core.list_namespaced_event(namespace, field_selector="involvedObject.name=web")
                return [e for e in listed.items if e.reason == "ViolationDenied"]

            def counted(result: str) -> float:
                return REGISTRY.get_sample_value("varmor_agent_violation_events_total", {"result": result}) or 0.0

            # All five records were handled (logged): one Event sent, four held back.
            await wait_for(lambda: counted("sent") - sent == 1 and counted("suppressed") - suppressed == 4, timeout=15)
            found = await events()
            assert len(found) == 1  # five records, one Event (rate-limited)
            assert found[0].type == "Warning"
            assert "/etc/shadow" in found[0].message
            assert found[0].involved_object.uid == policy["metadata"]["uid"]
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# -- the whole flow with a real leader ---------------------------------------------------
async def test_policy_to_armor_node_to_ready_with_leader_and_agent_process(
    api_client: Any, kubeconfig: str, namespace: str, host: Host, cleanup_node: None
) -> None:
    """`varmor run --roles=leader,agent`: a VarmorPolicy becomes an ArmorProfile (leader),
    is loaded and reported in the ArmorNode (agent), and the leader counts it loaded."""
    cmd = [sys.executable, "-m", "varmor.cli", "run", "--roles=leader,agent", f"--kubeconfig={kubeconfig}"]
    cmd += [f"--namespace={namespace}", "--no-leader-webhook-tasks", "--bind-address=127.0.0.1"]
    cmd += [f"--health-port={free_port()}", f"--metrics-port={free_port()}", "--status-delay=0.2", *host.args()]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    custom = client.CustomObjectsApi(api_client)
    try:
        await create_policy(api_client, namespace, "web")
        profile = f"varmor-{namespace}-web"

        async def armor_profile_sha() -> str | None:
            try:
                ap = await custom.get_namespaced_custom_object(G, V, namespace, "armorprofiles", profile)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            sha: str = ap["spec"]["profile"]["sha256"]
            return sha

        sha = await wait_for(armor_profile_sha, timeout=60)
        status = await node_status_when(api_client, host.node, lambda s: profile in s.get("profiles", {}), timeout=60)
        assert status["profiles"][profile] == {"namespace": namespace, "sha256": sha, "mode": "enforce"}
        host.kernel.settle()
        assert host.kernel.top_level()[profile] == "enforce"

        async def counted() -> dict[str, Any] | None:
            ap = await custom.get_namespaced_custom_object(G, V, namespace, "armorprofiles", profile)
            st = ap.get("status") or {}
            mine_failed = [c for c in st.get("conditions", []) if c.get("nodeName") == host.node]
            return st if st.get("currentNumberLoaded", 0) >= 1 and not mine_failed else None

        await wait_for(counted, timeout=60)

        async def policy_ready() -> bool:
            pol = await custom.get_namespaced_custom_object(G, V, namespace, "varmorpolicies", "web")
            return bool((pol.get("status") or {}).get("ready"))

        await wait_for(policy_ready, timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-3000:]


async def test_refresh_repairs_drift_and_node_deletion_collects_armor_node(
    api_client: Any, namespace: str, host: Host, cleanup_node: None
) -> None:
    core = client.CoreV1Api(api_client)
    await core.create_node({"metadata": {"name": host.node}})
    await put(api_client, armor_profile(namespace, "drift"))
    name, stray = f"varmor-{namespace}-drift", f"varmor-{namespace}-stray"
    agent = Agent(host.config(), api_client)
    async with running(agent):
        await wait_for(lambda: agent.ready, timeout=30)
        # Someone unloads ours and loads a varmor-* profile no ArmorProfile asks for.
        host.kernel.set_loaded({**{k: v for k, v in host.kernel.loaded.items() if k != name}, stray: "enforce"})
        host.kernel.clear_ops()
        await agent.refresh()
        await wait_for(lambda: name in host.kernel.loaded and stray not in host.kernel.loaded, timeout=30)
        host.kernel.settle()
        assert sorted(ops(host, namespace)) == [("remove", stray), ("replace", name)]
    await core.delete_node(host.node)

    async def collected() -> bool:
        return await armor_node(api_client, host.node) is None

    await wait_for(collected, timeout=60)  # the owner reference lets the GC remove it


async def test_a_profile_over_the_compile_budget_is_reported_and_never_retried(
    api_client: Any, namespace: str, host: Host, cleanup_node: None
) -> None:
    await put(api_client, armor_profile(namespace, "slow", text=helpers.SLOW_TEXT))
    await put(api_client, armor_profile(namespace, "good"))
    slow, good = f"varmor-{namespace}-slow", f"varmor-{namespace}-good"
    config = host.config(budget=CompileBudget(cpu_seconds=1), retry_seconds=0.0)  # other failures: retried at once
    async with running(Agent(config, api_client)) as agent:
        status = await node_status_when(api_client, host.node, lambda s: s.get("ready") and slow in s["failures"])
        assert set(mine(status["profiles"], namespace)) == {good}
        message = status["failures"][slow]["message"]
        assert message.startswith("CompileBudgetExceeded: ")
        assert "1 CPU-seconds" in message
        assert agent.loader is not None
        tried: list[str] = []
        load = agent.loader.load

        async def counted(name: str, path: Path, *, complain: bool) -> Any:
            tried.append(name)
            return await load(name, path, complain=complain)

        agent.loader.load = counted  # type: ignore[method-assign]
        for _ in range(3):  # events, resyncs and forced repairs all come back to the same content
            agent._force.add(slow)
            agent.queue.add(slow)
            await agent.queue.wait_idle()
        assert tried == []
        # New content is tried (and loads).
        await put(api_client, armor_profile(namespace, "slow"))
        status = await node_status_when(api_client, host.node, lambda s: slow in s["profiles"])
        assert slow not in status["failures"]
        assert tried == [slow]


# -- the agent trusts nothing -------------------------------------------------------------
HOSTILE = {
    "attach": "abi <abi/3.0>,\nprofile {name} /** {{\n  file,\n}}\n",
    "unconfined": "abi <abi/3.0>,\nprofile {name} {{\n  file,\n  /bin/sh ux,\n}}\n",
    "include": 'abi <abi/3.0>,\nprofile {name} {{\n  #include "/etc/shadow"\n  file,\n}}\n',
    "escape": "abi <abi/3.0>,\nprofile {name} {{\n  file,\n  change_profile -> unconfined,\n}}\n",
}


async def test_an_armor_profile_that_does_more_than_varmor_writes_never_reaches_the_kernel(
    api_client: Any, namespace: str, host: Host, cleanup_node: None
) -> None:
    """Whoever can write ArmorProfiles (the leader's token) cannot use the agent to confine
    host processes, leave confinement or read host files: each is refused and reported, and
    the parser never sees the text."""
    for short, text in HOSTILE.items():
        await put(api_client, armor_profile(namespace, short, text=text))
    await put(api_client, armor_profile(namespace, "good"))
    names = {f"varmor-{namespace}-{short}" for short in HOSTILE}
    async with running(Agent(host.config(), api_client)):
        status = await node_status_when(
            api_client, host.node, lambda s: s.get("ready") and names <= set(s.get("failures") or {})
        )
        failures = mine(status["failures"], namespace)
        assert set(mine(status["profiles"], namespace)) == {f"varmor-{namespace}-good"}
        for name in names:
            assert "refused to load" in failures[name]["message"], failures[name]
            assert "root:" not in failures[name]["message"]  # no host file content, ever
            assert not (host.profile_dir / name).exists()
    host.kernel.settle()
    assert not names & set(host.kernel.top_level())
