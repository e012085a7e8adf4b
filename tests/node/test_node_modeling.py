"""Watch, then enforce, on a real node: a BehaviorModeling policy's profile loaded in
complain mode by varmor's agent, a Deployment's container started under it by containerd
and runc, the kernel's ALLOWED records of what the container does read by the agent from
auditd's log into its node's share, and the leader's ArmorProfileModel holding the rules
the workload needed (runc's own start-up left out). The policy then switches in place to
DefenseInDepth/BehaviorModel: the same running container enforces the model, its
modelled actions still work and an action outside the model is denied. Last, the
EnhanceProtect policy the advisor proposes from the stored model runs the same workload
without breaking it.

The manager is a separate process here, so the modelling window cannot be ended on an
injected clock: the test ends it as a user would, by lowering `modelingOptions.duration`
to 1 minute (the window then ends one minute after it began, at once if that is past).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from tests import helpers
from tests.helpers import wait_for
from tests.node.conftest import Node
from tests.node.test_node import G, V, container_id, label_of, ns, policy_ready, running_pod, verdicts, workload
from varmor.behavior.advise import advise, policy_document
from varmor.behavior.codec import decode_model_data
from varmor.behavior.generalise import generalise, is_runtime_process
from varmor.behavior.model import Behavior, BehaviorRule, CapabilityRule, ExecRule, FileRule
from varmor.behavior.observe import observe
from varmor.nodeexec.audit import AuditRecord, parse_line
from varmor.rules import load_catalog

pytestmark = pytest.mark.node
__all__ = ["ns"]  # the fixture, used by name
AUDIT_LOG = "/var/log/audit/audit.log"

#: What the workload does, each a verdict "<name>=allowed|denied" in /tmp/verdict.
ACTIONS = {
    "hosts": "cat /etc/hosts",
    "write": "echo x > /tmp/out",
    # another program: busybox as /usr/local/bin/probe, through a link that names the
    # applet (busybox runs no applet under the name `probe`)
    "probe": "/tmp/bin/ls /usr",
    "chown": "chown 1000 /tmp/out && chown 0 /tmp/out",  # CAP_CHOWN
}
#: Modelled too: `cat` of the path in /tmp/plan (/etc/hosts while modelling; the test
#: rewrites it from the node to try an action the model does not hold), its stderr kept,
#: and the verdict names the path it read.
EXTRA = (
    'read -r plan < /tmp/plan; if cat "$plan" > /dev/null 2> /tmp/extra.err; then r="$r extra=allowed"; '
    'else r="$r extra=denied"; fi; r="$r plan=$plan"'
)
LOOP = (
    "mkdir -p /tmp/bin; ln -sf /usr/local/bin/probe /tmp/bin/ls; echo /etc/hosts > /tmp/plan; while :; do r=''; "
    + "; ".join(
        f'if {{ {cmd}; }} >/dev/null 2>&1; then r="$r {name}=allowed"; else r="$r {name}=denied"; fi'
        for name, cmd in ACTIONS.items()
    )
    + f'; {EXTRA}; echo "$r" > /tmp/verdict.new; mv /tmp/verdict.new /tmp/verdict; sleep 1; done'
)
ALL_ALLOWED = {**dict.fromkeys(ACTIONS, "allowed"), "extra": "allowed", "plan": "/etc/hosts"}
OUTSIDE = "/etc/hostname"  # never read while modelling


#: (path, permission) the workload's actions need from the model, besides the probe's exec
#: and CAP_CHOWN.
NEEDED_FILES = (
    ("/etc/hosts", "r"), ("/usr/", "r"), ("/tmp/out", "w"), ("/tmp/plan", "r"), ("/tmp/extra.err", "w"),
    ("/tmp/verdict.new", "w"),
)  # fmt: skip

#: Every file the model names: the actions' own, and what a learning child profile (an
#: exec'd program under complain mode) logs that abstractions/base would have allowed.
MODEL_FILES = {
    *(path for path, _ in NEEDED_FILES), "/tmp/verdict", "/tmp/bin/", "/tmp/bin/ls", "/bin/busybox",
    "/usr/local/bin/probe", "/dev/null",
}  # fmt: skip


def needed(behavior: Behavior) -> list[str]:
    """What the model lacks of the rules the workload's actions need."""
    files = {(r.path, p) for r in behavior.of(FileRule) for p in r.perms}
    missing = [f"{path} {perm}" for path, perm in NEEDED_FILES if (path, perm) not in files]
    missing += [] if ExecRule("/usr/local/bin/probe") in behavior.rules else ["exec /usr/local/bin/probe"]
    missing += [] if CapabilityRule("chown") in behavior.rules else ["capability chown"]
    return missing


async def get(custom: Any, ns: str, plural: str, name: str) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = await custom.get_namespaced_custom_object(G, V, ns, plural, name)
        return found
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def audit_records(node: Node, profile: str, action: str) -> list[AuditRecord]:
    """The node's audit records of `action` by `profile` (or a child of it)."""
    rc, out = node.vm.run(f"grep -F 'apparmor=\"{action}\"' {AUDIT_LOG} | grep -F 'profile=\"{profile}'")
    assert rc in (0, 1), out
    parsed = (parse_line(line) for line in out.splitlines())
    return [r for r in parsed if r is not None and r.action == action and r.base_profile == profile]


