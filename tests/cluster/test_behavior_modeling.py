"""Behaviour modelling on the real API server: a BehaviorModeling policy's profile is
loaded in complain mode by a real agent (stand-in kernel), the agent turns the kernel's
ALLOWED records into its node's ArmorBehavior, the leader merges shares into the
ArmorProfileModel, and the policy goes Modeling -> Completed on the leader's clock. Then
the policy switches in place to DefenseInDepth and enforces the model, and a later model
change waits for the user's acceptance."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from tests import helpers
from tests.cluster.test_nodeexec_agent import Host, cleanup_node, running
from tests.helpers import wait_for
from varmor import api
from varmor.behavior.codec import decode_model_data, encode_model_data
from varmor.behavior.model import Behavior, FileRule
from varmor.cli import main
from varmor.nodeexec.agent import Agent
from varmor.nodeexec.collector import BehaviorCollector
from varmor.nodeexec.standin import StandInSecurityfs, write_enabled_file
from varmor.nodeexec.violations import ViolationReporter
from varmor.policy import parse_policy

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("crds", "cleanup_node")]
__all__ = ["cleanup_node"]  # the fixture, used by name
G, V = api.GROUP, api.VERSION


class Clock:
    """The leader's clock, moved by the test (the window is minutes long)."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


def record(serial: int, profile: str, body: str, comm: str = "app") -> str:
    return (
        f'type=AVC msg=audit(1700000000.{serial % 1000:03d}:{serial}): apparmor="ALLOWED" {body.format(p=profile)} '
        f'pid={4000 + serial} comm="{comm}"'
    )


def records(profile: str) -> list[str]:
    """What a small workload does under the modelling profile, in the kernel's words."""
    lines = [
        'operation="exec" profile="{p}" name="/usr/bin/app" requested_mask="x" denied_mask="x" fsuid=0 ouid=0',
        'operation="open" profile="{p}//null-/usr/bin/app" name="/etc/app.conf" requested_mask="r" '
        'denied_mask="r" fsuid=0 ouid=0',
        'operation="open" profile="{p}" name="/proc/4242/status" requested_mask="r" denied_mask="r" fsuid=0 ouid=0',
        'operation="open" profile="{p}" name="/proc/4343/status" requested_mask="r" denied_mask="r" fsuid=0 ouid=0',
        'operation="capable" profile="{p}" capability=10 capname="net_bind_service"',
        'operation="create" profile="{p}" family="inet" sock_type="stream" protocol=6 requested_mask="create" '
        'denied_mask="create"',
    ]
    out = [record(200 + i, profile, line) for i, line in enumerate(lines)]
    # runc's own start-up under the profile: excluded, and counted
    out.append(record(300, profile, lines[1].replace("/etc/app.conf", "/proc/self/attr/exec"), comm="runc:[2:INIT]"))
    return out


@pytest.fixture
def host(tmp_path: Path) -> Any:
    write_enabled_file(tmp_path / "enabled")
    (tmp_path / "partitions").write_text("major minor  #blocks  name\n\n 254        0   52428800 vda\n")
    with StandInSecurityfs(tmp_path / "securityfs") as kernel:
        yield Host(f"model-{uuid.uuid4().hex[:8]}", tmp_path, kernel)


async def run_cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    capsys.readouterr()
    assert await asyncio.to_thread(main, argv) == 0
    return capsys.readouterr().out


