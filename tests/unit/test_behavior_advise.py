"""`advise`: every catalog rule judged against recorded behaviour, the rules it leaves out
citing what they would deny, and a proposal varmor accepts and apparmor_parser compiles."""

from __future__ import annotations

import shlex

import pytest

from tests.helpers import assert_compiles
from varmor.behavior.advise import Advice, advise, describe, observe_violations, policy_document, render_report
from varmor.behavior.denies import parse_deny
from varmor.behavior.globs import witness
from varmor.behavior.model import (
    Behavior,
    BehaviorRule,
    CapabilityRule,
    ExecRule,
    FileRule,
    MountRule,
    NetworkRule,
    PtraceRule,
    SignalRule,
)
from varmor.policy import parse_policy
from varmor.profile import build_profile
from varmor.rules import Rule, load_catalog, parse_catalog

CATALOG = load_catalog()
ENFORCEABLE = [rule for rule in CATALOG if rule.enforceable]
TARGET = {"kind": "Deployment", "name": "web"}


def behavior(*rules: BehaviorRule, count: int = 1) -> Behavior:
    out = Behavior()
    for rule in rules:
        out.add(rule, count)
    return out


def left_out(advice: Advice, rule_id: str) -> list[tuple[BehaviorRule, int, str]]:
    item = next(i for i in advice.left_out if i.rule.id == rule_id)
    return [(c.rule, c.count, c.line) for c in item.citations]


def assert_proposal_compiles(advice: Advice, *, privileged: bool = False) -> None:
    doc = policy_document(advice, "web", "demo", TARGET, privileged=privileged)
    policy = parse_policy(doc)
    assert policy.enhance_protect is not None
    assert set(policy.enhance_protect.rule_ids()) == set(advice.proposed_ids)
    name = policy.profile_name()
    assert_compiles({name: build_profile(policy, name).text})


# -- what each line denies ------------------------------------------------------------------


def test_every_catalog_line_is_understood() -> None:
    for rule in ENFORCEABLE:
        for line in rule.apparmor:
            parse_deny(line, exec_rule=rule.exec)


def _path_lines() -> list[tuple[Rule, str, str, str]]:
    """(rule, line, path, denied perms) for every file and exec line."""
    found = []
    for rule in ENFORCEABLE:
        for line in rule.apparmor:
            words = line.split()
            if rule.exec:
                found.append((rule, line, words[0], "x"))
            elif len(words) == 2 and words[0].startswith(("/", "@")):
                found.append((rule, line, words[0], words[1]))
    return found


PATH_LINES = _path_lines()
PATH_IDS = [f"{rule.id}:{path}" for rule, _, path, _ in PATH_LINES]


@pytest.mark.parametrize(("rule", "line", "path", "perms"), PATH_LINES, ids=PATH_IDS)
def test_a_path_line_cites_behaviour_touching_what_it_blocks(rule: Rule, line: str, path: str, perms: str) -> None:
    """A path the line names (a witness of the line with itself), with a permission it
    denies: the rule is left out citing it and the line. With only a permission the line
    does not deny, nothing is cited."""
    concrete = witness(path, path)
    assert concrete is not None
    touched: BehaviorRule = ExecRule(concrete) if perms == "x" else FileRule(concrete, perms[0])
    advice = advise(behavior(touched, count=7), CATALOG)
    assert (touched, 7, line) in left_out(advice, rule.id)
    harmless = FileRule(concrete, "w") if perms == "x" else FileRule(concrete, "k")
    assert rule.id in advise(behavior(harmless), CATALOG).proposed_ids


def test_write_covers_append_and_exec_lines_deny_reading_the_program() -> None:
    advice = advise(behavior(FileRule("/etc/hosts", "a"), FileRule("/usr/bin/bash", "r")), CATALOG)
    assert left_out(advice, "disable-write-etc") == [(FileRule("/etc/hosts", "a"), 1, "/etc/** wl")]
    assert left_out(advice, "disable-shell") == [(FileRule("/usr/bin/bash", "r"), 1, "/**/bash")]
    assert "disable-write-etc" in advise(behavior(FileRule("/etc/hosts", "rm")), CATALOG).proposed_ids


# -- each rule leaves out what its own probe does -------------------------------------------


