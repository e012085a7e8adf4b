"""The catalog covers vArmor's AppArmor IDs with their meaning, every rule compiles, and
every enforceable rule carries a probe in the vprobe vocabulary."""

from __future__ import annotations

import json
import shlex

import pytest

from tests.helpers import assert_compiles, policy_doc
from varmor.cli import main
from varmor.policy import parse_policy
from varmor.profile import build_profile, disposition
from varmor.rules import CatalogError, load_catalog, normalize_id, parse_catalog

CAPS = [
    "chown",
    "dac-override",
    "dac-read-search",
    "fowner",
    "fsetid",
    "kill",
    "setgid",
    "setuid",
    "setpcap",
    "linux-immutable",
    "net-bind-service",
    "net-broadcast",
    "net-admin",
    "net-raw",
    "ipc-lock",
    "ipc-owner",
    "sys-module",
    "sys-rawio",
    "sys-chroot",
    "sys-ptrace",
    "sys-pacct",
    "sys-admin",
    "sys-boot",
    "sys-nice",
    "sys-resource",
    "sys-time",
    "sys-tty-config",
    "mknod",
    "lease",
    "audit-write",
    "audit-control",
    "setfcap",
    "mac-override",
    "mac-admin",
    "syslog",
    "wake-alarm",
    "block-suspend",
    "audit-read",
    "perfmon",
    "bpf",
    "checkpoint-restore",
]
VARMOR_IDS = {
    "hardening": [
        "disallow-write-core-pattern",
        "disallow-mount-securityfs",
        "disallow-mount-procfs",
        "disallow-write-release-agent",
        "disallow-mount-cgroupfs",
        "disallow-debug-disk-device",
        "disallow-mount-disk-device",
        "disallow-mount",
        "disallow-umount",
        "disallow-insmod",
        "disallow-load-bpf-prog",
        "disallow-load-ebpf",
        "disallow-access-procfs-root",
        "disallow-access-kallsyms",
        "disallow-abuse-user-ns",
        "disable-cap-all",
        "disable-cap-all-except-net-bind-service",
        "disable-cap-privileged",
        *[f"disable-cap-{c}" for c in CAPS],
    ],
    "attack-protection": [
        "mitigate-sa-leak",
        "mitigate-disk-device-number-leak",
        "mitigate-overlayfs-leak",
        "mitigate-host-ip-leak",
        "disable-write-etc",
        "disable-busybox",
        "disable-shell",
        "disable-wget",
        "disable-curl",
        "disable-chmod",
        "disable-su-sudo",
        "disable-access-passwd",
        "disable-access-shadow",
        "disable-access-ssh-dir",
        "disable-write-skills",
        "disable-network",
        "disable-inet",
        "disable-ipv4",
        "disable-inet6",
        "disable-ipv6",
        "disable-unix-domain-socket",
        "disable-icmp",
        "disable-tcp",
        "disable-udp",
        "block-access-to-container-runtime",
    ],
    "vul-mitigation": [
        "cgroups-lxcfs-escape-mitigation",
        "runc-override-mitigation",
        "copy-fail-mitigation",
    ],
}
# vArmor's exact AppArmor lines for a sample of IDs (from its published rule set), qualifier stripped.
VARMOR_LINES = {
    "disallow-write-core-pattern": ["/proc/sys/kernel/core_pattern w"],
    "disallow-load-bpf-prog": ["capability sys_admin", "capability bpf"],
    "disallow-access-procfs-root": ["ptrace read"],
    "disable-cap-all": ["capability"],
    "mitigate-sa-leak": [
        "/run/secrets/kubernetes.io/serviceaccount/** r",
        "/var/run/secrets/kubernetes.io/serviceaccount/** r",
    ],
    "disable-write-etc": ["/etc/** wl"],
    "disable-shell": ["/**/sh", "/**/bash", "/**/dash"],
    "disable-inet6": ["network inet6"],
    "runc-override-mitigation": ["/**/runc w"],
    "copy-fail-mitigation": ["network alg"],
}
UNENFORCEABLE = [
    "disallow-create-user-ns",
    "disallow-metadata-service",
    "block-access-to-metadata-service",
    "dirty-pipe-mitigation",
    "ingress-nightmare-mitigation",
    "disable-chmod-x-bit",
    # vArmor's BPF-only metadata-service IDs: accepted with the same warning, never refused.
    "block-access-to-aws-metadata-service",
    "block-access-to-volc-metadata-service",
    "block-access-to-alibaba-metadata-service",
    "block-access-to-oci-metadata-service",
]
PROBE_OPS = {
    "read": 1,
    "write": 1,
    "create": 1,
    "link": 2,
    "exec": 1,
    "socket": 2,
    "connect-unix": 1,
    "mount": 3,
    "bind": 2,
    "rbind": 2,
    "move": 2,
    "remount": 1,
    "umount": 1,
    "ptrace-read": 1,
    "cap": 1,
    "chmod": 2,
}
CATALOG = load_catalog()