async def test_watch_then_enforce(
    api_client: Any, namespace: str, leader: Any, host: Host, kubeconfig: str, capsys: pytest.CaptureFixture[str]
) -> None:
    custom = client.CustomObjectsApi(api_client)

    def cli(action: str) -> list[str]:
        return ["model", action, "web", "-n", namespace, "--install-namespace", namespace]

    clock = Clock()
    run = await leader(clock=clock)
    profile = f"varmor-{namespace}-web"
    doc = helpers.policy("web", namespace, target_name="web", mode="BehaviorModeling", modelingOptions=None)
    doc["spec"]["policy"]["modelingOptions"] = {"duration": 30}
    await custom.create_namespaced_custom_object(G, V, namespace, "varmorpolicies", doc)

    async def policy() -> dict[str, Any]:
        got: dict[str, Any] = await custom.get_namespaced_custom_object(G, V, namespace, "varmorpolicies", "web")
        return got

    async def armor_profile() -> dict[str, Any] | None:
        with contextlib.suppress(ApiException):
            got: dict[str, Any] = await custom.get_namespaced_custom_object(G, V, namespace, "armorprofiles", profile)
            return got
        return None

    ap = await wait_for(armor_profile, what="the modelling ArmorProfile")
    assert ap["spec"]["profile"]["mode"] == "complain"
    assert ap["spec"]["behaviorModeling"] == {"enable": True, "duration": 30}
    modeling = (await wait_for(lambda: _phase(policy, "Modeling")))["status"]["modeling"]
    assert modeling["duration"] == 30

    # Leaving BehaviorModeling while it models is refused by the API server itself.
    changed = await policy()
    changed["spec"]["policy"] = {"enforcer": "AppArmor", "mode": "RuntimeDefault"}
    with pytest.raises(ApiException) as refused:
        await custom.replace_namespaced_custom_object(G, V, namespace, "varmorpolicies", "web", changed)
    assert refused.value.status == 422
    assert "while the policy is Modeling" in str(refused.value.body)

    # The workload's pod, bound to the node (no kubelet here: it never starts, but its node
    # runs the profile, which is what the leader checks before it counts a node's share).
    core = client.CoreV1Api(api_client)
    await core.create_namespaced_pod(namespace, pod_on(host.node, profile, "web-1"))

    # A real agent loads the profile and collects what the workload does.
    audit_log = host.root / "audit.log"
    audit_log.write_text("")
    agent = Agent(host.config(), api_client)
    collector = BehaviorCollector(agent.kube, host.node, agent.owner, flush_seconds=0.1)
    reporter = ViolationReporter(
        agent.kube, host.node, audit_log, agent.owner, json_out="", poll=0.05, from_start=True, collector=collector
    )
    async with running(agent):
        tasks = [asyncio.create_task(reporter.run()), asyncio.create_task(collector.run())]
        try:
            await wait_for(lambda: agent.owner(profile) is not None and agent.owner(profile).modeling)  # type: ignore[union-attr]
            audit_log.write_text("\n".join(records(profile)) + "\n")
            model = await wait_for(lambda: _model(custom, namespace, profile, rules=5), what="the merged model")
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    behavior = decode_model_data(model)
    lines = {str(rule) for rule in behavior.rules}
    assert "FileRule(path='/proc/@{pid}/status', perms='r', owner=True)" in lines  # two pids, one rule
    assert "ExecRule(path='/usr/bin/app')" in lines
    assert not any("attr/exec" in line for line in lines)  # runc's start-up
    share = await custom.get_namespaced_custom_object(G, V, namespace, "armorbehaviors", f"{profile}.{host.node}")
    assert share["spec"]["excludedRecords"] == 1
    assert share["spec"]["records"] == 7
    assert model["status"]["nodes"][0]["nodeName"] == host.node
    status = (await wait_for(lambda: _model_in_status(policy, 5)))["status"]
    assert status["model"]["nodes"] == [host.node]
    assert status["phase"] == "Modeling"

    # The window ends on the leader's clock: Completed, and the profile stops modelling.
    clock.now += dt.timedelta(minutes=31)
    run.controller.queue.add(("VarmorPolicy", namespace, "web"))
    await wait_for(lambda: _phase(policy, "Completed"))
    ap = await wait_for(lambda: _mode(armor_profile, "enforce"))
    assert ap["spec"]["behaviorModeling"]["enable"] is False

    # `varmor model show` prints the rules; `export` the same policy switched in place.
    shown = await run_cli(capsys, [*cli("show"), "--kubeconfig", kubeconfig])
    assert "/proc/@{pid}/status r," in shown
    assert "capability net_bind_service," in shown
    assert f"node {host.node}: 5 rules, 7 records, 1 excluded" in shown
    exported = yaml.safe_load(await run_cli(capsys, [*cli("export"), "--kubeconfig", kubeconfig]))
    assert parse_policy(exported).mode == "DefenseInDepth"
    custom_export = yaml.safe_load(await run_cli(capsys, [*cli("export"), "--custom", "--kubeconfig", kubeconfig]))
    assert "/usr/bin/app ix," in custom_export["spec"]["policy"]["defenseInDepth"]["appArmor"]["customProfile"]
    assert parse_policy(custom_export).defense_in_depth is not None

    # Switch in place to DefenseInDepth: the profile enforces the model.
    changed = await policy()
    changed["spec"]["policy"] = exported["spec"]["policy"]
    changed["metadata"].setdefault("annotations", {}).update(exported["metadata"]["annotations"])
    changed["spec"]["policy"]["defenseInDepth"]["appArmor"]["appArmorRawRules"] = [{"rules": "deny /etc/shadow r,"}]
    await custom.replace_namespaced_custom_object(G, V, namespace, "varmorpolicies", "web", changed)
    ap = await wait_for(lambda: _has_model(armor_profile))
    text = ap["spec"]["profile"]["appArmor"]
    assert "/usr/bin/app ix," in text
    assert "capability net_bind_service," in text
    assert "deny /etc/shadow r," in text
    assert ap["spec"]["profile"]["mode"] == "enforce"
    enforced = ap["spec"]["modelSha256"]
    cond = helpers.condition(await wait_for(lambda: _condition(policy, "Model", "ModelEnforced")), "Model")
    assert enforced[:12] in cond["message"]
    assert (await policy())["status"].get("modeling") is None  # no window outside BehaviorModeling

    # A later share (another node) changes the model; the enforcing profile waits for acceptance.
    late = Behavior()
    late.add(FileRule("/var/cache/app/index", "rw"))
    storage, data = encode_model_data(late)
    other = "late-node"
    owner = {"apiVersion": api.API_VERSION, "kind": "ArmorProfile", "name": profile, "uid": ap["metadata"]["uid"]}
    late_share = {
        "apiVersion": api.API_VERSION,
        "kind": "ArmorBehavior",
        "metadata": {"name": f"{profile}.{other}", "ownerReferences": [owner]},
        "spec": {"nodeName": other, "profileName": profile, "records": 1},
        "storageType": storage,
        "data": data,
    }
    await custom.create_namespaced_custom_object(G, V, namespace, "armorbehaviors", late_share)
    # No pod on that node uses the profile: its share does not count (root on a node cannot
    # widen the model of a workload it never ran), and the model says so.
    refused = await wait_for(lambda: _node_refused(custom, namespace, profile, other))
    assert refused["refused"] == f"no pod on node {other} in namespace {namespace} uses the profile"
    await core.create_namespaced_pod(namespace, pod_on(other, profile, "web-2"))
    await custom.patch_namespaced_custom_object(
        G, V, namespace, "armorbehaviors", f"{profile}.{other}", {"spec": {"records": 2}}
    )
    waiting = await wait_for(lambda: _condition(policy, "Model", "ModelChanged"))
    new_sha = waiting["status"]["model"]["sha256"]
    assert new_sha != enforced
    assert waiting["status"]["model"]["enforcedSha256"] == enforced
    assert (await armor_profile())["spec"]["modelSha256"] == enforced  # type: ignore[index]

    # A spec change meanwhile still applies, around the model the profile enforces.
    tightened = await policy()
    tightened["spec"]["policy"]["defenseInDepth"]["appArmor"]["appArmorRawRules"] = [
        {"rules": "deny /etc/shadow r,\ndeny /etc/gshadow r,"}
    ]
    await custom.replace_namespaced_custom_object(G, V, namespace, "varmorpolicies", "web", tightened)
    ap = await wait_for(lambda: _text_has(armor_profile, "deny /etc/gshadow r,"))
    assert ap["spec"]["modelSha256"] == enforced
    assert "/usr/bin/app ix," in ap["spec"]["profile"]["appArmor"]
    assert "/var/cache/app/index" not in ap["spec"]["profile"]["appArmor"]

    stale = [*cli("accept"), "--sha256", enforced, "--kubeconfig", kubeconfig]
    assert await asyncio.to_thread(main, stale) == 1  # not the model as it is now: refused
    assert await asyncio.to_thread(main, [*cli("accept"), "--sha256", new_sha, "--kubeconfig", kubeconfig]) == 0
    assert (await policy())["metadata"]["annotations"][api.ACCEPT_MODEL_ANNOTATION] == new_sha
    ap = await wait_for(lambda: _has_model(armor_profile, new_sha))
    assert "/var/cache/app/index rw," in ap["spec"]["profile"]["appArmor"]

    # The model outlives its policy.
    await custom.delete_namespaced_custom_object(G, V, namespace, "varmorpolicies", "web")
    await wait_for(lambda: _gone(armor_profile))
    assert await _model(custom, namespace, profile, rules=6)


