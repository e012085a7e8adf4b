"""VarmorPolicy / VarmorClusterPolicy: parse and validate (pure).

Wire-compatible with vArmor's AppArmor policies, but strict where vArmor is lax: unknown
rule IDs, other enforcers, rules filed under the wrong list, relative targets, unknown
fields and over-long profile names are errors naming the field, not silent no-ops. IDs
that AppArmor cannot enforce are accepted with a warning (Policy.warnings) so existing
policies keep applying, and nobody believes they are protected by them.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from varmor import api
from varmor.admission.selector import LabelSelector, SelectorError
from varmor.models.policy import CATEGORY_FIELDS, EXECUTABLE_PATTERN
from varmor.models.target import DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN
from varmor.policy.fields import PolicyError as PolicyError
from varmor.policy.fields import bool_field, list_field, mapping, only, string, strings
from varmor.policy.modes import DefenseInDepth, defense_in_depth, modeling_minutes
from varmor.profile.raw import RawRuleError, check_raw_rules
from varmor.rules import Catalog, Rule, load_catalog, normalize_id

PolicyKind = Literal["VarmorPolicy", "VarmorClusterPolicy"]
Mode = Literal["AlwaysAllow", "RuntimeDefault", "EnhanceProtect", "BehaviorModeling", "DefenseInDepth"]
MODES: tuple[Mode, ...] = ("AlwaysAllow", "RuntimeDefault", "EnhanceProtect", "BehaviorModeling", "DefenseInDepth")
DEFAULT_INSTALL_NAMESPACE = "varmor"
DEFAULT_NAMESPACE = "default"

_KINDS: dict[str, PolicyKind] = {
    api.VARMOR_POLICY.kind: "VarmorPolicy",
    api.VARMOR_CLUSTER_POLICY.kind: "VarmorClusterPolicy",
}
_OTHER_ENFORCERS = ("BPF", "Seccomp", "NetworkProxy")
# A target is an absolute executable path; AppArmor globs are fine, block syntax is not.
# Always `fullmatch`: `$` alone would let a trailing newline through.
_TARGET = re.compile(EXECUTABLE_PATTERN)
_CONTAINER = re.compile(DNS_LABEL_PATTERN)
_WORKLOAD_NAME = re.compile(DNS_SUBDOMAIN_PATTERN)
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


@dataclass(frozen=True)
class Target:
    kind: str
    name: str | None = None
    selector: LabelSelector | None = None
    containers: tuple[str, ...] = ()


@dataclass(frozen=True)
class RuleGroup:
    """attackProtectionRules[]: catalog rule IDs (canonical), optionally per executable."""

    rules: tuple[str, ...]
    targets: tuple[str, ...] = ()


@dataclass(frozen=True)
class RawRuleGroup:
    """appArmorRawRules[]: validated single rules (no trailing comma), optionally per
    executable."""

    rules: tuple[str, ...]
    targets: tuple[str, ...] = ()


@dataclass(frozen=True)
class EnhanceProtect:
    hardening_rules: tuple[str, ...] = ()
    attack_protection_rules: tuple[RuleGroup, ...] = ()
    vul_mitigation_rules: tuple[str, ...] = ()
    raw_rules: tuple[RawRuleGroup, ...] = ()
    privileged: bool = False
    audit_violations: bool = False
    allow_violations: bool = False

    def rule_ids(self) -> tuple[str, ...]:
        """Every catalog rule ID the policy uses, in first-use order."""
        ids = [*self.hardening_rules]
        for group in self.attack_protection_rules:
            ids.extend(group.rules)
        ids.extend(self.vul_mitigation_rules)
        return tuple(dict.fromkeys(ids))


@dataclass(frozen=True)
class Policy:
    kind: PolicyKind
    name: str
    namespace: str | None  # None for VarmorClusterPolicy
    target: Target
    mode: Mode
    enforcer: str = "AppArmor"
    enhance_protect: EnhanceProtect | None = None
    modeling_minutes: int | None = None  # BehaviorModeling
    defense_in_depth: DefenseInDepth | None = None
    update_existing_workloads: bool = False
    allow_opt_out: bool = False
    generation: int | None = None
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def cluster_scoped(self) -> bool:
        return self.kind == "VarmorClusterPolicy"

    def profile_name(self, install_namespace: str = DEFAULT_INSTALL_NAMESPACE) -> str:
        """`varmor-<ns>-<name>` or `varmor-cluster-<installns>-<name>` (api.profile_name)."""
        return api.profile_name(self.namespace, self.name, install_namespace)


# ---------------------------------------------------------------------------- target


def _selector(raw: Any, path: str) -> LabelSelector:
    """A target selector: well-formed, and not empty (Kubernetes reads an empty selector
    as "every object", which a policy must say explicitly, never by omission)."""
    try:
        selector = LabelSelector.parse(mapping(raw, path))
    except SelectorError as exc:
        raise PolicyError(f"{path}.{exc.path}" if exc.path else path, exc.reason) from None
    if selector.empty:
        raise PolicyError(path, "must not be empty (an empty selector would match every workload)")
    labels = [(k, f"{path}.matchLabels", v, f"{path}.matchLabels.{k}") for k, v in selector.match_labels]
    for i, req in enumerate(selector.match_expressions):
        at = f"{path}.matchExpressions[{i}]"
        labels += [(req.key, f"{at}.key", v, f"{at}.values[{j}]") for j, v in enumerate(req.values or ("",))]
    for key, key_path, value, value_path in labels:  # the API server refuses an objectSelector with others
        prefix, _, name = key.rpartition("/")
        valid_prefix = not prefix or (len(prefix) <= 253 and _WORKLOAD_NAME.fullmatch(prefix))
        if not valid_prefix or len(name) > 63 or not _LABEL_NAME.fullmatch(name):
            raise PolicyError(key_path, f"{key!r} is not a valid label key")
        if value and (len(value) > 63 or not _LABEL_NAME.fullmatch(value)):
            raise PolicyError(value_path, f"{value!r} is not a valid label value")
    return selector


def _target(raw: Any) -> Target:
    path = "spec.target"
    tgt = mapping(raw, path)
    only(tgt, ("kind", "name", "selector", "containers"), path)
    kind = tgt.get("kind")
    if kind not in api.TARGET_KINDS:
        raise PolicyError(f"{path}.kind", f"must be one of {', '.join(api.TARGET_KINDS)}")
    has_name = tgt.get("name") is not None
    has_selector = tgt.get("selector") is not None
    if has_name and has_selector:
        raise PolicyError(path, "name and selector are mutually exclusive")
    if not has_name and not has_selector:
        raise PolicyError(path, "one of name or selector is required")
    name = string(tgt["name"], f"{path}.name") if has_name else None
    if name is not None and (len(name) > 253 or not _WORKLOAD_NAME.fullmatch(name)):
        raise PolicyError(f"{path}.name", f"{name!r} is not a workload name (a DNS-1123 subdomain)")
    selector = _selector(tgt["selector"], f"{path}.selector") if has_selector else None
    containers = strings(tgt.get("containers"), f"{path}.containers")
    for i, c in enumerate(containers):
        if len(c) > 63 or not _CONTAINER.fullmatch(c):
            raise PolicyError(f"{path}.containers[{i}]", f"{c!r} is not a container name")
    return Target(kind, name, selector, tuple(dict.fromkeys(containers)))


# ---------------------------------------------------------------------------- rules


class _RuleChecker:
    """Resolves IDs against the catalog and collects warnings in order."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.warnings: list[str] = []

    def resolve(self, raw_id: Any, path: str, field_name: str) -> Rule:
        rule_id = string(raw_id, path)
        rule = self.catalog.get(rule_id)
        if rule is None:
            hint = difflib.get_close_matches(normalize_id(rule_id), self.catalog.known_ids(), 1)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            raise PolicyError(path, f"unknown rule ID {rule_id!r}{extra}")
        expected = CATEGORY_FIELDS[rule.category]
        if expected != field_name:
            raise PolicyError(path, f"{rule.id!r} is a {rule.category} rule: list it in {expected}")
        if rule.warning and rule.warning not in self.warnings:
            self.warnings.append(rule.warning)
        return rule

    def ids(self, raw: Any, path: str, field_name: str) -> tuple[str, ...]:
        items = list_field(raw, path)
        return tuple(dict.fromkeys(self.resolve(r, f"{path}[{i}]", field_name).id for i, r in enumerate(items)))


