"""Policy -> AppArmor profile text. Pure and deterministic: same policy, same bytes.

Qualifiers (EnhanceProtect; they apply to the catalog rules and, as in vArmor, to the
RuntimeDefault base's denies):

| allowViolations | auditViolations | emitted                 | profile mode |
|-----------------|-----------------|-------------------------|--------------|
| false           | false           | `deny`                  | enforce      |
| false           | true            | `audit deny`            | enforce      |
| true            | true            | `audit` (allow + log)   | enforce      |
| true            | false           | `audit deny`            | complain     |

vArmor emits an empty qualifier in the last row, which turns every deny (the base's too)
into a plain allow: the rules silently vanish. varmor never emits an empty qualifier.
Instead the profile text keeps its deny rules and is flagged `complain`, so nothing is
blocked but the profile still says what it would block. The rules are `audit deny`, not
plain `deny`, because a quiet (plain) deny is still enforced in complain mode by the
kernels' generic permission check (aa_check_perms in 6.1 returns the error for quieted
denials before looking at complain mode); an audited deny is turned into an ALLOWED record.
So "allow without audit" still logs: AppArmor has no way to both keep a rule and say
nothing about it. The user is told so in the warnings.

Exec rules (catalog `exec: true`) get `rx` under deny and `rix` when allowed, since an
allowed exec needs a mode and `ix` is the only one that stays in this profile.

Targets: each executable named in `targets` (from attackProtectionRules, appArmorRawRules,
or a catalog rule's built-in targets such as the ingress-nginx mitigation) gets the rules
meant for it; targets with identical rule sets share one child profile, entered with
`<target> cx -> child_<hash>`. Unlike vArmor, a child also carries every global rule of its
parent (otherwise exec'ing a target would shed the container-wide hardening), and a child
that executes another group's target moves into that group's child (`px -> parent//child`).
Child names hash their sorted targets, so adding an unrelated target does not rename them
(a live replace keeps processes in the right child).

Raw rules are inserted as validated (varmor.profile.raw), one per line, untouched by the
qualifier switches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from varmor.profile import deny_default, templates
from varmor.profile.deny_default import BehaviorInputs
from varmor.profile.node_local import NODE_LOCAL_INCLUDE
from varmor.rules import CATEGORIES, Catalog, Rule, load_catalog

if TYPE_CHECKING:
    from varmor.policy import EnhanceProtect, Policy

ProfileMode = Literal["enforce", "complain"]
HEADER = "## == Managed by varmor: generated, do not edit == ##"
BASE_FLAGS = ("attach_disconnected", "mediate_deleted")
SECTION_TITLES = {
    "hardening": "Hardening rules",
    "attack-protection": "Attack protection rules",
    "vul-mitigation": "Vulnerability mitigation rules",
}
INDENT = "  "


@dataclass(frozen=True)
class BuiltProfile:
    name: str
    text: str
    mode: ProfileMode
    warnings: tuple[str, ...]
    sha256: str


@dataclass(frozen=True)
class Disposition:
    """How a policy's rules are written: qualifier, exec permissions, profile mode."""

    qualifier: str
    exec_perms: str
    complain: bool

    @property
    def allowed(self) -> bool:
        return "deny" not in self.qualifier.split()


def disposition(audit_violations: bool, allow_violations: bool) -> Disposition:
    """The table in the module docstring."""
    if not allow_violations:
        return Disposition("audit deny" if audit_violations else "deny", "rx", False)
    if audit_violations:
        return Disposition("audit", "rix", False)
    return Disposition("audit deny", "rx", True)


ENFORCE = disposition(False, False)


@dataclass
class _RuleSet:
    """Catalog rules and raw rules for one scope (the container, or one target group)."""

    rules: dict[str, Rule] = field(default_factory=dict)
    raw: dict[str, None] = field(default_factory=dict)

    def key(self, catalog: Catalog) -> tuple[tuple[str, ...], tuple[str, ...]]:
        ids = sorted(self.rules, key=lambda i: catalog.order(self.rules[i]))
        return tuple(ids), tuple(self.raw)


@dataclass(frozen=True)
class _Child:
    name: str
    targets: tuple[str, ...]
    rules: tuple[Rule, ...]
    raw: tuple[str, ...]


UNIX_DENY_LINES = ("network", "network unix")


def denies_unix(rules: Iterable[Rule], disp: Disposition) -> bool:
    """Whether these rules deny UNIX sockets, which needs the by-omission form
    (templates.network_allows)."""
    return not disp.allowed and any(line in UNIX_DENY_LINES for rule in rules for line in rule.apparmor)


