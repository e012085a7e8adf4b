"""Audit records -> behaviour rules: the kernel's real records (tests/data/audit) and
records in the kernel's format for kinds the recording has none of (signals, remounts)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from varmor.behavior.model import (
    BehaviorRule,
    CapabilityRule,
    ExecRule,
    FileRule,
    MountRule,
    NetworkRule,
    PtraceRule,
    SignalRule,
)
from varmor.behavior.observe import observe
from varmor.behavior.profile import check_rule
from varmor.nodeexec.audit import AuditRecord, parse_line

DATA = Path(__file__).resolve().parents[1] / "data" / "audit"
PROFILE = "varmor-ns-web"


def records(name: str) -> list[AuditRecord]:
    lines = (DATA / name).read_text().splitlines()
    return [r for r in map(parse_line, lines) if r is not None]


def record(body: str, action: str = "ALLOWED") -> AuditRecord:
    """A record as the kernel log writes it."""
    line = f'[    2.883965] audit: type=1400 audit(1795874336.544:16): apparmor="{action}" {body}'
    parsed = parse_line(line)
    assert parsed is not None, line
    return parsed


def seen(rec: AuditRecord) -> BehaviorRule | None:
    return observe(rec.operation, rec.klass, rec.fields, rec.profile)


def file_record(
    name: str, mask: str = "r", operation: str = "open", fsuid: int = 0, ouid: int = 0, *, untrusted: bool = False
) -> AuditRecord:
    """A file record; `untrusted` logs the name hex-encoded, as the kernel does for a name
    with a space, quote or control character (and as it may for any)."""
    logged = name.encode().hex().upper() if untrusted else f'"{name}"'
    return record(
        f'operation="{operation}" profile="{PROFILE}" name={logged} pid=7 comm="app" '
        f'requested_mask="{mask}" denied_mask="{mask}" fsuid={fsuid} ouid={ouid}'
    )


def test_the_kernels_complain_records() -> None:
    """Every ALLOWED record the harness recorded, as the rule it shows was needed."""
    got = [seen(r) for r in records("allowed.log")]
    assert got == [
        FileRule("/proc/158/attr/current", "r", owner=True),
        NetworkRule("inet6", "stream", "0"),
        MountRule("mount", "securityfs", "securityfs", "/tmp/varmor-probe-sfs/"),
        MountRule("umount", mountpoint="/tmp/varmor-probe-um/"),
        CapabilityRule("sys_module"),
        None,  # ptrace of an unconfined process: only the profile's own may be allowed
        ExecRule("/bin/busybox"),
        FileRule("/dev/null", "rw", owner=True),
        FileRule("/bin/busybox", "r", owner=True),
        FileRule("/tmp/varmor-probe-bin/chmod", "w", owner=True),
        FileRule("/proc/3237/loginuid", "r", owner=True),
        CapabilityRule("setgid"),
        ExecRule("/bin/busybox"),
    ]


def test_records_of_other_actions_read_the_same() -> None:
    """The rule does not depend on the action: DENIED and AUDIT records parse alike."""
    denied = {seen(r) for r in records("denied.log")}
    assert CapabilityRule("chown") in denied
    assert NetworkRule("packet", "raw", "0") in denied
    assert MountRule("mount", "tmpfs", "none", "/mnt/vr-rd/") in denied


def test_a_hex_encoded_name_with_a_space_is_refused() -> None:
    (rec,) = records("hex-name.log")
    assert rec.fields["name"] == "/tmp/with space"
    assert seen(rec) is None


def test_domain_records_are_not_modelled() -> None:
    changes = [r for r in records("denied.log") if r.klass == "domain"]
    assert changes
    assert all(seen(r) is None for r in changes)


@pytest.mark.parametrize(
    ("mask", "perms"),
    [("r", "r"), ("wr", "rw"), ("c", "w"), ("d", "w"), ("wc", "w"), ("a", "a"), ("ac", "w"), ("rm", "rm"), ("k", "k")],
)
def test_file_masks_map_to_rule_permissions(mask: str, perms: str) -> None:
    """Create and delete are writes in AppArmor's rule language; append goes when write is there."""
    assert seen(file_record("/data/x", mask)) == FileRule("/data/x", perms, owner=True)