@pytest.mark.parametrize(("category", "rule_id"), [(c, i) for c, ids in VARMOR_IDS.items() for i in ids])
def test_every_varmor_id_is_known_in_its_category(category: str, rule_id: str) -> None:
    rule = CATALOG.get(rule_id)
    assert rule is not None, rule_id
    assert rule.category == category
    assert rule.enforceable


def test_varmor_id_count() -> None:
    assert len(CAPS) == 41
    assert len(CATALOG["disable-cap-privileged"].apparmor) == 27
    assert len(CATALOG["disable-cap-all-except-net-bind-service"].apparmor) == 40


@pytest.mark.parametrize("rule_id", sorted(VARMOR_LINES))
def test_same_meaning_as_varmor(rule_id: str) -> None:
    assert list(CATALOG[rule_id].apparmor) == VARMOR_LINES[rule_id]


def test_lookup_is_varmor_style() -> None:
    assert CATALOG.get("DISALLOW_LOAD_EBPF") is CATALOG["disallow-load-bpf-prog"]
    assert CATALOG.get("Disable_IPv4") is CATALOG["disable-inet"]
    assert normalize_id(" Disable_Cap_SYS_ADMIN ") == "disable-cap-sys-admin"
    assert CATALOG.get("nope") is None
    assert "nope" not in CATALOG
    assert "disallow-load-ebpf" in CATALOG.known_ids()


def test_new_protections_exist() -> None:
    packet = CATALOG["disallow-create-af-packet"]
    assert packet.apparmor == ("network packet",)
    shim = CATALOG["containerd-shim-socket-mitigation"]
    assert shim.apparmor == ("network unix",)
    assert shim.warning
    assert "CVE-2020-15257" in shim.references
    nginx = CATALOG["ingress-nginx-sa-leak-mitigation"]
    assert "/usr/local/nginx/sbin/nginx" in nginx.targets
    assert "/usr/bin/nginx" in nginx.targets
    assert nginx.probe is not None
    assert nginx.probe.target in nginx.targets


@pytest.mark.parametrize("rule_id", UNENFORCEABLE)
def test_unenforceable_ids_warn(rule_id: str) -> None:
    rule = CATALOG[rule_id]
    assert not rule.enforceable
    assert not rule.apparmor
    assert rule.warning
    assert rule.warning.startswith(rule.id)


@pytest.mark.parametrize("rule_id", [i for i in UNENFORCEABLE if "metadata" in i])
def test_varmor_bpf_only_ids_apply_unchanged_with_a_warning(rule_id: str) -> None:
    """A vArmor policy naming a BPF-only metadata-service rule is accepted under AppArmor and
    the user is told it is not enforced (vArmor itself ignores them silently)."""
    doc = policy_doc(attackProtectionRules=[{"rules": [rule_id.upper().replace("-", "_")]}])
    policy = parse_policy(doc)
    assert any(w.startswith(CATALOG[rule_id].id) and "not enforced" in w for w in policy.warnings)


