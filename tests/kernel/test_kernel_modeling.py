"""Behaviour modelling, proven on a real AppArmor kernel: model a workload, enforce the model.

Why: unit tests show that records typed from documentation become rules; only the kernel
shows that the records it really writes, turned into a model by the agent's own code, give
a deny-by-default profile that the same workload runs under and that denies the rest.

Two boots (the second boot's profiles are built on the host from what the first logged):

1. **Modelling.** The profile `build_profile` writes for a BehaviorModeling policy while
   it models (abstractions/base, complain mode) is loaded, and a workload of vprobe
   actions runs under it twice: exec a program, read a file and one under /proc/<pid>/,
   create a file, an inet stream socket, bind a low port (CAP_NET_BIND_SERVICE). Nothing
   is blocked. The kernel's ALLOWED records go through the agent's path (`parse_line`,
   `BehaviorCollector.modeling`/`collect`, the ArmorBehavior it writes, with `collapse`)
   and the leader's `merge` into a `Behavior`.
2. **Enforcing.** The DefenseInDepth/BehaviorModel profile of that behaviour, and the
   EnhanceProtect policy `advise` proposes from it, are loaded in enforce mode. The
   workload runs under each from pids above every pid of the first boot, so each
   /proc/<pid>/ access passes only through the model's `@{pid}`. Under the model, what
   the workload never did (a file not read, a read file opened for writing, a
   capability, a socket family, a socket type, a program) is denied with a DENIED
   record, and unconfined it passes; those are the profile's only DENIED records.

One more action runs while modelling: reading a file whose name holds a glob character
(the collector refuses such a record by design, so the enforced model denies the file:
it fails closed).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

import aavm
import pytest

from varmor.behavior.advise import Advice, advise, policy_document
from varmor.behavior.model import Behavior, CapabilityRule, ExecRule, FileRule, NetworkRule
from varmor.behavior.profile import model_rules
from varmor.nodeexec.audit import AuditRecord, parse_line
from varmor.nodeexec.collector import BehaviorCollector
from varmor.nodeexec.state import Desired
from varmor.policy import parse_policy
from varmor.profile import build_profile, node_local_include
from varmor.profile.deny_default import BehaviorInputs
from varmor.reconcile.modelmerge import ShareCache, merge
from varmor.rules import load_catalog

pytestmark = pytest.mark.kernel

CATALOG = load_catalog()
NAMESPACE = "default"
TARGET = {"kind": "Deployment", "name": "kmodel"}
GLOB_NAMED = "/etc/kmodel/app*conf"
SETUP = (
    "mkdir -p /etc/kmodel /var/kmodel /opt/kmodel && echo conf > /etc/kmodel/app.conf"
    f" && echo secret > /etc/kmodel/shadow && echo conf > '{GLOB_NAMED}' && cp /vprobe /opt/kmodel/tool"
)
ROUNDS = 2  # the workload runs twice while modelling: other pids, the same rules

#: The workload: (check, vprobe operation). Every vprobe also reads its own
#: /proc/<pid>/attr/current to print its label.
WORKLOAD: tuple[tuple[str, str], ...] = (
    ("exec-program", "exec /bin/true"),
    ("read-config", "read /etc/kmodel/app.conf"),
    ("read-own-proc", "read /proc/self/cmdline"),
    ("create-output", "create /var/kmodel/out"),
    ("inet-stream-socket", "socket inet stream"),
    ("bind-low-port", "cap net_bind_service"),
    # chown(2) of /tmp/vprobe-chown-<pid>, created for the purpose: a temporary name with
    # a pid in it, one file per process (generalised to /tmp/vprobe-chown-[0-9]*)
    ("chown-pid-named-temp-file", "cap chown"),
)

#: Done while modelling, refused by the collector (a glob character in a recorded path is
#: never pasted into a rule): (check, vprobe operation, its DENIED record).
REFUSED: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("read-glob-named-file", f"read {GLOB_NAMED}", ('operation="open"', f'name="{GLOB_NAMED}"')),
)

#: Never done while modelling: (check, vprobe operation, its DENIED record).
OUTSIDE: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("read-unread-file", "read /etc/kmodel/shadow", ('operation="open"', 'name="/etc/kmodel/shadow"')),
    ("write-read-file", "write /etc/kmodel/app.conf", ('name="/etc/kmodel/app.conf"', 'requested_mask="w"')),
    ("unused-capability", "cap sys_chroot", ('operation="capable"', 'capname="sys_chroot"')),
    ("unused-family", "socket inet6 stream", ('operation="create"', 'family="inet6"')),
    ("unused-socket-type", "socket inet dgram", ('operation="create"', 'family="inet"', 'sock_type="dgram"')),
    ("unrun-program", "exec /opt/kmodel/tool", ('operation="exec"', 'name="/opt/kmodel/tool"')),
)
#: What the advised policy must still deny: a capability the workload never used.
ADVISED_DENIES = OUTSIDE[2]

MODELLED = [*WORKLOAD, *((check, op) for check, op, _ in REFUSED)]


def policy_doc(name: str, policy: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "crd.varmor.org/v1beta1",
        "kind": "VarmorPolicy",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"target": TARGET, "policy": {"enforcer": "AppArmor", **policy}},
    }


MODELING = parse_policy(
    policy_doc("kmodel", {"mode": "BehaviorModeling", "modelingOptions": {"duration": 5}}), catalog=CATALOG
)
DEFENSE = parse_policy(
    policy_doc("kmodel", {"mode": "DefenseInDepth", "defenseInDepth": {"appArmor": {"profileType": "BehaviorModel"}}}),
    catalog=CATALOG,
)
PROFILE = MODELING.profile_name()
MODELING_PROFILE = build_profile(MODELING, PROFILE, CATALOG, inputs=BehaviorInputs(modeling=True))


def check_id(case: aavm.Case, check: str) -> str:
    return f"{case.name}/{check}"


def assert_checks(boot: aavm.BootResult, ids: Sequence[str]) -> None:
    """Every one of `ids` passed; all failures reported at once."""
    missing = [cid for cid in ids if cid not in boot.checks]
    if missing:
        pytest.fail(f"no result for {missing}\n{boot.failure_context()}", pytrace=False)
    failed = [f"{cid}: {boot.checks[cid][1]}" for cid in ids if not boot.checks[cid][0]]
    assert not failed, "\n".join(failed)


def records(boot: aavm.BootResult, action: str, profile: str) -> list[tuple[AuditRecord, str]]:
    """The boot's AppArmor records of `action` by `profile` (or one of its children),
    each with its line."""
    parsed = ((parse_line(line), line) for line in boot.audit_lines)
    return [(r, line) for r, line in parsed if r is not None and r.action == action and r.base_profile == profile]


def matches(line: str, substrings: Sequence[str]) -> bool:
    return all(s in line for s in substrings)


def load(case: aavm.Case, check: str, fname: str, text: str, node_local: str | None = None) -> None:
    """Compile TEXT on the host (the agent's flags, the pinned features) and load it with
    ONE write to .replace, as apparmor_parser does. The kernel takes a policy only whole;
    busybox `cat` (vh_load_bin) sends it with sendfile(2), which reaches securityfs in
    64 KiB pieces, so the advised profile (~90 KiB) would fail ("failed to unpack end of
    profile")."""
    path = case.profile_bin(fname, text, True, node_local)
    case.run(check, f"dd if={path} of={aavm.AA_FS}/.replace bs=16M")


# ---------------------------------------------------------------------------------
# boot 1: modelling


def build_modeling() -> tuple[aavm.Batch, aavm.Case]:
    b = aavm.Batch("modeling")
    c = b.case("model")
    c.sh(SETUP)
    load(c, "load", "model.bin", MODELING_PROFILE.text)
    c.expect_label("label", f"{PROFILE} (complain)", profile=PROFILE)
    for n in range(ROUNDS):
        for check, op in MODELLED:
            c.expect(f"{check}-{n}", "ALLOW", op, profile=PROFILE)
    return b, c


MODELING_BATCH, MODELING_CASE = build_modeling()


@dataclasses.dataclass(frozen=True)
class Collected:
    """What the agent's and the leader's code made of the modelling boot's records."""

    behavior: Behavior  # as the leader merges it
    share: dict[str, Any]  # the node's ArmorBehavior, as the agent writes it
    allowed: int  # ALLOWED records of the profile in the kernel log
    proc_pids: frozenset[int]  # the pids in the /proc/<pid>/ paths of those records
    max_pid: int  # the highest pid of any record of the boot


def collect(boot: aavm.BootResult) -> Collected:
    """The boot's kernel log through the agent's collection path, as
    `ViolationReporter.behavior` feeds it (loss meter, `modeling`, `collect`); then the
    ArmorBehavior the agent would write, merged as the leader merges shares."""
    desired = Desired(
        PROFILE, NAMESPACE, MODELING_PROFILE.text, MODELING_PROFILE.sha256, "complain", uid="kmodel", modeling=True
    )
    collector = BehaviorCollector(None, "kernel-guest", lambda name: desired if name == PROFILE else None)
    allowed = 0
    pids: list[int] = []
    proc_pids: set[int] = set()
    for line in boot.audit_lines:
        collector.loss.feed(line)
        record = parse_line(line)
        if record is None:
            continue
        if record.fields.get("pid", "").isdigit():
            pids.append(int(record.fields["pid"]))
        owner = collector.modeling(record)
        if owner is None:
            continue
        allowed += 1
        found = re.match(r"/proc/([0-9]+)/", record.fields.get("name", ""))
        if found:
            proc_pids.add(int(found[1]))
        collector.collect(record, owner)
    share = collector._body(collector._shares[PROFILE], None)  # what the agent writes
    behavior, nodes = merge([share], ShareCache())
    assert nodes[0]["refusedRules"] == 0, nodes
    return Collected(behavior, share, allowed, frozenset(proc_pids), max(pids))


@pytest.fixture(scope="module")
def modeling_boot(kernel_boot: Callable[[aavm.Batch], aavm.BootResult]) -> aavm.BootResult:
    boot = kernel_boot(MODELING_BATCH)
    assert boot.done, boot.failure_context()
    return boot


@pytest.fixture(scope="module")
def collected(modeling_boot: aavm.BootResult) -> Collected:
    return collect(modeling_boot)


@pytest.fixture(scope="module")
def advice(collected: Collected) -> Advice:
    return advise(collected.behavior, CATALOG)


# ---------------------------------------------------------------------------------
# boot 2: enforcing the model and the advice


@dataclasses.dataclass(frozen=True)
class Enforcing:
    boot: aavm.BootResult
    case: aavm.Case
    advised: str  # the advised policy's profile name
    first_pid: int  # every process of the workloads has a higher pid


def build_enforcing(collected: Collected, advice: Advice) -> tuple[aavm.Batch, aavm.Case, str, int]:
    model = build_profile(
        DEFENSE, PROFILE, CATALOG, inputs=BehaviorInputs(model_rules=tuple(model_rules(collected.behavior)))
    )
    assert model.mode == "enforce"
    # auditViolations on: the advised rules become `audit deny`, so that a denial of the
    # workload by any of them leaves a DENIED record (a plain deny is quiet).
    doc = policy_document(advice, "kadvised", NAMESPACE, TARGET)
    doc["spec"]["policy"]["enhanceProtect"]["auditViolations"] = True
    advised_policy = parse_policy(doc, catalog=CATALOG)
    advised = build_profile(advised_policy, advised_policy.profile_name(), CATALOG)
    assert advised.mode == "enforce"
    first_pid = collected.max_pid + 1000

    b = aavm.Batch("modeling-enforce")
    c = b.case("enforce")
    c.sh(SETUP)
    load(c, "load-model", "model.bin", model.text)
    # The advised rules may name disk devices: the node-local include the agent writes.
    uses_disks = any(rule.uses_disk_devices for rule in advice.proposed)
    load(c, "load-advised", "advised.bin", advised.text, node_local_include(["vda"]) if uses_disks else None)
    # Every process from here on has a pid that no record of the modelling boot had.
    c.sh(f"echo {first_pid} > /proc/sys/kernel/ns_last_pid")
    for check, op in WORKLOAD:
        c.expect_label_after(f"{PROFILE}/{check}", "ALLOW", f"{PROFILE} (enforce)", op, profile=PROFILE)
    for check, op, _ in [*REFUSED, *OUTSIDE]:
        c.expect(f"{PROFILE}/{check}", "DENY", op, profile=PROFILE)
        c.expect(f"unconfined/{check}", "ALLOW", op)
    for check, op in MODELLED:
        c.expect_label_after(f"{advised.name}/{check}", "ALLOW", f"{advised.name} (enforce)", op, advised.name)
    c.expect(f"{advised.name}/{ADVISED_DENIES[0]}", "DENY", ADVISED_DENIES[1], profile=advised.name)
    c.sh('vh_emit "KMODEL-LAST-PID $(cat /proc/sys/kernel/ns_last_pid)"')
    return b, c, advised.name, first_pid


@pytest.fixture(scope="module")
def enforcing(kernel_boot: Callable[[aavm.Batch], aavm.BootResult], collected: Collected, advice: Advice) -> Enforcing:
    batch, case, advised, first_pid = build_enforcing(collected, advice)
    boot = kernel_boot(batch)
    assert boot.done, boot.failure_context()
    return Enforcing(boot, case, advised, first_pid)


# ---------------------------------------------------------------------------------
# tests


def test_modeling_boot(modeling_boot: aavm.BootResult) -> None:
    """The modelling profile is loaded in complain mode and blocks nothing."""
    assert MODELING_PROFILE.mode == "complain"
    assert "LOST 0" in modeling_boot.results_raw, modeling_boot.failure_context()
    assert_checks(modeling_boot, MODELING_CASE.check_ids)
    assert records(modeling_boot, "DENIED", PROFILE) == []


def test_model_from_real_records(collected: Collected) -> None:
    """The kernel's ALLOWED records, through the agent's path, are a model of the workload:
    one rule per behaviour, however many records and pids showed it; /proc/<pid>/ became
    /proc/@{pid}/; the glob-named file's records are excluded and counted; nothing the
    workload did not do is in it."""
    model = collected.behavior
    assert collected.share["spec"]["records"] == collected.allowed > 0  # every record read, excluded ones too
    assert sum(model.rules.values()) + model.excluded == collected.allowed
    assert (model.excluded, model.lost) == (ROUNDS, 0)  # one open of the glob-named file per round
    rules = set(model.rules)
    assert {
        ExecRule("/bin/busybox"),
        FileRule("/etc/kmodel/app.conf", "r", owner=True),
        FileRule("/var/kmodel/out", "w", owner=True),
        FileRule("/proc/@{pid}/cmdline", "r", owner=True),
        FileRule("/proc/@{pid}/attr/current", "r", owner=True),
        CapabilityRule("net_bind_service"),
        NetworkRule("inet", "stream", "0"),  # socket(2) with protocol 0
        NetworkRule("inet", "stream", "6"),  # setsockopt and bind name the protocol
    } <= rules
    # Every vprobe (the label check, then each action of each round) read its own
    # /proc/<pid>/attr/current: one record per pid, one rule.
    assert len(collected.proc_pids) == 1 + ROUNDS * len(MODELLED)
    assert model.rules[FileRule("/proc/@{pid}/attr/current", "r", owner=True)] == len(collected.proc_pids)
    assert model.rules[FileRule("/proc/@{pid}/cmdline", "r", owner=True)] == ROUNDS
    paths = [r.path for r in rules if isinstance(r, FileRule | ExecRule)]
    # No pid stays in a path; the only glob is the pid-named temporary file's.
    assert not [p for p in paths if re.match(r"/proc/[0-9]", p) or re.search(r"[0-9]{2}", p)], paths
    assert {p for p in paths if "*" in p} == {"/tmp/vprobe-chown-[0-9]*"}, paths
    outside = {FileRule("/etc/kmodel/shadow", "r", True), CapabilityRule("sys_chroot"), ExecRule("/opt/kmodel/tool")}
    assert not outside & rules
    assert not [r for r in rules if isinstance(r, NetworkRule) and (r.family == "inet6" or r.sock_type == "dgram")]
    assert not [r for r in rules if isinstance(r, FileRule) and r.path == "/etc/kmodel/app.conf" and "w" in r.perms]


def test_model_enforced(enforcing: Enforcing, collected: Collected) -> None:
    """The deny-by-default profile of the model runs the workload from new pids, denies
    what the workload never did and the refused glob-named file with a DENIED record
    each, and logs no other denial."""
    boot, case = enforcing.boot, enforcing.case
    assert "LOST 0" in boot.results_raw, boot.failure_context()
    ids = [check_id(case, "load-model")]
    ids += [check_id(case, f"{PROFILE}/{check}") for check, _ in WORKLOAD]
    ids += [check_id(case, f"{who}/{check}") for check, _, _ in [*REFUSED, *OUTSIDE] for who in (PROFILE, "unconfined")]
    assert_checks(boot, ids)
    last = re.search(r"KMODEL-LAST-PID ([0-9]+)", boot.results_raw)
    assert last is not None, boot.failure_context()
    assert max(collected.proc_pids) < enforcing.first_pid < int(last[1])
    denied = records(boot, "DENIED", PROFILE)
    for check, _, want in [*REFUSED, *OUTSIDE]:
        assert [line for _, line in denied if matches(line, want)], f"{check}: no DENIED record with {want}"
    explained = [want for *_, want in [*REFUSED, *OUTSIDE]]
    unexplained = [line for _, line in denied if not any(matches(line, want) for want in explained)]
    assert not unexplained, "\n".join(unexplained)
    assert all(int(r.fields["pid"]) > enforcing.first_pid for r, _ in denied)


def test_advised_policy(enforcing: Enforcing, advice: Advice) -> None:
    """The EnhanceProtect policy the advisor proposes from the model runs everything the
    workload did while modelling with no DENIED record, and still denies a capability
    the workload never used."""
    boot, case, advised = enforcing.boot, enforcing.case, enforcing.advised
    assert "disable-cap-sys-chroot" in advice.proposed_ids
    ids = [check_id(case, "load-advised"), check_id(case, f"{advised}/{ADVISED_DENIES[0]}")]
    ids += [check_id(case, f"{advised}/{check}") for check, _ in MODELLED]
    assert_checks(boot, ids)
    denied = [line for _, line in records(boot, "DENIED", advised)]
    assert len(denied) == 1, denied
    assert matches(denied[0], ADVISED_DENIES[2]), denied


def test_left_out_rules_cite_recorded_behaviour(collected: Collected, advice: Advice) -> None:
    """Every catalog rule the advisor leaves out cites behaviour the model recorded, with
    its record count; the rules the workload would break are among them."""
    model = collected.behavior
    for item in advice.left_out:
        assert item.reason is None, (item.rule.id, item.reason)
        assert item.citations, item.rule.id
        for citation in item.citations:
            assert citation.rule in model.rules, (item.rule.id, citation)
            assert citation.count == model.rules[citation.rule], (item.rule.id, citation)
    left_out = set(advice.left_out_ids)
    wanted = {"disable-cap-net-bind-service", "disable-cap-chown", "disable-busybox", "disable-inet", "disable-tcp"}
    assert wanted <= left_out, sorted(left_out)
    assert not left_out & set(advice.proposed_ids)
