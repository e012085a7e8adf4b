"""Builder behaviour: modes, qualifiers, exec modes, targets, node-local values, CLI."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import assert_compiles, policy_doc, with_path
from varmor.cli import main
from varmor.parser import compile_check
from varmor.policy import parse_policy
from varmor.profile import (
    NO_DEVICE_PLACEHOLDER,
    NODE_LOCAL_INCLUDE,
    BuiltProfile,
    DiskDeviceError,
    build_profile,
    node_local_include,
)

NAME = "varmor-team-a-demo"


def build(**enhance: Any) -> BuiltProfile:
    return build_profile(parse_policy(policy_doc(**enhance)), NAME)


def mode_doc(mode: str) -> dict[str, Any]:
    doc = with_path(policy_doc(), "spec.policy.mode", mode)
    doc["spec"]["policy"].pop("enhanceProtect")
    return doc


def rule_lines(text: str) -> list[str]:
    """Non-comment lines after the base section (the rules the policy added)."""
    body = text.split("# Hardening rules", 1)[-1]
    lines = [ln.strip() for ln in body.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#") and ln != "}"]


def test_every_profile_starts_with_abi_and_tunables() -> None:
    for mode in ("AlwaysAllow", "RuntimeDefault"):
        text = build_profile(parse_policy(mode_doc(mode)), NAME).text
        assert text.splitlines()[1:3] == ["abi <abi/3.0>,", "#include <tunables/global>"]
        assert f"profile {NAME} flags=(attach_disconnected,mediate_deleted) {{" in text


def test_always_allow_allows_everything_enforceable() -> None:
    built = build_profile(parse_policy(mode_doc("AlwaysAllow")), NAME)
    assert built.mode == "enforce"
    for rule in ("file,", "capability,", "network,", "mount,", "ptrace,", "signal,", "unix,"):
        assert f"  {rule}\n" in built.text
    assert "deny" not in built.text
    assert "dbus" not in built.text  # not enforceable under the pinned ABI


def test_runtime_default_is_containerds_profile() -> None:
    text = build_profile(parse_policy(mode_doc("RuntimeDefault")), NAME).text
    for line in (
        "deny @{PROC}/* w,",
        "deny @{PROC}/sys/[^k]** w,",
        "deny mount,",
        "deny /sys/kernel/security/** rwklx,",
        f"signal (send,receive) peer={NAME},",
        f"ptrace (trace,read,tracedby,readby) peer={NAME},",
        "umount,",
    ):
        assert f"  {line}\n" in text


@pytest.mark.parametrize(
    ("audit", "allow", "qualifier", "exec_perms", "mode"),
    [
        (False, False, "deny", "rx", "enforce"),
        (True, False, "audit deny", "rx", "enforce"),
        (True, True, "audit", "rix", "enforce"),
        (False, True, "audit deny", "rx", "complain"),
    ],
)
def test_dispositions(audit: bool, allow: bool, qualifier: str, exec_perms: str, mode: str) -> None:
    built = build(
        hardeningRules=["disallow-umount"],
        attackProtectionRules=[{"rules": ["disable-shell"]}],
        auditViolations=audit,
        allowViolations=allow,
    )
    assert built.mode == mode
    assert ("complain)" in built.text.splitlines()[4]) is (mode == "complain")
    assert f"  {qualifier} umount,\n" in built.text
    assert f"  {qualifier} /**/sh {exec_perms},\n" in built.text
    # The base's denies follow the same qualifier (vArmor), and are never left bare.
    base_mount = "rwklix" if allow and audit else "rwklx"
    assert f"  {qualifier} @{{PROC}}/{{sysrq-trigger,mem,kmem,kcore}} {base_mount},\n" in built.text
    for line in rule_lines(built.text):
        assert line.startswith(qualifier + " "), line


def test_allow_without_audit_never_emits_a_plain_allow() -> None:
    built = build(hardeningRules=["disallow-write-core-pattern"], allowViolations=True)
    assert "  audit deny /proc/sys/kernel/core_pattern w,\n" in built.text
    assert "  /proc/sys/kernel/core_pattern w,\n" not in built.text
    assert any("complain mode" in w for w in built.warnings)


def test_privileged_uses_always_allow_base() -> None:
    built = build(hardeningRules=["disallow-mount"], privileged=True)
    assert "# Base: AlwaysAllow" in built.text
    assert "@{PROC}" not in built.text
    assert "  deny mount,\n" in built.text


def test_unix_deny_is_by_omission() -> None:
    built = build(attackProtectionRules=[{"rules": ["disable-unix-domain-socket"]}])
    assert "#include <abstractions/base>" not in built.text
    assert "  network,\n" not in built.text
    assert "  unix,\n" not in built.text
    assert "network unix," not in built.text
    assert "  network inet,\n" in built.text
    assert_compiles({"u": built.text})
    allowed = build(
        attackProtectionRules=[{"rules": ["disable-unix-domain-socket"]}],
        auditViolations=True,
        allowViolations=True,
    )
    assert "  audit network unix,\n" in allowed.text
    assert "#include <abstractions/base>" in allowed.text


def test_output_is_deterministic_and_order_independent() -> None:
    a = build(
        hardeningRules=["disable-cap-sys-admin", "disallow-umount"],
        attackProtectionRules=[
            {"rules": ["disable-wget", "mitigate-sa-leak"], "targets": ["/b", "/a"]},
            {"rules": ["disable-curl"], "targets": ["/c"]},
        ],
    )
    b = build(
        hardeningRules=["disallow-umount", "DISABLE_CAP_SYS_ADMIN", "disallow-umount"],
        attackProtectionRules=[
            {"rules": ["disable-curl"], "targets": ["/c"]},
            {"rules": ["mitigate-sa-leak", "disable-wget"], "targets": ["/a", "/b"]},
        ],
    )
    assert a.text == b.text
    assert a.sha256 == b.sha256 == hashlib.sha256(a.text.encode()).hexdigest()


def test_targets_become_merged_child_profiles() -> None:
    built = build(
        hardeningRules=["disable-cap-sys-admin"],
        attackProtectionRules=[
            {"rules": ["disable-wget"], "targets": ["/usr/bin/python3", "/usr/bin/node"]},
            {"rules": ["disable-curl"], "targets": ["/usr/bin/ruby"]},
        ],
    )
    children = re.findall(r"^  profile (child_[0-9a-f]{8}) ", built.text, re.M)
    assert len(children) == 2
    py = re.search(r"^  /usr/bin/python3 cx -> (child_\w+),$", built.text, re.M)
    node = re.search(r"^  /usr/bin/node cx -> (child_\w+),$", built.text, re.M)
    ruby = re.search(r"^  /usr/bin/ruby cx -> (child_\w+),$", built.text, re.M)
    assert py
    assert node
    assert ruby
    assert py[1] == node[1] != ruby[1]
    # Children keep the container-wide rules and add their own.
    child = built.text.split(f"profile {py[1]} ", 1)[1].split("\n  }\n", 1)[0]
    assert "deny capability sys_admin," in child
    assert "deny /**/wget rx," in child
    assert "deny /**/curl rx," not in child
    assert f"/usr/bin/ruby px -> {NAME}//{ruby[1]}," in child
    assert "/usr/bin/python3 rix," in child
    # The parent itself does not get target rules.
    parent = built.text.split("  profile child_", 1)[0]
    assert "/**/wget" not in parent
    assert_compiles({"t": built.text})


def test_child_names_survive_unrelated_changes() -> None:
    one = build(attackProtectionRules=[{"rules": ["disable-wget"], "targets": ["/usr/bin/a"]}])
    two = build(
        attackProtectionRules=[
            {"rules": ["disable-wget"], "targets": ["/usr/bin/a"]},
            {"rules": ["disable-curl"], "targets": ["/usr/bin/b"]},
        ]
    )
    name = re.search(r"/usr/bin/a cx -> (child_\w+),", one.text)
    assert name
    assert f"/usr/bin/a cx -> {name[1]}," in two.text


def test_target_with_only_global_rules_needs_no_child() -> None:
    built = build(
        attackProtectionRules=[
            {"rules": ["disable-wget"]},
            {"rules": ["disable-wget"], "targets": ["/usr/bin/a"]},
        ]
    )
    assert "cx ->" not in built.text


def test_ingress_nginx_rule_applies_to_nginx_only() -> None:
    built = build(vulMitigationRules=["ingress-nginx-sa-leak-mitigation"])
    parent = built.text.split("  profile child_", 1)[0]
    assert "serviceaccount" not in parent
    for path in ("/usr/bin/nginx", "/usr/local/nginx/sbin/nginx"):
        assert re.search(rf"^  {re.escape(path)} cx -> child_\w+,$", built.text, re.M)
    assert "deny /var/run/secrets/kubernetes.io/serviceaccount/** r," in built.text


def test_raw_rules_are_inserted_verbatim() -> None:
    built = build(
        appArmorRawRules=[
            {"rules": "audit deny /etc/hosts r,\n  deny network  inet raw,"},
            {"rules": "deny /tmp/x w,", "targets": ["/bin/app"]},
        ]
    )
    assert "  audit deny /etc/hosts r,\n  deny network inet raw,\n" in built.text
    assert re.search(r"^    deny /tmp/x w,$", built.text, re.M)  # inside the child
    assert "  deny /tmp/x w,\n" not in built.text.split("  profile child_", 1)[0]


def test_unenforceable_rules_warn_and_leave_a_comment() -> None:
    built = build(hardeningRules=["disallow-create-user-ns"])
    assert "# disallow-create-user-ns: not enforced by AppArmor" in built.text
    assert any(w.startswith("disallow-create-user-ns: not enforced") for w in built.warnings)
    shim = build(vulMitigationRules=["containerd-shim-socket-mitigation"])
    assert any("UNIX" in w for w in shim.warnings)


def test_disk_rules_use_the_node_local_include(tmp_path: Path) -> None:
    built = build(hardeningRules=["disallow-debug-disk-device", "disallow-mount-disk-device"])
    assert f"#include <{NODE_LOCAL_INCLUDE}>\n" in built.text
    assert "deny @{VARMOR_DISK_DEVICES} rw," in built.text
    assert "deny mount @{VARMOR_DISK_DEVICES}," in built.text
    assert "#include <varmor/" not in build(hardeningRules=["disallow-umount"]).text
    # The agent's file, for a node with devices and for one with none, compiles.
    for devices in (["sda", "/dev/sda1", "nvme0n1p2", "cciss/c0d0"], []):
        inc = tmp_path / str(len(devices))
        (inc / "varmor").mkdir(parents=True)
        (inc / NODE_LOCAL_INCLUDE).write_text(node_local_include(devices))
        assert compile_check({"d": built.text}, [inc])["d"].ok


def test_node_local_include_text() -> None:
    text = node_local_include(["sdb", "sda", "/dev/sda"])
    assert text.endswith("@{VARMOR_DISK_DEVICES} = /dev/sda /dev/sdb\n")
    assert node_local_include([]).endswith(f"= {NO_DEVICE_PLACEHOLDER}\n")
    for bad in ("sda b", "../etc", "sd{a,b}", "sda,", "", "sda\n@{X}=y"):
        with pytest.raises(DiskDeviceError):
            node_local_include([bad])


def test_render_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(policy_doc(hardeningRules=["disallow-create-user-ns"])))
    assert main(["profile", "render", str(good)]) == 0
    out, err = capsys.readouterr()
    assert out == build(hardeningRules=["disallow-create-user-ns"]).text
    assert "warning: disallow-create-user-ns" in err
    assert main(["profile", "render", "--check", str(good)]) == 0
    assert capsys.readouterr().out == out

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_path(policy_doc(), "spec.target.name", "x")))
    assert main(["profile", "render", str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "spec.target: name and selector are mutually exclusive" in err

    raw = tmp_path / "raw.yaml"
    raw.write_text(yaml.safe_dump(policy_doc(appArmorRawRules=[{"rules": "deny unix addr=@/x,"}])))
    assert main(["profile", "render", str(raw)]) == 0
    capsys.readouterr()
    assert main(["profile", "render", "--check", str(raw)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "not enforced" in err

    assert main(["profile", "render", str(tmp_path / "missing.yaml")]) == 2
