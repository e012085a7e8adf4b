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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from varmor import api
from varmor.admission.selector import LabelSelector, SelectorError
from varmor.models.policy import DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN, EXECUTABLE_PATTERN
from varmor.profile.raw import RawRuleError, check_raw_rules
from varmor.rules import Catalog, Rule, load_catalog, normalize_id

PolicyKind = Literal["VarmorPolicy", "VarmorClusterPolicy"]
Mode = Literal["AlwaysAllow", "RuntimeDefault", "EnhanceProtect"]
MODES: tuple[Mode, ...] = ("AlwaysAllow", "RuntimeDefault", "EnhanceProtect")
DEFAULT_INSTALL_NAMESPACE = "varmor"
DEFAULT_NAMESPACE = "default"

_KINDS: dict[str, PolicyKind] = {
    api.VARMOR_POLICY.kind: "VarmorPolicy",
    api.VARMOR_CLUSTER_POLICY.kind: "VarmorClusterPolicy",
}
_LATER_MODES = {"BehaviorModeling", "DefenseInDepth"}
_OTHER_ENFORCERS = ("BPF", "Seccomp", "NetworkProxy")
# A target is an absolute executable path; AppArmor globs are fine, block syntax is not.
# Always `fullmatch`: `$` alone would let a trailing newline through.
_TARGET = re.compile(EXECUTABLE_PATTERN)
_CONTAINER = re.compile(DNS_LABEL_PATTERN)
_WORKLOAD_NAME = re.compile(DNS_SUBDOMAIN_PATTERN)
_LABEL_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
# Where each category's IDs go in spec.policy.enhanceProtect.
_CATEGORY_FIELD = {
    "hardening": "hardeningRules",
    "attack-protection": "attackProtectionRules",
    "vul-mitigation": "vulMitigationRules",
}


