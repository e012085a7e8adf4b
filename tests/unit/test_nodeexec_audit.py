"""AppArmor audit-record parsing: the formats of audit.log, dmesg and kern.log, hex-encoded
untrusted values, child profiles, and lines that are not violations."""

from __future__ import annotations

from pathlib import Path

import pytest

from varmor.nodeexec.audit import CLASSES, parse_fields, parse_line

DATA = Path(__file__).resolve().parents[1] / "data" / "audit"

DMESG = (
    '[    3.141592] audit: type=1400 audit(1764336000.123:42): apparmor="DENIED" operation="open" class="file" '
    'profile="varmor-demo-web//child_0" name="/etc/shadow" pid=123 comm="cat" requested_mask="r" '
    'denied_mask="r" fsuid=0 ouid=0'
)
AUDIT_LOG = (
    'type=AVC msg=audit(1764336000.500:77): apparmor="ALLOWED" operation="create" class="net" '
    'info="failed protocol match" error=-13 profile="varmor-demo-web" pid=99 comm=2F746D702F6120622063 '
    'family="packet" sock_type="raw" protocol=768 requested="create" denied="create"\x1dARCH=x86_64 UID="root"'
)
KERN_LOG = (
    "Nov 28 13:00:00 node-1 kernel: [ 1234.567890] audit: type=1400 audit(1764336000.900:88): "
    'apparmor="AUDIT" operation="capable" class="cap" profile="varmor-cluster-varmor-base" pid=7 comm="mount" '
    'capability=21  capname="sys_admin"'
)


def kernel(message: str) -> str:
    """`message` as the kernel log carries an AVC record."""
    return f"[    1.000000] audit: type=1400 audit(1764336000.000:1): {message}"


def test_dmesg_line_with_child_profile() -> None:
    record = parse_line(DMESG)
    assert record is not None
    assert (record.action, record.profile, record.base_profile) == (
        "DENIED",
        "varmor-demo-web//child_0",
        "varmor-demo-web",
    )
    assert (record.operation, record.klass, record.target) == ("open", "file", "/etc/shadow")
    assert (record.timestamp, record.serial) == (1764336000.123, 42)
    assert record.fields["comm"] == "cat"
    assert record.fields["requested_mask"] == "r"


def test_audit_log_line_with_hex_value_and_enrichment() -> None:
    record = parse_line(AUDIT_LOG)
    assert record is not None
    assert (record.action, record.klass, record.target) == ("ALLOWED", "net", "packet raw 768")
    assert record.fields["comm"] == "/tmp/a b c"  # hex-encoded: it holds spaces
    assert not {"UID", "ARCH"} & set(record.fields)
    assert record.fields["protocol"] == "768"  # numbers are never hex-decoded


def test_kern_log_line_capability() -> None:
    record = parse_line(KERN_LOG)
    assert record is not None
    assert (record.action, record.klass, record.target) == ("AUDIT", "cap", "sys_admin")
    assert record.base_profile == "varmor-cluster-varmor-base"


@pytest.mark.parametrize(
    "line",
    [
        "",
        "random kernel message",
        'audit: type=1400 audit(1.0:1): apparmor="STATUS" operation="profile_replace" profile="unconfined" '
        'name="varmor-demo-web" pid=1 comm="apparmor_parser"',
        'type=SYSCALL msg=audit(1.0:2): arch=c000003e syscall=257 success=no exit=-13 comm="cat"',
        'audit: type=1400 audit(1.0:3): apparmor="DENIED" operation="open"',  # no profile
        kernel('apparmor="DENIED" profile="varmor-x" name="unterminated'),
    ],
)
def test_not_a_violation(line: str) -> None:
    assert parse_line(line) is None


def test_class_is_inferred_on_kernels_without_class_field() -> None:
    signal = parse_line(
        kernel('apparmor="DENIED" operation="signal" profile="varmor-a" pid=1 comm="kill" signal=kill peer="x"')
    )
    assert signal is not None
    assert (signal.klass, signal.target) == ("signal", "x")
    net = parse_line(
        kernel('apparmor="DENIED" operation="create" profile="varmor-a" family="inet6" sock_type="stream"')
    )
    assert net is not None
    assert net.klass == "net"
    mount = parse_line(kernel('apparmor="DENIED" operation="mount" profile="varmor-a" name="/mnt" fstype="ext4"'))
    assert mount is not None
    assert mount.klass == "mount"
    exe = parse_line(kernel('apparmor="DENIED" operation="exec" profile="varmor-a" name="/bin/sh" requested_mask="x"'))
    assert exe is not None
    assert exe.klass == "file"