def _rule_lines(rule: Rule, disp: Disposition) -> list[str]:
    if not rule.enforceable:
        return [f"# {rule.id}: not enforced by AppArmor (see warnings)"]
    lines = [f"# {rule.id}"]
    for line in rule.apparmor:
        if not disp.allowed and line in UNIX_DENY_LINES:
            lines.append("# network unix: denied by not allowing it (see base)")
            if line == "network":
                lines += [f"{disp.qualifier} network {f}," for f in templates.NETWORK_FAMILIES]
            continue
        suffix = f" {disp.exec_perms}" if rule.exec else ""
        lines.append(f"{disp.qualifier} {line}{suffix},")
    return lines


def _sections(rules: Iterable[Rule], raw: Sequence[str], disp: Disposition, raw_title: str) -> list[str]:
    """Catalog rules grouped by category (catalog order), then raw rules."""
    rules = list(rules)
    out: list[str] = []
    for category in CATEGORIES:
        chosen = [r for r in rules if r.category == category]
        if chosen:
            out += ["", f"# {SECTION_TITLES[category]}"]
            for rule in chosen:
                out += _rule_lines(rule, disp)
    if raw:
        out += ["", f"# {raw_title}"]
        out += [f"{rule}," for rule in raw]
    return out


class _Plan:
    """Splits an EnhanceProtect spec into container-wide rules and per-target groups."""

    def __init__(self, ep: EnhanceProtect, catalog: Catalog) -> None:
        self.catalog = catalog
        self.global_rules = _RuleSet()
        self.per_target: dict[str, _RuleSet] = {}
        for rule_id in ep.hardening_rules:
            self._add(catalog[rule_id], ())
        for group in ep.attack_protection_rules:
            for rule_id in group.rules:
                self._add(catalog[rule_id], group.targets)
        for rule_id in ep.vul_mitigation_rules:
            self._add(catalog[rule_id], ())
        for raw_group in ep.raw_rules:
            scopes = [self._scope(t) for t in raw_group.targets] or [self.global_rules]
            for scope in scopes:
                scope.raw.update(dict.fromkeys(raw_group.rules))

    def _scope(self, target: str) -> _RuleSet:
        return self.per_target.setdefault(target, _RuleSet())

    def _add(self, rule: Rule, targets: Sequence[str]) -> None:
        targets = targets or rule.targets
        for scope in [self._scope(t) for t in targets] or [self.global_rules]:
            scope.rules[rule.id] = rule

    def sorted_rules(self, rules: dict[str, Rule]) -> list[Rule]:
        return sorted(rules.values(), key=self.catalog.order)

    def children(self) -> list[_Child]:
        # A target needs a child only for rules the container as a whole lacks.
        groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[str]] = {}
        for target, scope in self.per_target.items():
            own = _RuleSet(
                {k: r for k, r in scope.rules.items() if k not in self.global_rules.rules},
                {k: None for k in scope.raw if k not in self.global_rules.raw},
            )
            if own.rules or own.raw:
                groups.setdefault(own.key(self.catalog), []).append(target)
        children: list[_Child] = []
        for (ids, raw), targets in groups.items():
            targets_sorted = tuple(sorted(targets))
            digest = hashlib.sha256("\n".join(targets_sorted).encode()).hexdigest()[:8]
            rules = tuple(self.catalog[i] for i in ids)
            children.append(_Child(f"child_{digest}", targets_sorted, rules, raw))
        children.sort(key=lambda c: c.targets)
        if len({c.name for c in children}) != len(children):  # pragma: no cover - 2^-32
            raise ValueError("child profile name collision; rename a target")
        return children


def _flags(disp: Disposition) -> str:
    flags = BASE_FLAGS + (("complain",) if disp.complain else ())
    return f"flags=({','.join(flags)})"


def _base(policy: Policy, disp: Disposition, peers: Sequence[str], deny_unix: bool) -> list[str]:
    """The include of abstractions/base and the mode's body. When UNIX sockets are denied,
    abstractions/base is replaced by its non-unix rules (its `unix (create)` would allow
    them again) and `network,` by the other families."""
    if deny_unix:
        head = [
            "# abstractions/base without its unix rules: UNIX sockets are denied by omission",
            *templates.BASE_WITHOUT_UNIX,
        ]
    else:
        head = ["#include <abstractions/base>"]
    ep = policy.enhance_protect
    if policy.mode == "AlwaysAllow" or (ep is not None and ep.privileged):
        return [*head, "", "# Base: AlwaysAllow", *templates.always_allow_body(deny_unix)]
    return [
        *head,
        "",
        "# Base: RuntimeDefault (containerd)",
        *templates.runtime_default_body(disp.qualifier, disp.allowed, peers, deny_unix),
    ]