async def _phase(policy: Any, phase: str) -> dict[str, Any] | None:
    got: dict[str, Any] = await policy()
    return got if (got.get("status") or {}).get("phase") == phase else None


async def _model_in_status(policy: Any, rules: int) -> dict[str, Any] | None:
    got: dict[str, Any] = await policy()
    return got if ((got.get("status") or {}).get("model") or {}).get("rules") == rules else None


async def _condition(policy: Any, ctype: str, reason: str) -> dict[str, Any] | None:
    got: dict[str, Any] = await policy()
    return got if helpers.condition(got, ctype).get("reason") == reason else None


async def _mode(armor_profile: Any, mode: str) -> dict[str, Any] | None:
    ap = await armor_profile()
    return ap if ap is not None and ap["spec"]["profile"]["mode"] == mode else None


async def _has_model(armor_profile: Any, sha: str | None = None) -> dict[str, Any] | None:
    ap = await armor_profile()
    found = (ap or {}).get("spec", {}).get("modelSha256")
    return ap if found and (sha is None or found == sha) else None


async def _gone(armor_profile: Any) -> bool:
    return await armor_profile() is None


async def _model(custom: Any, namespace: str, profile: str, *, rules: int) -> dict[str, Any] | None:
    try:
        got: dict[str, Any] = await custom.get_namespaced_custom_object(G, V, namespace, "armorprofilemodels", profile)
    except ApiException:
        return None
    return got if (got.get("status") or {}).get("rules") == rules else None


def pod_on(node: str, profile: str, name: str) -> dict[str, Any]:
    """A pod bound to `node` whose container runs under `profile`."""
    context = {"appArmorProfile": {"type": "Localhost", "localhostProfile": profile}}
    container = {"name": "app", "image": "busybox", "securityContext": context}
    return {"metadata": {"name": name}, "spec": {"nodeName": node, "containers": [container]}}


async def _node_refused(custom: Any, namespace: str, profile: str, node: str) -> dict[str, Any] | None:
    try:
        got = await custom.get_namespaced_custom_object(G, V, namespace, "armorprofilemodels", profile)
    except ApiException:
        return None
    for entry in (got.get("status") or {}).get("nodes") or []:
        if entry.get("nodeName") == node and entry.get("refused"):
            return dict(entry)
    return None


async def _text_has(armor_profile: Any, line: str) -> dict[str, Any] | None:
    ap = await armor_profile()
    return ap if ap is not None and line in ap["spec"]["profile"]["appArmor"] else None