def test_parse_fields_decodes_hex_and_keeps_quoted_values_verbatim() -> None:
    fields = parse_fields('a="1 2" b=3 name="41" profile=4142')
    assert fields == {"a": "1 2", "b": "3", "name": "41", "profile": "AB"}


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (
            'apparmor="DENIED" operation="open" profile="varmor-a" name="/x"',
            "no kernel record header: any process can print this",
        ),
        (
            'type=USER_AVC msg=audit(1.0:1): apparmor="DENIED" operation="open" profile="varmor-a"',
            "userspace AVC records (dbus and friends) are not the kernel's",
        ),
        (
            kernel('apparmor="DENIED" operation="open" profile="varmor-a" profile="varmor-b"'),
            "a repeated key is injected text; the first one must not win",
        ),
        (
            kernel('apparmor="DENIED" operation="open" profile="varmor-a" name="/x" junk'),
            "trailing text that is not a key=value pair",
        ),
        (
            kernel('apparmor="DENIED" operation="open" profile="varmor-a" name="/x\x1b[31m"'),
            "a control character in a quoted value (the kernel hex-encodes those)",
        ),
        (
            "Nov 28 13:00:00 node-1 myapp[9]: " + 'apparmor="DENIED" operation="open" profile="varmor-a" name="/x"',
            "a syslog line from a process, not the kernel",
        ),
        (
            kernel('operation="open" apparmor="DENIED" profile="varmor-a"'),
            "the AppArmor message starts with apparmor= right after the stamp",
        ),
        (
            "type=USER_AVC msg=audit(1700000001.200:78): pid=999 uid=0 msg=' "
            + kernel('apparmor="DENIED" operation="open" profile="varmor-victim-web" name="/etc/shadow" x=')
            + '\'\x1dUID="root"',
            "a userspace message (any container with AUDIT_WRITE) embedding a kernel-looking record",
        ),
        (
            "Nov 28 13:00:00 node-1 app[9]: " + kernel('apparmor="DENIED" operation="open" profile="varmor-a"'),
            "a process's syslog line carrying a kernel-looking record",
        ),
    ],
)
def test_forged_or_malformed_records_are_refused(line: str, why: str) -> None:
    assert parse_line(line) is None, why


def test_class_is_one_of_a_fixed_set() -> None:
    """The class labels a metric: a record cannot invent label values."""
    record = parse_line(kernel('apparmor="DENIED" operation="open" class="x' + "a" * 50 + '" profile="varmor-a"'))
    assert record is not None
    assert record.klass == "other"


def test_decoded_values_reach_events_escaped() -> None:
    """A hex-encoded file name may decode to terminal escapes: Event messages show them as
    escapes, never as raw control characters."""
    from varmor.events import printable

    name = b"/tmp/\x1b]0;pwned\x07".hex().upper()
    record = parse_line(kernel(f'apparmor="DENIED" operation="open" profile="varmor-a" name={name}'))
    assert record is not None
    assert "\x1b" in record.target
    assert "\x1b" not in printable(record.target)
    assert "\\x1b" in printable(record.target)


def _recorded_lines() -> list[str]:
    if not DATA.is_dir():
        return []
    lines = []
    for path in sorted(DATA.glob("*.log")):
        lines += [ln for ln in path.read_text(errors="replace").splitlines() if 'apparmor="' in ln]
    return lines


def test_real_kernel_lines_parse() -> None:
    """Every DENIED/AUDIT/ALLOWED line recorded from the real AppArmor kernel parses, with
    a profile, an operation and a known class; STATUS lines are ignored."""
    lines = _recorded_lines()
    assert lines, f"no recorded kernel audit lines in {DATA} (the kernel tests write them)"
    parsed = 0
    for line in lines:
        record = parse_line(line)
        kind = line.split('apparmor="', 1)[1].split('"', 1)[0]
        if kind not in ("DENIED", "AUDIT", "ALLOWED"):
            assert record is None, line
            continue
        assert record is not None, line
        assert record.action == kind
        assert record.profile, line
        assert record.operation, line
        assert record.klass in CLASSES, line
        parsed += 1
    assert parsed > 0


def test_real_kernel_specifics() -> None:
    """Details that matter for attribution, on lines the real kernel wrote."""
    (hexed,) = [parse_line(ln) for ln in (DATA / "hex-name.log").read_text().splitlines() if ln]
    assert hexed is not None
    assert hexed.target == "/tmp/with space"
    child = parse_line((DATA / "child-profile.log").read_text().splitlines()[0])
    assert child is not None
    assert (child.profile, child.base_profile) == ("vk-parent//vk-target", "vk-parent")
    assert all(parse_line(ln) is None for ln in (DATA / "status.log").read_text().splitlines())
    ptrace = [
        r for ln in (DATA / "audit.log").read_text().splitlines() if (r := parse_line(ln)) and r.klass == "ptrace"
    ]
    assert ptrace
    assert ptrace[0].target == "unconfined"