def _indent(lines: Iterable[str], depth: int) -> list[str]:
    return [f"{INDENT * depth}{line}" if line else "" for line in lines]


def _behavior_mode(policy: Policy, profile_name: str, inputs: BehaviorInputs) -> tuple[str, ProfileMode]:
    lines, complain = deny_default.body(policy, inputs)
    disp = Disposition("deny", "rx", complain)
    text = [HEADER, "abi <abi/3.0>,", "#include <tunables/global>", "", f"profile {profile_name} {_flags(disp)} {{"]
    return "\n".join([*text, *_indent(lines, 1), "}"]) + "\n", ("complain" if complain else "enforce")


def render(
    policy: Policy, profile_name: str, catalog: Catalog, inputs: BehaviorInputs | None = None
) -> tuple[str, ProfileMode]:
    if policy.mode in ("BehaviorModeling", "DefenseInDepth"):
        return _behavior_mode(policy, profile_name, inputs or BehaviorInputs())
    ep = policy.enhance_protect if policy.mode == "EnhanceProtect" else None
    disp = disposition(ep.audit_violations, ep.allow_violations) if ep else ENFORCE
    plan = _Plan(ep, catalog) if ep else None
    children = plan.children() if plan else []
    peers = [profile_name] + ([f"{profile_name}//*"] if children else [])

    global_rules: list[Rule] = plan.sorted_rules(plan.global_rules.rules) if plan else []
    global_raw = tuple(plan.global_rules.raw) if plan else ()
    body = _base(policy, disp, peers, denies_unix(global_rules, disp))
    body += _sections(global_rules, global_raw, disp, "Custom rules")
    if children:
        body += ["", "# Targets: executables with their own rules (child profiles)"]
        for child in children:
            body += [f"{t} cx -> {child.name}," for t in child.targets]
    for child in children:
        inner = _base(policy, disp, peers, denies_unix([*global_rules, *child.rules], disp))
        inner += _sections(global_rules, global_raw, disp, "Custom rules")
        inner += ["", f"# Rules for {', '.join(child.targets)}"]
        inner += _sections(child.rules, child.raw, disp, "Custom rules for these targets")
        inner += ["", "# Stay here on re-exec; other targets move to their own child"]
        inner += [f"{t} rix," for t in child.targets]
        for other in children:
            if other is not child:
                inner += [f"{t} px -> {profile_name}//{other.name}," for t in other.targets]
        body += ["", f"profile {child.name} {_flags(disp)} {{", *_indent(inner, 1), "}"]

    uses_disks = any(r.uses_disk_devices for r in global_rules) or any(
        r.uses_disk_devices for c in children for r in c.rules
    )
    head = [HEADER, "abi <abi/3.0>,", "#include <tunables/global>"]
    if uses_disks:
        head.append(f"#include <{NODE_LOCAL_INCLUDE}>")
    lines = [*head, "", f"profile {profile_name} {_flags(disp)} {{", *_indent(body, 1), "}"]
    return "\n".join(lines) + "\n", ("complain" if disp.complain else "enforce")


def _warnings(policy: Policy, catalog: Catalog) -> tuple[str, ...]:
    """Policy warnings plus any rule warning (kept even if the policy was built by hand)."""
    found = list(policy.warnings)
    ep = policy.enhance_protect
    if ep is not None and policy.mode == "EnhanceProtect":
        for rule_id in ep.rule_ids():
            warning = catalog[rule_id].warning
            if warning:
                found.append(warning)
    return tuple(dict.fromkeys(found))


def build_profile(
    policy: Policy, profile_name: str, catalog: Catalog | None = None, inputs: BehaviorInputs | None = None
) -> BuiltProfile:
    """The AppArmor profile for `policy`, named `profile_name` (see Policy.profile_name);
    `inputs` are the behaviour modes' (deny_default.BehaviorInputs)."""
    catalog = catalog or load_catalog()
    text, mode = render(policy, profile_name, catalog, inputs)
    return BuiltProfile(
        name=profile_name,
        text=text,
        mode=mode,
        warnings=_warnings(policy, catalog),
        sha256=hashlib.sha256(text.encode()).hexdigest(),
    )