def _targets(raw: Any, path: str) -> tuple[str, ...]:
    """Executable paths, matched whole against the one grammar (models.policy.EXECUTABLE_PATTERN):
    they are written unquoted into the profile, so any character with a meaning there (or a
    control character, which would also reach logs and kubectl output) is refused."""
    items = strings(raw, path)
    for i, t in enumerate(items):
        if not t.startswith("/"):
            raise PolicyError(f"{path}[{i}]", f"{t!r} must be an absolute executable path")
        if len(t) > 4096:
            raise PolicyError(f"{path}[{i}]", "is longer than 4096 characters")
        if not _TARGET.fullmatch(t):
            bad = next((ch for ch in t if ch != "/" and not _TARGET.fullmatch("/" + ch)), None)
            why = f"contains {bad!r}" if bad is not None else "ends in '/'"
            raise PolicyError(
                f"{path}[{i}]",
                f"{t!r} is not a plain executable path: it {why}; allowed are letters, digits and "
                ". _ + - / * ? [ ] : ~ % = (no quotes, commas, braces, #, whitespace or control characters)",
            )
    return tuple(dict.fromkeys(items))


def _enhance_protect(raw: Any, checker: _RuleChecker) -> EnhanceProtect:
    path = "spec.policy.enhanceProtect"
    ep = mapping(raw, path)
    for other in ("bpfRawRules", "syscallRawRules", "networkProxyRawRules"):
        if ep.get(other):
            raise PolicyError(f"{path}.{other}", "belongs to another enforcer; varmor is AppArmor")
    only(
        ep,
        (
            "hardeningRules",
            "attackProtectionRules",
            "vulMitigationRules",
            "appArmorRawRules",
            "privileged",
            "auditViolations",
            "allowViolations",
            "bpfRawRules",
            "syscallRawRules",
            "networkProxyRawRules",
        ),
        path,
    )
    hardening = checker.ids(ep.get("hardeningRules"), f"{path}.hardeningRules", "hardeningRules")
    groups: list[RuleGroup] = []
    field_name = "attackProtectionRules"
    for i, raw_group in enumerate(list_field(ep.get(field_name), f"{path}.{field_name}")):
        gpath = f"{path}.{field_name}[{i}]"
        group = mapping(raw_group, gpath)
        only(group, ("rules", "targets"), gpath)
        if not group.get("rules"):
            raise PolicyError(f"{gpath}.rules", "is required and must not be empty")
        ids = checker.ids(group["rules"], f"{gpath}.rules", field_name)
        groups.append(RuleGroup(ids, _targets(group.get("targets"), f"{gpath}.targets")))
    vul = checker.ids(ep.get("vulMitigationRules"), f"{path}.vulMitigationRules", "vulMitigationRules")
    raws: list[RawRuleGroup] = []
    for i, raw_group in enumerate(list_field(ep.get("appArmorRawRules"), f"{path}.appArmorRawRules")):
        gpath = f"{path}.appArmorRawRules[{i}]"
        group = mapping(raw_group, gpath)
        only(group, ("rules", "targets"), gpath)
        text = string(group.get("rules"), f"{gpath}.rules")
        try:
            checked = check_raw_rules(text)
        except RawRuleError as exc:
            raise PolicyError(f"{gpath}.rules", str(exc)) from None
        checker.warnings += [f"{gpath}.rules: {w}" for w in checked.warnings]
        raws.append(RawRuleGroup(checked.rules, _targets(group.get("targets"), f"{gpath}.targets")))
    audit = bool_field(ep.get("auditViolations"), f"{path}.auditViolations")
    allow = bool_field(ep.get("allowViolations"), f"{path}.allowViolations")
    if allow and not audit:
        checker.warnings.append(
            "allowViolations without auditViolations: the profile is loaded in complain mode, "
            "so nothing is blocked and violations are logged as ALLOWED"
        )
    if raws and allow:
        checker.warnings.append("appArmorRawRules are used as written: allowViolations does not relax their deny rules")
    return EnhanceProtect(
        hardening_rules=hardening,
        attack_protection_rules=tuple(groups),
        vul_mitigation_rules=vul,
        raw_rules=tuple(raws),
        privileged=bool_field(ep.get("privileged"), f"{path}.privileged"),
        audit_violations=audit,
        allow_violations=allow,
    )


