"""The built-in rule catalog: data in `varmor/rules/data/*.yaml`, typed and checked here.

Rules are data, not code, so the catalog can be listed, documented, turned into the CRD's
list of known IDs and probed by the kernel tests without reading the builder. The YAML
ships inside the package (importlib.resources), so an installed varmor finds it too; the
top-level `rules/` directory holds symlinks to it for people browsing the repository.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

import yaml

Category = Literal["hardening", "attack-protection", "vul-mitigation"]
CATEGORIES: tuple[Category, ...] = ("hardening", "attack-protection", "vul-mitigation")
DATA_FILES = (
    "hardening.yaml",
    "capabilities.yaml",
    "attack-protection.yaml",
    "vul-mitigation.yaml",
    "unenforceable.yaml",
)
DISK_DEVICES_VAR = "@{VARMOR_DISK_DEVICES}"

_ID = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
# AppArmor rule text a catalog line may hold: no qualifier, no comma, no block syntax.
_QUALIFIERS = ("deny ", "audit ", "allow ", "owner ")


class CatalogError(ValueError):
    """The rule data is malformed (a bug in varmor's data, caught by the tests)."""


def normalize_id(rule_id: str) -> str:
    """vArmor's ID matching: case-insensitive, `_` means `-`."""
    return rule_id.strip().lower().replace("_", "-")


@dataclass(frozen=True)
class Probe:
    """How the kernel tests prove a rule: `run` must be DENIED under the rule, ALLOWED
    without it (see rules/README.md for the vprobe vocabulary)."""

    run: str
    setup: str | None = None
    audit: str | None = None
    target: str | None = None
    disk_devices: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"run": self.run}
        if self.setup is not None:
            out["setup"] = self.setup
        if self.audit is not None:
            out["audit"] = self.audit
        if self.target is not None:
            out["target"] = self.target
        if self.disk_devices:
            out["disk_devices"] = list(self.disk_devices)
        return out


@dataclass(frozen=True)
class Rule:
    id: str
    category: Category
    title: str
    blocks: str
    may_break: str
    apparmor: tuple[str, ...]
    aliases: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    privileged_only: bool = False
    exec: bool = False
    enforceable: bool = True
    warning: str | None = None
    targets: tuple[str, ...] = ()
    probe: Probe | None = None

    @property
    def uses_disk_devices(self) -> bool:
        return any(DISK_DEVICES_VAR in line for line in self.apparmor)

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of `varmor rules list --json`."""
        return {
            "id": self.id,
            "aliases": list(self.aliases),
            "category": self.category,
            "title": self.title,
            "blocks": self.blocks,
            "may_break": self.may_break,
            "references": list(self.references),
            "privileged_only": self.privileged_only,
            "exec": self.exec,
            "enforceable": self.enforceable,
            "warning": self.warning,
            "targets": list(self.targets),
            "apparmor": list(self.apparmor),
            "probe": self.probe.as_dict() if self.probe else None,
        }


@dataclass(frozen=True)
class Catalog:
    """All rules in file order (the order the builder emits them in), indexed by ID and alias."""

    rules: tuple[Rule, ...]
    _index: Mapping[str, Rule] = field(repr=False, compare=False)
    _order: Mapping[str, int] = field(repr=False, compare=False)

    @classmethod
    def from_rules(cls, rules: tuple[Rule, ...]) -> Catalog:
        index: dict[str, Rule] = {}
        for rule in rules:
            for key in (rule.id, *rule.aliases):
                if key in index:
                    raise CatalogError(f"duplicate rule ID or alias {key!r}")
                index[key] = rule
        order = {rule.id: i for i, rule in enumerate(rules)}
        return cls(rules, index, order)

    def get(self, rule_id: str) -> Rule | None:
        """Look up by ID or alias, vArmor-style (case-insensitive, `_` = `-`)."""
        return self._index.get(normalize_id(rule_id))

    def __getitem__(self, rule_id: str) -> Rule:
        rule = self.get(rule_id)
        if rule is None:
            raise KeyError(rule_id)
        return rule

    def __contains__(self, rule_id: object) -> bool:
        return isinstance(rule_id, str) and self.get(rule_id) is not None

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def order(self, rule: Rule) -> int:
        """Position in the catalog: the builder sorts by it so rule order in a policy
        does not change the profile bytes."""
        return self._order[rule.id]

    def known_ids(self) -> list[str]:
        """Every accepted spelling (IDs and aliases), sorted: the CRD's enum source."""
        return sorted(self._index)