def test_link_permission_is_kept() -> None:
    assert seen(file_record("/data/l", "l", operation="link")) == FileRule("/data/l", "l", owner=True)


def test_owner_only_when_fsuid_is_the_files_owner() -> None:
    assert seen(file_record("/data/x", fsuid=1000, ouid=0)) == FileRule("/data/x", "r", owner=False)
    assert seen(file_record("/data/x", fsuid=1000, ouid=1000)) == FileRule("/data/x", "r", owner=True)


def test_exec_records_become_exec_rules_and_stray_x_is_dropped() -> None:
    assert seen(file_record("/usr/bin/env", "x", operation="exec")) == ExecRule("/usr/bin/env")
    assert seen(file_record("/usr/bin/env", "rx", operation="open")) == FileRule("/usr/bin/env", "r", owner=True)
    assert seen(file_record("/usr/bin/env", "x", operation="open")) is None


@pytest.mark.parametrize("mask", ["", "q", "r::", "rw x"])
def test_unknown_mask_letters_are_refused(mask: str) -> None:
    assert seen(file_record("/data/x", mask)) is None


@pytest.mark.parametrize(
    "name",
    ["socket:[1234]", "pipe:[99]", "anon_inode:[eventfd]", "relative/path", "", "/memfd:x (deleted)"],
)
def test_names_that_are_not_absolute_paths_are_refused(name: str) -> None:
    assert seen(file_record(name)) is None


def test_a_record_without_a_name_is_refused() -> None:
    rec = record(f'operation="open" profile="{PROFILE}" pid=7 comm="app" requested_mask="r" fsuid=0 ouid=0')
    assert seen(rec) is None


@pytest.mark.parametrize("char", [*"*?[]{}^\\,\"#'!$`()<>|&; \t\x01\x7f", "é", "\u202e"])
def test_glob_and_meta_characters_in_names_are_refused(char: str) -> None:
    """A workload names its files: a file called `*` must not become a `*` glob."""
    rec = file_record(f"/tmp/a{char}b", untrusted=True)
    assert rec.fields["name"] == f"/tmp/a{char}b"
    assert seen(rec) is None


def test_a_file_named_star_is_refused() -> None:
    assert seen(file_record("/data/*", untrusted=True)) is None
    assert seen(file_record("/data/star", untrusted=True)) == FileRule("/data/star", "r", owner=True)


def test_capabilities_are_checked_against_the_abi() -> None:
    cap = f'operation="capable" profile="{PROFILE}" pid=7 comm="app" capability=12 '
    assert seen(record(cap + 'capname="net_admin"')) == CapabilityRule("net_admin")
    assert seen(record(cap + 'capname="net_everything"')) is None
    assert seen(record(cap.rstrip())) is None


@pytest.mark.parametrize(
    ("fields", "rule"),
    [
        ('family="inet" sock_type="dgram" protocol=17', NetworkRule("inet", "dgram", "17")),
        ('family="unix" sock_type="stream" protocol=0', NetworkRule("unix", "stream", "0")),
        ('family="netlink" sock_type="raw" protocol=9', NetworkRule("netlink", "raw", "9")),
        ('family="inet"', NetworkRule("inet")),
        ('family="inet" sock_type="dccp" protocol=33', None),
        ('family="nosuchfamily" sock_type="stream" protocol=0', None),
        ('family="inet" sock_type="stream" protocol=-1', None),
    ],
)
def test_network_records(fields: str, rule: NetworkRule | None) -> None:
    body = f'operation="create" profile="{PROFILE}" pid=7 comm="app" {fields} requested_mask="create"'
    assert seen(record(body)) == rule


def test_unix_class_records_are_unix_sockets() -> None:
    rec = record(
        f'operation="connect" class="unix" profile="{PROFILE}" pid=7 comm="app" sock_type="stream" protocol=0 '
        'requested_mask="send receive connect" addr=none peer_addr="@/run/x" peer="unconfined"'
    )
    assert rec.klass == "unix"
    assert seen(rec) == NetworkRule("unix", "stream", "0")


def signal(profile: str, peer: str, sig: str = "term", mask: str = "send") -> AuditRecord:
    return record(
        f'operation="signal" profile="{profile}" pid=7 comm="app" requested_mask="{mask}" '
        f'denied_mask="{mask}" signal={sig} peer="{peer}"'
    )