def _enforcer(raw: Any) -> str:
    path = "spec.policy.enforcer"
    value = string(raw, path)
    if value == "AppArmor":
        return value
    others = [e for e in _OTHER_ENFORCERS if e.lower() in value.lower()]
    if others:
        raise PolicyError(path, f"{value!r} uses {', '.join(others)}; varmor implements only 'AppArmor'")
    raise PolicyError(path, f"{value!r} is not supported; varmor implements only 'AppArmor'")


# ---------------------------------------------------------------------------- entry


def parse_policy(
    doc: Mapping[str, Any],
    *,
    catalog: Catalog | None = None,
    install_namespace: str = DEFAULT_INSTALL_NAMESPACE,
) -> Policy:
    """Validate a VarmorPolicy or VarmorClusterPolicy document (a dict as read from YAML
    or the API server). Raises PolicyError naming the first invalid field."""
    if not isinstance(doc, Mapping):
        raise PolicyError("<document>", "must be an object")
    if doc.get("apiVersion") != api.API_VERSION:
        raise PolicyError("apiVersion", f"must be {api.API_VERSION!r}")
    kind = _KINDS.get(doc.get("kind", ""))
    if kind is None:
        raise PolicyError("kind", f"must be one of {', '.join(_KINDS)}")
    meta = mapping(doc.get("metadata"), "metadata")
    name = string(meta.get("name"), "metadata.name")
    namespace: str | None = None
    if kind == "VarmorPolicy":
        ns = meta.get("namespace")
        namespace = DEFAULT_NAMESPACE if ns is None else string(ns, "metadata.namespace")
    generation = meta.get("generation")
    if generation is not None and not isinstance(generation, int):
        raise PolicyError("metadata.generation", "must be an integer")
    spec = mapping(doc.get("spec"), "spec")
    only(spec, ("target", "policy", "updateExistingWorkloads"), "spec")
    target = _target(spec.get("target"))
    pol = mapping(spec.get("policy"), "spec.policy")
    enforcer = _enforcer(pol.get("enforcer"))
    mode = pol.get("mode")
    if mode not in MODES:
        raise PolicyError("spec.policy.mode", f"must be one of {', '.join(MODES)}")
    if pol.get("networkProxyConfig") is not None:
        raise PolicyError("spec.policy.networkProxyConfig", "is not supported by varmor")
    only(
        pol,
        (
            "enforcer",
            "mode",
            "enhanceProtect",
            "modelingOptions",
            "defenseInDepth",
            "allowOptOut",
            "networkProxyConfig",
        ),
        "spec.policy",
    )
    checker = _RuleChecker(catalog or load_catalog())
    enhance: EnhanceProtect | None = None
    if mode == "EnhanceProtect":
        if pol.get("enhanceProtect") is None:
            raise PolicyError("spec.policy.enhanceProtect", "is required in EnhanceProtect mode")
        enhance = _enhance_protect(pol["enhanceProtect"], checker)
    elif pol.get("enhanceProtect") is not None:
        _enhance_protect(pol["enhanceProtect"], checker)  # still validated
        checker.warnings.append(f"spec.policy.enhanceProtect is ignored in {mode} mode")
    minutes: int | None = None
    if mode == "BehaviorModeling" or pol.get("modelingOptions") is not None:
        if pol.get("modelingOptions") is None:
            raise PolicyError("spec.policy.modelingOptions", "is required in BehaviorModeling mode")
        minutes = modeling_minutes(pol["modelingOptions"])
        if mode != "BehaviorModeling":
            minutes = None
            checker.warnings.append(f"spec.policy.modelingOptions is ignored in {mode} mode")
    did: DefenseInDepth | None = None
    if mode == "DefenseInDepth" or pol.get("defenseInDepth") is not None:
        if pol.get("defenseInDepth") is None:
            raise PolicyError("spec.policy.defenseInDepth", "is required in DefenseInDepth mode")
        did = defense_in_depth(pol["defenseInDepth"], checker.warnings)
        if mode != "DefenseInDepth":
            did = None
            checker.warnings.append(f"spec.policy.defenseInDepth is ignored in {mode} mode")
    policy = Policy(
        kind=kind,
        name=name,
        namespace=namespace,
        target=target,
        mode=mode,
        enforcer=enforcer,
        enhance_protect=enhance,
        modeling_minutes=minutes,
        defense_in_depth=did,
        update_existing_workloads=bool_field(spec.get("updateExistingWorkloads"), "spec.updateExistingWorkloads"),
        allow_opt_out=bool_field(pol.get("allowOptOut"), "spec.policy.allowOptOut"),
        generation=generation,
        warnings=tuple(dict.fromkeys(checker.warnings)),
    )
    try:
        policy.profile_name(install_namespace)
    except api.ProfileNameError as exc:
        raise PolicyError("metadata.name", str(exc)) from None
    return policy