def probe_behaviour(rule: Rule) -> BehaviorRule:
    """What a workload doing the rule's probe (rules/README.md) is recorded as."""
    assert rule.probe is not None
    op, *args = shlex.split(rule.probe.run)
    if op == "read":
        return FileRule(args[0], "r")
    if op in ("write", "create", "chmod"):
        return FileRule(args[0], "w")
    if op == "link":
        return FileRule(args[1], "l")
    if op == "exec":
        return ExecRule(args[0])
    if op == "socket":
        return NetworkRule(args[0], args[1], {"icmp": "1"}.get(args[2], args[2]) if len(args) > 2 else "")
    if op == "mount":
        return MountRule("mount", args[0], args[1], args[2], "rw")
    if op in ("bind", "rbind", "move"):
        return MountRule("mount", "", args[0], args[1], f"rw,{op}")
    if op == "remount":
        return MountRule("remount", mountpoint=args[0], flags="rw")
    if op == "umount":
        return MountRule("umount", mountpoint=args[0])
    if op == "ptrace-read":
        return PtraceRule("read", "unconfined")
    assert op == "cap", f"{rule.id}: unknown probe {rule.probe.run!r}"
    return CapabilityRule(args[0])


@pytest.mark.parametrize("rule", ENFORCEABLE, ids=lambda r: r.id)
def test_each_rule_left_out_cites_the_recorded_event_it_would_deny(rule: Rule) -> None:
    """The claim of the report: a rule is left out exactly when it would deny something
    recorded, and it says what and how often. Each rule's probe is an event it denies."""
    event = probe_behaviour(rule)
    advice = advise(behavior(event, SignalRule("receive", "term", "unconfined"), count=3), CATALOG)
    assert rule.id not in advice.proposed_ids
    cited = left_out(advice, rule.id)
    assert [(r, n) for r, n, _ in cited] == [(event, 3)]
    assert cited[0][2] in rule.apparmor
    assert describe(event) in render_report(advice)


# -- a typical web server --------------------------------------------------------------------

NGINX = behavior(
    ExecRule("/usr/sbin/nginx"),
    FileRule("/etc/nginx/nginx.conf", "r"),
    FileRule("/etc/nginx/conf.d/default.conf", "r"),
    FileRule("/etc/ld.so.cache", "r"),
    FileRule("/etc/nsswitch.conf", "r"),
    FileRule("/etc/passwd", "r"),
    FileRule("/etc/group", "r"),
    FileRule("/usr/lib/x86_64-linux-gnu/libssl.so.3", "rm"),
    FileRule("/usr/lib/x86_64-linux-gnu/libc.so.6", "rm"),
    FileRule("/usr/share/nginx/html/index.html", "r"),
    FileRule("/var/log/nginx/access.log", "a"),
    FileRule("/var/cache/nginx/client_temp/", "w"),
    FileRule("/run/nginx.pid", "w"),
    FileRule("/dev/null", "rw"),
    FileRule("/dev/urandom", "r"),
    FileRule("/proc/@{pid}/stat", "r"),
    FileRule("/sys/devices/system/cpu/online", "r"),
    NetworkRule("inet", "stream", "6"),
    NetworkRule("inet6", "stream", "6"),
    CapabilityRule("net_bind_service"),
    CapabilityRule("setuid"),
    CapabilityRule("setgid"),
    SignalRule("receive", "quit", "unconfined"),
    count=5,
)
NGINX_LEFT_OUT = {
    "disable-cap-all": {"net_bind_service", "setuid", "setgid"},
    "disable-cap-all-except-net-bind-service": {"setuid", "setgid"},
    "disable-cap-setuid": {"setuid"},
    "disable-cap-setgid": {"setgid"},
    "disable-cap-net-bind-service": {"net_bind_service"},
}