class PolicyError(ValueError):
    """Invalid policy; the message starts with the offending field's path."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.reason = message


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


# ---------------------------------------------------------------------------- helpers


def _mapping(value: Any, path: str, *, required: bool = True) -> dict[str, Any]:
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise PolicyError(path, "must be an object" if value is not None else "is required")
    return value


def _only(obj: Mapping[str, Any], allowed: Sequence[str], path: str, why: str = "") -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        raise PolicyError(f"{path}.{unknown[0]}", why or "unknown field")


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise PolicyError(path, "must be a non-empty string")
    return value


def _bool(value: Any, path: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise PolicyError(path, "must be true or false")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise PolicyError(path, "must be a list")
    return value


def _strings(value: Any, path: str) -> list[str]:
    items = _list(value, path)
    for i, item in enumerate(items):
        _string(item, f"{path}[{i}]")
    return items


# ---------------------------------------------------------------------------- target


def _selector(raw: Any, path: str) -> LabelSelector:
    """A target selector: well-formed, and not empty (Kubernetes reads an empty selector
    as "every object", which a policy must say explicitly, never by omission)."""
    try:
        selector = LabelSelector.parse(_mapping(raw, path))
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
    tgt = _mapping(raw, path)
    _only(tgt, ("kind", "name", "selector", "containers"), path)
    kind = tgt.get("kind")
    if kind not in api.TARGET_KINDS:
        raise PolicyError(f"{path}.kind", f"must be one of {', '.join(api.TARGET_KINDS)}")
    has_name = tgt.get("name") is not None
    has_selector = tgt.get("selector") is not None
    if has_name and has_selector:
        raise PolicyError(path, "name and selector are mutually exclusive")
    if not has_name and not has_selector:
        raise PolicyError(path, "one of name or selector is required")
    name = _string(tgt["name"], f"{path}.name") if has_name else None
    if name is not None and (len(name) > 253 or not _WORKLOAD_NAME.fullmatch(name)):
        raise PolicyError(f"{path}.name", f"{name!r} is not a workload name (a DNS-1123 subdomain)")
    selector = _selector(tgt["selector"], f"{path}.selector") if has_selector else None
    containers = _strings(tgt.get("containers"), f"{path}.containers")
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
        rule_id = _string(raw_id, path)
        rule = self.catalog.get(rule_id)
        if rule is None:
            hint = difflib.get_close_matches(normalize_id(rule_id), self.catalog.known_ids(), 1)
            extra = f"; did you mean {hint[0]!r}?" if hint else ""
            raise PolicyError(path, f"unknown rule ID {rule_id!r}{extra}")
        expected = _CATEGORY_FIELD[rule.category]
        if expected != field_name:
            raise PolicyError(path, f"{rule.id!r} is a {rule.category} rule: list it in {expected}")
        if rule.warning and rule.warning not in self.warnings:
            self.warnings.append(rule.warning)
        return rule

    def ids(self, raw: Any, path: str, field_name: str) -> tuple[str, ...]:
        items = _list(raw, path)
        return tuple(dict.fromkeys(self.resolve(r, f"{path}[{i}]", field_name).id for i, r in enumerate(items)))


def _targets(raw: Any, path: str) -> tuple[str, ...]:
    """Executable paths, matched whole against the one grammar (models.policy.EXECUTABLE_PATTERN):
    they are written unquoted into the profile, so any character with a meaning there (or a
    control character, which would also reach logs and kubectl output) is refused."""
    items = _strings(raw, path)
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
    ep = _mapping(raw, path)
    for other in ("bpfRawRules", "syscallRawRules", "networkProxyRawRules"):
        if ep.get(other):
            raise PolicyError(f"{path}.{other}", "belongs to another enforcer; varmor is AppArmor")
    _only(
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
    for i, raw_group in enumerate(_list(ep.get(field_name), f"{path}.{field_name}")):
        gpath = f"{path}.{field_name}[{i}]"
        group = _mapping(raw_group, gpath)
        _only(group, ("rules", "targets"), gpath)
        if not group.get("rules"):
            raise PolicyError(f"{gpath}.rules", "is required and must not be empty")
        ids = checker.ids(group["rules"], f"{gpath}.rules", field_name)
        groups.append(RuleGroup(ids, _targets(group.get("targets"), f"{gpath}.targets")))
    vul = checker.ids(ep.get("vulMitigationRules"), f"{path}.vulMitigationRules", "vulMitigationRules")
    raws: list[RawRuleGroup] = []
    for i, raw_group in enumerate(_list(ep.get("appArmorRawRules"), f"{path}.appArmorRawRules")):
        gpath = f"{path}.appArmorRawRules[{i}]"
        group = _mapping(raw_group, gpath)
        _only(group, ("rules", "targets"), gpath)
        text = _string(group.get("rules"), f"{gpath}.rules")
        try:
            checked = check_raw_rules(text)
        except RawRuleError as exc:
            raise PolicyError(f"{gpath}.rules", str(exc)) from None
        checker.warnings += [f"{gpath}.rules: {w}" for w in checked.warnings]
        raws.append(RawRuleGroup(checked.rules, _targets(group.get("targets"), f"{gpath}.targets")))
    audit = _bool(ep.get("auditViolations"), f"{path}.auditViolations")
    allow = _bool(ep.get("allowViolations"), f"{path}.allowViolations")
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
        privileged=_bool(ep.get("privileged"), f"{path}.privileged"),
        audit_violations=audit,
        allow_violations=allow,
    )


def _enforcer(raw: Any) -> str:
    path = "spec.policy.enforcer"
    value = _string(raw, path)
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
    meta = _mapping(doc.get("metadata"), "metadata")
    name = _string(meta.get("name"), "metadata.name")
    namespace: str | None = None
    if kind == "VarmorPolicy":
        ns = meta.get("namespace")
        namespace = DEFAULT_NAMESPACE if ns is None else _string(ns, "metadata.namespace")
    generation = meta.get("generation")
    if generation is not None and not isinstance(generation, int):
        raise PolicyError("metadata.generation", "must be an integer")
    spec = _mapping(doc.get("spec"), "spec")
    _only(spec, ("target", "policy", "updateExistingWorkloads"), "spec")
    target = _target(spec.get("target"))
    pol = _mapping(spec.get("policy"), "spec.policy")
    enforcer = _enforcer(pol.get("enforcer"))
    mode = pol.get("mode")
    if mode in _LATER_MODES:
        raise PolicyError("spec.policy.mode", f"{mode} is not supported yet")
    if mode not in MODES:
        raise PolicyError("spec.policy.mode", f"must be one of {', '.join(MODES)}")
    unsupported = ("modelingOptions", "defenseInDepth", "networkProxyConfig")
    for key in unsupported:
        if pol.get(key) is not None:
            raise PolicyError(f"spec.policy.{key}", "is not supported by varmor")
    _only(pol, ("enforcer", "mode", "enhanceProtect", "allowOptOut", *unsupported), "spec.policy")
    checker = _RuleChecker(catalog or load_catalog())
    enhance: EnhanceProtect | None = None
    if mode == "EnhanceProtect":
        if pol.get("enhanceProtect") is None:
            raise PolicyError("spec.policy.enhanceProtect", "is required in EnhanceProtect mode")
        enhance = _enhance_protect(pol["enhanceProtect"], checker)
    elif pol.get("enhanceProtect") is not None:
        _enhance_protect(pol["enhanceProtect"], checker)  # still validated
        checker.warnings.append(f"spec.policy.enhanceProtect is ignored in {mode} mode")
    policy = Policy(
        kind=kind,
        name=name,
        namespace=namespace,
        target=target,
        mode=mode,
        enforcer=enforcer,
        enhance_protect=enhance,
        update_existing_workloads=_bool(spec.get("updateExistingWorkloads"), "spec.updateExistingWorkloads"),
        allow_opt_out=_bool(pol.get("allowOptOut"), "spec.policy.allowOptOut"),
        generation=generation,
        warnings=tuple(dict.fromkeys(checker.warnings)),
    )
    try:
        policy.profile_name(install_namespace)
    except api.ProfileNameError as exc:
        raise PolicyError("metadata.name", str(exc)) from None
    return policy
