"""Policy parsing: vArmor-compatible documents parse; each class of bad input is refused
with a message naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import policy_doc, with_path
from varmor.admission.selector import LabelSelector
from varmor.policy import PolicyError, parse_policy


def test_full_policy_parses() -> None:
    doc = policy_doc(
        hardeningRules=["Disallow_Write_Core_Pattern", "disallow-load-ebpf", "disable-cap-all"],
        attackProtectionRules=[
            {"rules": ["mitigate-sa-leak"]},
            {"rules": ["disable-shell", "DISABLE_WGET"], "targets": ["/usr/bin/python3"]},
        ],
        vulMitigationRules=["runc-override-mitigation"],
        appArmorRawRules=[{"rules": "audit deny /etc/hosts r,\ndeny network inet6,"}],
        privileged=True,
        auditViolations=True,
    )
    doc["spec"]["updateExistingWorkloads"] = True
    policy = parse_policy(doc)
    ep = policy.enhance_protect
    assert ep is not None
    assert ep.hardening_rules == (
        "disallow-write-core-pattern",
        "disallow-load-bpf-prog",
        "disable-cap-all",
    )
    assert ep.attack_protection_rules[1].rules == ("disable-shell", "disable-wget")
    assert ep.attack_protection_rules[1].targets == ("/usr/bin/python3",)
    assert ep.raw_rules[0].rules == ("audit deny /etc/hosts r", "deny network inet6")
    assert ep.privileged
    assert ep.audit_violations
    assert not ep.allow_violations
    assert policy.update_existing_workloads
    assert policy.profile_name() == "varmor-team-a-demo"
    # Only the exec rules' documented limit (busybox symlinks) is reported.
    assert [w.split(":")[0] for w in policy.warnings] == ["disable-shell", "disable-wget"]


def test_cluster_policy_profile_name_uses_install_namespace() -> None:
    doc = with_path(policy_doc(), "kind", "VarmorClusterPolicy")
    doc["metadata"].pop("namespace")
    policy = parse_policy(doc)
    assert policy.namespace is None
    assert policy.cluster_scoped
    assert policy.profile_name("kube-varmor") == "varmor-cluster-kube-varmor-demo"


def test_modes_without_enhance_protect() -> None:
    for mode in ("AlwaysAllow", "RuntimeDefault"):
        doc = with_path(policy_doc(), "spec.policy.mode", mode)
        doc["spec"]["policy"].pop("enhanceProtect")
        assert parse_policy(doc).mode == mode


def test_name_target_and_containers() -> None:
    doc = with_path(policy_doc(), "spec.target", {"kind": "Pod", "name": "web", "containers": ["a"]})
    target = parse_policy(doc).target
    assert (target.kind, target.name, target.selector, target.containers) == ("Pod", "web", None, ("a",))


def test_selector_semantics() -> None:
    sel = LabelSelector.parse(
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "canary", "operator": "DoesNotExist"},
            ],
        }
    )
    assert sel.matches({"app": "web", "tier": "a"})
    assert not sel.matches({"app": "web", "tier": "c"})
    assert not sel.matches({"app": "web", "tier": "a", "canary": "1"})


def test_unenforceable_rule_is_accepted_with_warning() -> None:
    doc = policy_doc(
        hardeningRules=["disallow-create-user-ns"],
        attackProtectionRules=[{"rules": ["disallow-metadata-service"]}],
    )
    warnings = parse_policy(doc).warnings
    assert any("disallow-create-user-ns" in w and "not enforced" in w for w in warnings)
    assert any("block-access-to-metadata-service" in w for w in warnings)


def test_allow_without_audit_warns() -> None:
    doc = policy_doc(hardeningRules=["disallow-umount"], allowViolations=True)
    assert any("complain mode" in w for w in parse_policy(doc).warnings)


BAD: list[tuple[str, Any, str]] = [
    # (dotted path to set, value, expected message start)
    (
        "spec.policy.enhanceProtect.hardeningRules",
        ["no-such-rule"],
        "spec.policy.enhanceProtect.hardeningRules[0]: unknown rule ID 'no-such-rule'",
    ),
    (
        "spec.policy.enhanceProtect.hardeningRules",
        ["mitigate-sa-leak"],
        "spec.policy.enhanceProtect.hardeningRules[0]: 'mitigate-sa-leak' is a attack-protection rule",
    ),
    (
        "spec.policy.enhanceProtect.attackProtectionRules",
        [{"rules": ["disallow-mount"]}],
        "spec.policy.enhanceProtect.attackProtectionRules[0].rules[0]: 'disallow-mount' is a hardening",
    ),
    (
        "spec.policy.enhanceProtect.attackProtectionRules",
        [{"rules": []}],
        "spec.policy.enhanceProtect.attackProtectionRules[0].rules: is required",
    ),
    ("spec.policy.enforcer", "BPF", "spec.policy.enforcer: 'BPF' uses BPF"),
    ("spec.policy.enforcer", "AppArmorSeccomp", "spec.policy.enforcer: 'AppArmorSeccomp' uses Seccomp"),
    ("spec.policy.enforcer", "NotAppArmorReally", "spec.policy.enforcer: 'NotAppArmorReally' is not"),
    ("spec.policy.enforcer", None, "spec.policy.enforcer: must be a non-empty string"),
    ("spec.policy.mode", "BehaviorModeling", "spec.policy.modelingOptions: is required in BehaviorModeling"),
    ("spec.policy.mode", "DefenseInDepth", "spec.policy.defenseInDepth: is required in DefenseInDepth"),
    ("spec.policy.modelingOptions", {"duration": 0}, "spec.policy.modelingOptions.duration: must be a whole"),
    ("spec.policy.modelingOptions", {"duration": True}, "spec.policy.modelingOptions.duration: must be a whole"),
    ("spec.policy.modelingOptions", {"duration": 1, "x": 1}, "spec.policy.modelingOptions.x: unknown field"),
    ("spec.policy.mode", "Sometimes", "spec.policy.mode: must be one of"),
    ("spec.policy.enhanceProtect", None, "spec.policy.enhanceProtect: is required in EnhanceProtect"),
    ("spec.target.name", "web", "spec.target: name and selector are mutually exclusive"),
    ("spec.target.selector", None, "spec.target: one of name or selector is required"),
    ("spec.target.selector", {}, "spec.target.selector: must not be empty"),
    ("spec.target.kind", "Job", "spec.target.kind: must be one of Deployment, StatefulSet"),
    ("spec.target.containers", ["Bad_Name"], "spec.target.containers[0]: 'Bad_Name' is not"),
    (
        "spec.policy.enhanceProtect.attackProtectionRules",
        [{"rules": ["disable-shell"], "targets": ["usr/bin/bash"]}],
        "spec.policy.enhanceProtect.attackProtectionRules[0].targets[0]: 'usr/bin/bash' must be an absolute",
    ),
    (
        "spec.policy.enhanceProtect.appArmorRawRules",
        [{"rules": "deny /x r,", "targets": ["bin/sh"]}],
        "spec.policy.enhanceProtect.appArmorRawRules[0].targets[0]: 'bin/sh' must be an absolute",
    ),
    (
        "spec.policy.enhanceProtect.attackProtectionRules",
        [{"rules": ["disable-shell"], "targets": ["/bin/a,b"]}],
        "spec.policy.enhanceProtect.attackProtectionRules[0].targets[0]: '/bin/a,b' is not a plain",
    ),
    (
        "spec.policy.enhanceProtect.appArmorRawRules",
        [{"rules": "} profile evil {"}],
        "spec.policy.enhanceProtect.appArmorRawRules[0].rules: braces are not allowed",
    ),
    (
        "spec.policy.enhanceProtect.bpfRawRules",
        {"files": [{}]},
        "spec.policy.enhanceProtect.bpfRawRules: belongs to another enforcer",
    ),
    ("spec.policy.enhanceProtect.privileged", "yes", "spec.policy.enhanceProtect.privileged: must be true or false"),
    (
        "spec.policy.defenseInDepth",
        {"appArmor": {}},
        "spec.policy.defenseInDepth.appArmor.profileType: must be BehaviorModel or Custom",
    ),
    (
        "spec.policy.defenseInDepth",
        {"appArmor": {"profileType": "Custom", "customProfile": "profile x { } profile y { /** ix, }"}},
        "spec.policy.defenseInDepth.appArmor.customProfile: ",
    ),
    (
        "spec.policy.defenseInDepth",
        {"appArmor": {"profileType": "Custom", "customProfile": "# read-only app\u2028capability sys_admin,"}},
        "spec.policy.defenseInDepth.appArmor.customProfile: customProfile holds a line break other than a newline",
    ),
    (
        "spec.policy.defenseInDepth",
        {"appArmor": {"profileType": "Custom", "customProfile": "/bin/sh px,"}},
        "spec.policy.defenseInDepth.appArmor.customProfile: ",
    ),
    (
        "spec.policy.defenseInDepth",
        {"appArmor": {"profileType": "BehaviorModel", "appArmorRawRules": [{"rules": "change_profile -> x,"}]}},
        "spec.policy.defenseInDepth.appArmor.appArmorRawRules[0].rules: ",
    ),
    (
        "spec.policy.defenseInDepth",
        {"seccomp": {}, "appArmor": {"profileType": "BehaviorModel"}},
        "spec.policy.defenseInDepth.seccomp: belongs to another enforcer",
    ),
    ("spec.surprise", 1, "spec.surprise: unknown field"),
    ("metadata.name", "x" * 60, "metadata.name: derived profile name"),
    ("apiVersion", "v1", "apiVersion: must be 'crd.varmor.org/v1beta1'"),
    ("kind", "ArmorProfile", "kind: must be one of VarmorPolicy, VarmorClusterPolicy"),
]


@pytest.mark.parametrize(
    ("path", "value", "message"), BAD, ids=[b[2].split(":")[0] + f"-{i}" for i, b in enumerate(BAD)]
)
def test_bad_input_names_the_field(path: str, value: Any, message: str) -> None:
    with pytest.raises(PolicyError) as exc:
        parse_policy(with_path(policy_doc(), path, value))
    assert str(exc.value).startswith(message), str(exc.value)


def test_unknown_rule_suggests_close_match() -> None:
    with pytest.raises(PolicyError, match="did you mean 'disable-shell'"):
        parse_policy(policy_doc(attackProtectionRules=[{"rules": ["disable-shel"]}]))


def test_cluster_name_limit_depends_on_install_namespace() -> None:
    doc = with_path(policy_doc(), "kind", "VarmorClusterPolicy")
    doc["metadata"] = {"name": "p" * 40}
    parse_policy(doc, install_namespace="varmor")
    with pytest.raises(PolicyError, match=r"^metadata\.name: derived profile name"):
        parse_policy(doc, install_namespace="a-very-long-install-namespace")


def test_not_a_mapping() -> None:
    with pytest.raises(PolicyError, match="must be an object"):
        parse_policy([])  # type: ignore[arg-type]


# -- strict targets (issue: executable targets matched loosely) -------------------------

# Each character the review found accepted as a target's last character, and elsewhere.
REVIEWED_CHARACTERS = ['"', ",", "{", "}", "#", "\x00", "\x1b", "\n"]
TARGET_FIELDS = [
    ("attackProtectionRules", lambda t: [{"rules": ["disable-shell"], "targets": [t]}]),
    ("appArmorRawRules", lambda t: [{"rules": "deny /x r,", "targets": [t]}]),
]


@pytest.mark.parametrize("char", REVIEWED_CHARACTERS, ids=[repr(c) for c in REVIEWED_CHARACTERS])
@pytest.mark.parametrize("where", ["last", "middle"])
@pytest.mark.parametrize(("field", "make"), TARGET_FIELDS, ids=[f[0] for f in TARGET_FIELDS])
def test_targets_refuse_every_reviewed_character(char: str, where: str, field: str, make: Any) -> None:
    target = f"/usr/bin/sh{char}" if where == "last" else f"/usr/b{char}in/sh"
    doc = with_path(policy_doc(), f"spec.policy.enhanceProtect.{field}", make(target))
    with pytest.raises(PolicyError) as exc:
        parse_policy(doc)
    message = str(exc.value)
    assert message.startswith(f"spec.policy.enhanceProtect.{field}[0].targets[0]: "), message
    assert repr(char) in message  # names the character, escaped
    assert not any(ord(c) < 0x20 or c == "\x7f" for c in message)  # no control character gets through


@pytest.mark.parametrize(
    "target",
    [" /usr/bin/sh", "/usr/bin/sh ", "/usr/bin/s h", "/usr/bin/sh\t", "/usr/bin/", "/", "/bin/\u202esh", "/bin/@{x}"],
)
def test_targets_refuse_whitespace_at_the_ends_and_block_syntax(target: str) -> None:
    doc = with_path(
        policy_doc(),
        "spec.policy.enhanceProtect.attackProtectionRules",
        [{"rules": ["disable-shell"], "targets": [target]}],
    )
    with pytest.raises(PolicyError, match=r"^spec\.policy\.enhanceProtect\.attackProtectionRules\[0\]\.targets\[0\]"):
        parse_policy(doc)


@pytest.mark.parametrize("target", ["/usr/bin/python3", "/usr/**/sh", "/usr/bin/python3.1?", "/opt/[ab]in/x", "/a/b~c"])
def test_targets_accept_plain_paths_and_builder_globs(target: str) -> None:
    doc = with_path(
        policy_doc(),
        "spec.policy.enhanceProtect.attackProtectionRules",
        [{"rules": ["disable-shell"], "targets": [target]}],
    )
    assert parse_policy(doc).enhance_protect is not None


def test_the_crd_pattern_is_the_parsers_grammar() -> None:
    """The API server (CRD pattern) and varmor.policy refuse the same targets."""
    import re

    from varmor.models.policy import EXECUTABLE_PATTERN

    for char in REVIEWED_CHARACTERS:
        assert not re.fullmatch(EXECUTABLE_PATTERN, f"/usr/bin/sh{char}")
    assert re.fullmatch(EXECUTABLE_PATTERN, "/usr/bin/sh")


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("spec.target", {"kind": "Deployment", "name": "web\x1b[31m"}, "spec.target.name: 'web\\x1b[31m' is not"),
        ("spec.target", {"kind": "Deployment", "name": "web\n"}, "spec.target.name: 'web\\n' is not"),
        ("spec.target.containers", ["web\n"], "spec.target.containers[0]: 'web\\n' is not"),
        ("spec.target.selector", {"matchLabels": {"app": "w\x00"}}, "spec.target.selector.matchLabels.app: 'w\\x00'"),
        ("spec.target.selector", {"matchLabels": {"a\x1bpp": "w"}}, "spec.target.selector.matchLabels: 'a\\x1bpp'"),
        (
            "spec.target.selector",
            {"matchExpressions": [{"key": "app", "operator": "In", "values": ["ok", "bad\n"]}]},
            "spec.target.selector.matchExpressions[0].values[1]: 'bad\\n'",
        ),
    ],
)
def test_control_characters_are_refused_in_every_user_string(path: str, value: Any, message: str) -> None:
    """Workload, container and label names reach Events, logs and the webhook configuration
    (which the API server would refuse, blocking registration for every policy)."""
    with pytest.raises(PolicyError) as exc:
        parse_policy(with_path(policy_doc(), path, value))
    assert str(exc.value).startswith(message), str(exc.value)


# -- opt-out ------------------------------------------------------------------------


def test_opt_out_is_refused_by_default_and_a_policy_can_allow_it() -> None:
    assert parse_policy(policy_doc()).allow_opt_out is False
    assert parse_policy(with_path(policy_doc(), "spec.policy.allowOptOut", True)).allow_opt_out is True
    with pytest.raises(PolicyError, match=r"^spec\.policy\.allowOptOut: must be true or false"):
        parse_policy(with_path(policy_doc(), "spec.policy.allowOptOut", "yes"))