@pytest.mark.parametrize("rule", [r for r in CATALOG if r.enforceable], ids=lambda r: r.id)
def test_probe_uses_the_vprobe_vocabulary(rule: object) -> None:
    probe = rule.probe  # type: ignore[attr-defined]
    op, *args = shlex.split(probe.run)
    assert op in PROBE_OPS, probe.run
    assert len(args) >= PROBE_OPS[op], probe.run
    if op == "cap":
        assert args[0] in {c.replace("-", "_") for c in CAPS}
    if rule.uses_disk_devices:  # type: ignore[attr-defined]
        assert probe.disk_devices


def test_every_rule_compiles_in_every_disposition_and_base() -> None:
    """All enforceable rules in one profile per qualifier and base: with
    --Werror=rule-not-enforced, any rule the parser would refuse or silently drop fails
    the compile (the warning is per rule, so combining them hides nothing)."""
    by_category: dict[str, list[str]] = {}
    for rule in CATALOG:
        if rule.enforceable and not rule.targets:
            by_category.setdefault(rule.category, []).append(rule.id)
    texts = {}
    for privileged in (False, True):
        for audit, allow in ((False, False), (True, False), (True, True), (False, True)):
            ep: dict[str, object] = {
                "hardeningRules": by_category["hardening"],
                "attackProtectionRules": [{"rules": by_category["attack-protection"]}],
                "vulMitigationRules": [*by_category["vul-mitigation"], "ingress-nginx-sa-leak-mitigation"],
                "privileged": privileged,
                "auditViolations": audit,
                "allowViolations": allow,
            }
            doc = {
                "apiVersion": "crd.varmor.org/v1beta1",
                "kind": "VarmorPolicy",
                "metadata": {"name": "r", "namespace": "t"},
                "spec": {
                    "target": {"kind": "Pod", "name": "p"},
                    "policy": {"enforcer": "AppArmor", "mode": "EnhanceProtect", "enhanceProtect": ep},
                },
            }
            key = f"priv={privileged}/{disposition(audit, allow)}"
            texts[key] = build_profile(parse_policy(doc), "varmor-t-r").text
    assert_compiles(texts)


def _field(category: str) -> str:
    return {
        "hardening": "hardeningRules",
        "attack-protection": "attackProtectionRules",
        "vul-mitigation": "vulMitigationRules",
    }[category]


def _entry(category: str, rule_id: str) -> list[object]:
    return [{"rules": [rule_id]}] if category == "attack-protection" else [rule_id]


def test_catalog_data_errors_are_caught() -> None:
    with pytest.raises(CatalogError, match="duplicate"):
        parse_catalog(
            {
                "a.yaml": "- {id: x, category: hardening, title: t, blocks: b, "
                "may_break: m, enforceable: false, warning: w}\n" * 2
            }
        )
    with pytest.raises(CatalogError, match="without qualifier"):
        parse_catalog(
            {
                "a.yaml": "- {id: x, category: hardening, title: t, blocks: b, "
                "may_break: m, apparmor: ['deny mount'], probe: {run: 'umount /'}}"
            }
        )
    with pytest.raises(CatalogError, match="needs apparmor lines and a probe"):
        parse_catalog(
            {"a.yaml": "- {id: x, category: hardening, title: t, blocks: b, may_break: m, apparmor: ['mount']}"}
        )


def test_rules_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data) == len(CATALOG)
    for item in data:
        assert {"id", "aliases", "category", "title", "apparmor", "probe"} <= set(item)
    by_id = {item["id"]: item for item in data}
    assert by_id["disallow-load-bpf-prog"]["aliases"] == ["disallow-load-ebpf"]
    assert by_id["disallow-create-user-ns"]["probe"] is None


def test_rules_list_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "list"]) == 0
    out = capsys.readouterr().out
    assert "disallow-create-user-ns" in out
    assert "NOT ENFORCED" in out