def _str(raw: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    value = raw.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise CatalogError(f"{where}: {key} must be a non-empty string")
    return value.strip()


def _str_list(raw: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise CatalogError(f"{where}: {key} must be a list of non-empty strings")
    return tuple(value)


def _bool(raw: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise CatalogError(f"{where}: {key} must be true or false")
    return value


_RULE_KEYS = {
    "id",
    "aliases",
    "category",
    "title",
    "blocks",
    "may_break",
    "references",
    "privileged_only",
    "exec",
    "enforceable",
    "warning",
    "targets",
    "apparmor",
    "probe",
}
_PROBE_KEYS = {"run", "setup", "audit", "target", "disk_devices"}


def _check_line(line: str, where: str) -> None:
    unparenthesized = re.sub(r"\([^()]*\)|@\{[A-Za-z0-9_]+\}", "", line)
    if any(ch in unparenthesized for ch in ",{}#\n") or line.startswith(_QUALIFIERS):
        raise CatalogError(f"{where}: apparmor line {line!r} must be one rule without qualifier")


def parse_rule(raw: Any, where: str) -> Rule:
    """One YAML mapping to a Rule, checking every field (the data is ours, but typos in
    data are bugs like any other)."""
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: a rule must be a mapping")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise CatalogError(f"{where}: unknown fields {sorted(unknown)}")
    rule_id = _str(raw, "id", where) or ""
    where = f"{where} ({rule_id})"
    aliases = _str_list(raw, "aliases", where)
    for key in (rule_id, *aliases):
        if not _ID.match(key):
            raise CatalogError(f"{where}: {key!r} is not a lowercase dashed ID")
    category = raw.get("category")
    if category not in CATEGORIES:
        raise CatalogError(f"{where}: category must be one of {CATEGORIES}")
    enforceable = _bool(raw, "enforceable", where, True)
    warning = _str(raw, "warning", where, required=False)
    apparmor = _str_list(raw, "apparmor", where)
    for line in apparmor:
        _check_line(line, where)
    targets = _str_list(raw, "targets", where)
    if any(not t.startswith("/") for t in targets):
        raise CatalogError(f"{where}: targets must be absolute paths")
    probe = _parse_probe(raw.get("probe"), where)
    if enforceable and (not apparmor or probe is None):
        raise CatalogError(f"{where}: an enforceable rule needs apparmor lines and a probe")
    if not enforceable and (apparmor or warning is None):
        raise CatalogError(f"{where}: an unenforceable rule has no lines and must warn")
    return Rule(
        id=rule_id,
        category=category,
        title=_str(raw, "title", where) or "",
        blocks=_str(raw, "blocks", where) or "",
        may_break=_str(raw, "may_break", where) or "",
        apparmor=apparmor,
        aliases=aliases,
        references=_str_list(raw, "references", where),
        privileged_only=_bool(raw, "privileged_only", where, False),
        exec=_bool(raw, "exec", where, False),
        enforceable=enforceable,
        warning=warning,
        targets=targets,
        probe=probe,
    )


def _parse_probe(raw: Any, where: str) -> Probe | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - _PROBE_KEYS:
        raise CatalogError(f"{where}: probe must be a mapping with keys {sorted(_PROBE_KEYS)}")
    return Probe(
        run=_str(raw, "run", where) or "",
        setup=_str(raw, "setup", where, required=False),
        audit=_str(raw, "audit", where, required=False),
        target=_str(raw, "target", where, required=False),
        disk_devices=_str_list(raw, "disk_devices", where),
    )


def parse_catalog(documents: Mapping[str, str]) -> Catalog:
    """Build a Catalog from {file name: YAML text}, in the given order."""
    rules: list[Rule] = []
    for name, text in documents.items():
        data = yaml.safe_load(text)
        if not isinstance(data, list):
            raise CatalogError(f"{name}: expected a list of rules")
        rules.extend(parse_rule(raw, f"{name}[{i}]") for i, raw in enumerate(data))
    return Catalog.from_rules(tuple(rules))


@lru_cache(maxsize=1)
def load_catalog() -> Catalog:
    """The packaged catalog, parsed once per process."""
    base = resources.files("varmor.rules").joinpath("data")
    return parse_catalog({name: base.joinpath(name).read_text("utf-8") for name in DATA_FILES})