def test_a_web_server_gets_every_rule_it_does_not_contradict() -> None:
    advice = advise(NGINX, CATALOG)
    expected_out = {*NGINX_LEFT_OUT, "disable-access-passwd", "disable-network", "disable-inet", "disable-inet6"}
    expected_out.add("disable-tcp")
    assert set(advice.left_out_ids) == expected_out
    assert set(advice.proposed_ids) == {r.id for r in ENFORCEABLE} - expected_out
    for rule_id, caps in NGINX_LEFT_OUT.items():
        assert {r.name for r, n, _ in left_out(advice, rule_id) if isinstance(r, CapabilityRule) and n == 5} == caps
    assert left_out(advice, "disable-access-passwd") == [(FileRule("/etc/passwd", "r"), 5, "/etc/passwd rw")]
    tcp = [NetworkRule(family, "stream", "6") for family in ("inet", "inet6")]
    assert [r for r, _, _ in left_out(advice, "disable-tcp")] == tcp
    assert_proposal_compiles(advice)


def test_the_proposal_is_unique_canonical_and_never_unenforceable() -> None:
    advice = advise(Behavior(), CATALOG)
    assert len(set(advice.proposed_ids)) == len(advice.proposed_ids)
    assert set(advice.proposed_ids) == {r.id for r in ENFORCEABLE}
    assert not any(alias in advice.proposed_ids for r in CATALOG for alias in r.aliases)
    assert {r.id for r in advice.unenforceable} == {r.id for r in CATALOG if not r.enforceable}
    assert_proposal_compiles(advice)
    assert_proposal_compiles(advice, privileged=True)


def test_the_report_explains_each_rule_left_out() -> None:
    advice = advise(NGINX, CATALOG)
    report = render_report(advice)
    passwd = CATALOG["disable-access-passwd"]
    block = report.split("  disable-access-passwd [")[1].split("\n  disable")[0]
    assert "would deny /etc/passwd r  (5 records; by `/etc/passwd rw`)" in block
    assert f"may break: {passwd.may_break}" in block
    assert "disallow-create-user-ns" in report.split("Never proposed")[1]
    assert "disable-cap-sys-admin*" in report  # privileged only: marked, with a note
    assert "privileged: true" in report.split("Notes:")[1]


# -- AppArmor's semantics, case by case -----------------------------------------------------

SHIM = "containerd-shim-socket-mitigation"
CGROUPFS = "disallow-mount-cgroupfs"
MOUNT_RULES = {rule.id for rule in ENFORCEABLE if any(line.startswith("mount") for line in rule.apparmor)}


@pytest.mark.parametrize(
    ("recorded", "denied_by"),
    [
        (NetworkRule("inet", "stream", "6"), {"disable-network", "disable-inet", "disable-tcp"}),
        (NetworkRule("inet6", "dgram", "17"), {"disable-network", "disable-inet6", "disable-udp"}),
        # a ping socket: `udp` maps to every inet dgram socket; `icmp` is taken to cover it
        (NetworkRule("inet", "dgram", "1"), {"disable-network", "disable-inet", "disable-udp", "disable-icmp"}),
        (NetworkRule("inet", "raw", "1"), {"disable-network", "disable-inet", "disable-icmp"}),
        (NetworkRule("unix", "stream", "0"), {"disable-network", "disable-unix-domain-socket", SHIM}),
        (NetworkRule("netlink", "raw", "0"), {"disable-network"}),
        (NetworkRule("packet", "raw", "768"), {"disable-network", "disallow-create-af-packet"}),
        (NetworkRule("alg", "seqpacket", "0"), {"disable-network", "copy-fail-mitigation"}),
        (NetworkRule("inet"), {"disable-network", "disable-inet", "disable-tcp", "disable-udp", "disable-icmp"}),
        (PtraceRule("read", "@{profile_name}"), set()),  # AppArmor never checks a label against itself
        (PtraceRule("readby", "unconfined"), set()),
        (PtraceRule("trace", "cri-containerd.apparmor.d"), {"disallow-access-procfs-root"}),
        (MountRule("umount", mountpoint="/mnt/"), {"disallow-umount"}),
        (MountRule("pivot_root", source="/old", mountpoint="/new/"), set()),
        (MountRule("remount", mountpoint="/mnt/", flags="ro"), {"disallow-mount"}),
        (MountRule("remount", mountpoint="/proc/sys/", flags=""), {"disallow-mount", "disallow-mount-procfs"}),
        # `options in (remount,bind,rbind)`: a flag it does not list (ro) takes the remount out
        (MountRule("remount", mountpoint="/proc/sys/", flags="ro,nosuid"), {"disallow-mount"}),
        (MountRule("mount", "tmpfs", "tmpfs", "/mnt/", "rw,nosuid"), {"disallow-mount"}),
        (MountRule("mount", "proc", "proc", "/mnt/proc/", "rw"), {"disallow-mount", "disallow-mount-procfs"}),
        (MountRule("mount", "cgroup2", "cgroup2", "/sys/fs/cgroup/", "rw,nosuid"), {"disallow-mount", CGROUPFS}),
        (MountRule("mount", "", "/proc/sys", "/mnt/", "rw,bind"), {"disallow-mount", "disallow-mount-procfs"}),
        (MountRule("mount", "", "/sys", "/mnt/", "rw,rbind"), {"disallow-mount", "disallow-mount-cgroupfs"}),
        # `options in (rbind)` makes MS_BIND and MS_REC each optional: a plain bind is covered
        (MountRule("mount", "", "/sys/kernel", "/mnt/", "rw,bind"), {"disallow-mount", "disallow-mount-cgroupfs"}),
        (MountRule("mount", "", "/sys/kernel", "/mnt/", "rw,move"), {"disallow-mount"}),
        (MountRule("mount", "", "/data", "/mnt/", "rw,bind"), {"disallow-mount"}),
        (MountRule("mount", "", "", "/proc/", "rw,make-private"), {"disallow-mount"}),
        (MountRule("mount", "ext4", "/dev/vdb", "/data/", "rw"), {"disallow-mount", "disallow-mount-disk-device"}),
        (MountRule("mount", "", "", "/data/", ""), MOUNT_RULES),
    ],
    ids=str,
)
def test_apparmor_semantics(recorded: BehaviorRule, denied_by: set[str]) -> None:
    """What each kind of record is denied by. The last mount has no type, source or flags,
    so it may be any mount of anything: every mount rule counts."""
    advice = advise(behavior(recorded), CATALOG)
    assert set(advice.left_out_ids) == denied_by