def test_signals_to_the_workload_itself_name_its_own_profile() -> None:
    own = SignalRule("send", "term", "@{profile_name}")
    assert seen(signal(PROFILE, PROFILE)) == own
    # complain mode's learning children are the workload's own processes too
    assert seen(signal(f"{PROFILE}//null-/bin/sh", PROFILE)) == own
    assert seen(signal(PROFILE, f"{PROFILE}//null-/bin/sleep")) == own


def test_signal_peers_and_names() -> None:
    assert seen(signal(PROFILE, "unconfined", "kill", "receive")) == SignalRule("receive", "kill", "unconfined")
    assert seen(signal(PROFILE, "unconfined", "rtmin+3")) == SignalRule("send", "rtmin+3", "unconfined")
    assert seen(signal(PROFILE, "varmor-ns-other")) is None  # another policy's profile
    assert seen(signal(PROFILE, "cri-containerd.apparmor.d//&unconfined")) is None
    assert seen(signal(PROFILE, "unconfined", "nosig")) is None
    assert seen(signal(PROFILE, "unconfined", "term", "read")) is None


def test_ptrace_only_within_the_workload() -> None:
    body = f'operation="ptrace" profile="{PROFILE}" pid=7 comm="ps" requested_mask="read" denied_mask="read" peer='
    assert seen(record(body + f'"{PROFILE}"')) == PtraceRule("read", "@{profile_name}")
    assert seen(record(body + '"unconfined"')) is None


def mount(body: str, operation: str = "mount") -> BehaviorRule | None:
    return seen(record(f'operation="{operation}" profile="{PROFILE}" {body} pid=7 comm="mount"'))


def test_mount_records() -> None:
    assert mount('name="/mnt/b/" srcname="/mnt/a/" flags="rw, bind"') == MountRule(
        "mount", "", "/mnt/a/", "/mnt/b/", "rw,bind"
    )
    assert mount('name="/run/x/" fstype="tmpfs" srcname="tmpfs" flags="rw, nosuid, nodev"') == MountRule(
        "mount", "tmpfs", "tmpfs", "/run/x/", "rw,nosuid,nodev"
    )
    # the kernel logs a remount as a mount with the remount flag
    assert mount('info="failed flags match" error=-13 name="/" flags="ro, remount"') == MountRule(
        "remount", mountpoint="/", flags="ro"
    )
    assert mount('name="/" flags="rw, rprivate"') == MountRule("mount", mountpoint="/", flags="rw,rprivate")
    assert mount('name="/new/" srcname="/new/old/"', "pivotroot") == MountRule(
        "pivot_root", source="/new/old/", mountpoint="/new/"
    )


@pytest.mark.parametrize(
    "body",
    [
        'name="/x/" fstype="tmpfs" srcname="tmpfs" flags="rw, lazytime"',  # the parser refuses lazytime
        'name="/x/" fstype="tmpfs" srcname="tmpfs" flags="rw, whatever"',
        'name="/x/" fstype="tmp fs" srcname="tmpfs"',
        'name="/x/" srcname="/a*/" flags="rw, bind"',
        'name="/x/" srcname="dev ice"',
        'name="x/" fstype="tmpfs"',
        'fstype="tmpfs" srcname="tmpfs"',
    ],
)
def test_mount_records_outside_the_grammar_are_refused(body: str) -> None:
    assert mount(body) is None


FIELD_KEYS = [
    "name",
    "requested_mask",
    "fsuid",
    "ouid",
    "capname",
    "family",
    "sock_type",
    "protocol",
    "signal",
    "peer",
    "fstype",
    "srcname",
    "flags",
]


@given(
    st.sampled_from(["open", "exec", "capable", "signal", "ptrace", "mount", "umount", "pivotroot", "create"]),
    st.sampled_from(["file", "cap", "signal", "ptrace", "mount", "net", "unix", "other"]),
    st.dictionaries(
        st.sampled_from(FIELD_KEYS),
        st.one_of(st.text(max_size=20), st.sampled_from(["/a", "r", "0", "inet", "stream", "term", "rw, bind"])),
    ),
)
def test_whatever_a_record_says_observe_returns_nothing_the_writer_refuses(
    operation: str, klass: str, fields: dict[str, str]
) -> None:
    rule = observe(operation, klass, fields, PROFILE)
    assert rule is None or check_rule(rule) is None