def in_container(node: Node, cid: str, command: str) -> str:
    """`command` in the node with $ROOT the container's root (its main process's view)."""
    pid = node.run(f"ctr -n k8s.io tasks ls | awk '$1 == \"{cid}\" {{print $2}}'").strip()
    assert pid.isdigit(), f"container {cid} has no task: {pid!r}"
    return node.run(f"ROOT=/proc/{pid}/root; {command}")


def set_plan(node: Node, cid: str, path: str) -> None:
    """What the workload's extra `cat` reads from its next round (replaced whole)."""
    in_container(node, cid, f'echo {path} > "$ROOT/tmp/plan.new" && mv "$ROOT/tmp/plan.new" "$ROOT/tmp/plan"')


def rule_of(record: AuditRecord) -> BehaviorRule | None:
    return observe(record.operation, record.klass, record.fields, record.profile, rewrite=generalise)


async def test_a_workload_is_modelled_then_enforced_live_and_the_advice_keeps_it_running(
    api_client: Any, node: Node, ns: str
) -> None:
    core, apps, custom = client.CoreV1Api(api_client), client.AppsV1Api(api_client), client.CustomObjectsApi(api_client)
    profile = f"varmor-{ns}-model"

    # -- 1. Modelling: complain mode, the agent's share, the leader's model ------------------
    doc = helpers.policy("model", mode="BehaviorModeling")
    doc["spec"]["policy"]["modelingOptions"] = {"duration": 30}
    created = time.monotonic()
    await custom.create_namespaced_custom_object(G, V, ns, "varmorpolicies", doc)
    await policy_ready(custom, ns, "model")
    assert node.loaded_profiles().get(profile) == "complain"
    await apps.create_namespaced_deployment(ns, workload("model", LOOP))
    pod = await running_pod(core, ns, "model")
    cid = container_id(pod)
    assert label_of(node, cid) == f"{profile} (complain)"
    first = await wait_for(lambda: verdicts(node, cid), timeout=60, what="the first probe results")
    assert first == ALL_ALLOWED  # complain mode blocks nothing

    async def modelled() -> dict[str, Any] | None:
        model = await get(custom, ns, "armorprofilemodels", profile)
        return model if model is not None and not needed(decode_model_data(model)) else None

    model = await wait_for(modelled, timeout=180, interval=1.0, what="the model holding the workload's rules")
    to_model = time.monotonic() - created
    policy = await get(custom, ns, "varmorpolicies", "model")
    assert policy is not None
    assert policy["status"]["phase"] == "Modeling"

    # End the window (see the module's docstring): Completed, and AlwaysAllow in the kernel.
    policy["spec"]["policy"]["modelingOptions"]["duration"] = 1
    lowered = time.monotonic()
    await custom.replace_namespaced_custom_object(G, V, ns, "varmorpolicies", "model", policy)

    async def completed() -> bool:
        got = await get(custom, ns, "varmorpolicies", "model")
        return (got or {}).get("status", {}).get("phase") == "Completed"

    await wait_for(completed, timeout=120, interval=1.0, what="the policy Completed")
    await wait_for(lambda: node.loaded_profiles().get(profile) == "enforce", timeout=120, interval=1.0)
    window_ended = time.monotonic() - lowered

    # Every ALLOWED record the kernel wrote for the profile reached the share; runc's are
    # excluded from the model.
    allowed = audit_records(node, profile, "ALLOWED")
    runtime = [r for r in allowed if is_runtime_process(r.fields.get("comm", ""), r.fields.get("exe", ""))]

    async def share_complete() -> dict[str, Any] | None:
        share = await get(custom, ns, "armorbehaviors", f"{profile}.{node.name}")
        return share if share is not None and share["spec"]["records"] == len(allowed) else None

    share = await wait_for(share_complete, timeout=60, interval=1.0, what=f"{len(allowed)} records in the share")
    spec = share["spec"]

    async def model_complete() -> dict[str, Any] | None:
        got = await get(custom, ns, "armorprofilemodels", profile)
        return got if got is not None and got.get("status", {}).get("records") == spec["records"] else None

    model = await wait_for(model_complete, timeout=60, interval=1.0, what="the model merged from the whole share")
    behavior = decode_model_data(model)
    status = model["status"]
    assert status["nodes"][0]["nodeName"] == node.name
    assert status["nodes"][0]["refusedRules"] == 0
    # Excluded: runc's records, those no rule can express (not a path, say) and those of no
    # known pod of the policy's namespace (a short-lived process gone before the agent
    # looked it up); nothing else.
    unmodellable = [r for r in allowed if r not in runtime and rule_of(r) is None]
    unattributed = int(spec.get("unattributedRecords") or 0)
    excluded = status["excludedRecords"]
    assert excluded == spec["excludedRecords"]
    assert len(runtime) + len(unmodellable) <= excluded <= len(runtime) + len(unmodellable) + unattributed
    assert {p["name"] for p in spec["pods"]} == {pod.metadata.name}
    assert status["lostRecords"] == 0
    workload_rules = {rule_of(r) for r in allowed if r not in runtime}
    runtime_only = {rule_of(r) for r in runtime} - workload_rules - {None}
    assert not runtime_only & set(behavior.rules), "runc's start-up is in the model"
    assert {r.path for r in behavior.of(FileRule)} == MODEL_FILES
    # Behaviour, not violations: none of the profile's records reached the violation log.
    assert node.run(f"grep -sF '\"{profile}' /var/log/varmor-violations.log | wc -l").strip() == "0"
    node.timings[
        f"policy -> model of the workload ({status['rules']} rules; {status['records']} records, "
        f"{excluded} excluded ({len(runtime)} by runc, {len(unmodellable)} not modellable, "
        f"{unattributed} of no known pod), {status['lostRecords']} lost)"
    ] = to_model
    node.timings["duration lowered to 1 -> Completed and AlwaysAllow loaded"] = window_ended

    # -- 2. DefenseInDepth/BehaviorModel, switched in place under the running container -----
    set_plan(node, cid, OUTSIDE)  # under AlwaysAllow: allowed, and no longer modelled

    async def verdict(expected: dict[str, str]) -> dict[str, str] | None:
        got = verdicts(node, cid)
        return got if (got.get("extra"), got.get("plan")) == (expected["extra"], expected["plan"]) else None

    read_outside = {**ALL_ALLOWED, "plan": OUTSIDE}
    assert await wait_for(lambda: verdict(read_outside), timeout=60, interval=1.0) == read_outside
    policy = await get(custom, ns, "varmorpolicies", "model")
    assert policy is not None
    policy["spec"]["policy"] = {
        "enforcer": "AppArmor",
        "mode": "DefenseInDepth",
        "defenseInDepth": {"appArmor": {"profileType": "BehaviorModel"}},
    }
    switched = time.monotonic()
    await custom.replace_namespaced_custom_object(G, V, ns, "varmorpolicies", "model", policy)
    denied_outside = {**read_outside, "extra": "denied"}
    got = await wait_for(
        lambda: verdict(denied_outside), timeout=180, interval=1.0, what="the running container denied /etc/hostname"
    )
    node.timings["switch to DefenseInDepth -> the running container's new verdict"] = time.monotonic() - switched
    assert got == denied_outside  # the modelled actions still work, in the same round
    assert "Permission denied" in in_container(node, cid, 'cat "$ROOT/tmp/extra.err"')
    assert label_of(node, cid) == f"{profile} (enforce)"
    again = (await core.list_namespaced_pod(ns, label_selector="app=model")).items
    assert [p.metadata.name for p in again] == [pod.metadata.name]
    assert container_id(again[0]) == cid
    assert again[0].status.container_statuses[0].restart_count == 0
    armor = await get(custom, ns, "armorprofiles", profile)
    assert armor is not None
    assert armor["spec"]["profile"]["mode"] == "enforce"
    assert armor["spec"]["modelSha256"] == status["sha256"]
    assert "/usr/local/bin/probe ix," in armor["spec"]["profile"]["appArmor"]
    condition = helpers.condition(await policy_ready(custom, ns, "model"), "Model")
    assert condition["reason"] == "ModelEnforced", condition
    denials = await wait_for(
        lambda: audit_records(node, profile, "DENIED"), timeout=60, interval=1.0, what="a DENIED record"
    )
    assert {(r.operation, r.target) for r in denials} == {("open", OUTSIDE)}, [r.as_json() for r in denials]

    # -- 3. The advisor's EnhanceProtect policy, from the stored model, on another Deployment -
    advice = advise(decode_model_data(model), load_catalog())
    assert "disallow-access-kallsyms" in advice.proposed_ids  # nothing read it
    advised = policy_document(
        advice, "advised", ns, {"kind": "Deployment", "selector": {"matchLabels": {"app": "advised"}}}
    )
    applied = time.monotonic()
    await custom.create_namespaced_custom_object(G, V, ns, "varmorpolicies", advised)
    await policy_ready(custom, ns, "advised")
    node.timings[f"advised policy ({len(advice.proposed)} rules) -> Ready"] = time.monotonic() - applied
    await apps.create_namespaced_deployment(ns, workload("advised", LOOP))
    advised_cid = container_id(await running_pod(core, ns, "advised"))
    assert label_of(node, advised_cid) == f"varmor-{ns}-advised (enforce)"
    results = await wait_for(lambda: verdicts(node, advised_cid), timeout=60, what="the advised pod's results")
    assert results == ALL_ALLOWED
    set_plan(node, advised_cid, "/proc/kallsyms")

    async def kallsyms_denied() -> bool:
        return verdicts(node, advised_cid) == {**ALL_ALLOWED, "extra": "denied", "plan": "/proc/kallsyms"}

    await wait_for(kallsyms_denied, timeout=60, interval=1.0, what="the advised profile denying /proc/kallsyms")
    # the rule's `deny` is quiet (no record without auditViolations): the container says it
    assert "Permission denied" in in_container(node, advised_cid, 'cat "$ROOT/tmp/extra.err"')