def test_a_line_it_cannot_read_leaves_its_rule_out() -> None:
    text = """
- id: deny-signals
  category: hardening
  title: t
  blocks: b
  may_break: m
  apparmor: ["signal (send) peer=unconfined"]
  probe: {run: "cap kill"}
"""
    catalog = parse_catalog({"x.yaml": text})
    advice = advise(Behavior(), catalog)
    assert advice.proposed == ()
    assert "signal" in str(advice.left_out[0].reason)
    assert "cannot be checked" in render_report(advice)


# -- violation records -----------------------------------------------------------------------


def entry(operation: str, klass: str, profile: str = "varmor-demo-web", **fields: str) -> dict[str, object]:
    return {
        "node": "n1",
        "action": "ALLOWED",
        "profile": profile,
        "operation": operation,
        "class": klass,
        "target": fields.get("name", fields.get("capname", "")),
        "fields": {"operation": operation, "profile": profile, "comm": "sh", **fields},
    }


def test_violation_records_become_cited_behaviour() -> None:
    entries = [
        entry("open", "file", name="/etc/shadow", requested_mask="r", denied_mask="r", fsuid="0", ouid="0"),
        entry("open", "file", name="/etc/shadow", requested_mask="r", denied_mask="r", fsuid="0", ouid="0"),
        entry("capable", "cap", capability="21", capname="sys_admin"),
        entry("capable", "cap", profile="varmor-other-app", capname="chown"),
        entry("change_onexec", "domain", name="x"),
        {"not": "a record"},
    ]
    observed = observe_violations(entries, profile="varmor-demo-web")
    assert observed.behavior.rules == {FileRule("/etc/shadow", "r", owner=True): 2, CapabilityRule("sys_admin"): 1}
    assert (observed.skipped, observed.other_profiles, observed.profiles) == (2, 1, {"varmor-demo-web"})
    advice = advise(observed.behavior, CATALOG, examples=observed.examples)
    (cited,) = next(i for i in advice.left_out if i.rule.id == "disable-access-shadow").citations
    assert (cited.count, cited.example) == (2, "ALLOWED open /etc/shadow by sh (varmor-demo-web)")
    assert "e.g. ALLOWED open /etc/shadow by sh (varmor-demo-web)" in render_report(advice)
