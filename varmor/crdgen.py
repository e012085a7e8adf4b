"""CustomResourceDefinitions for varmor's four kinds, generated from code.

Pure: `crds()` returns plain dicts. `varmor crds --out chart/crds` writes them; a unit test
keeps the checked-in YAML equal to this output, so the schema, the rule catalog and the
code cannot drift apart.

Validation lives in the schema wherever the API server can check it, so bad policies are
rejected even when varmor is down (vArmor's CRDs have no enums, no defaults and no CEL):

* enums and defaults for every closed set and every boolean switch;
* `target`: exactly one of `name` / `selector` (CEL), immutable after creation
  (`self == oldSelf`);
* rule IDs must be known to the catalog *for their category*. vArmor matches IDs
  case-insensitively with `_` meaning `-`, so the CEL rule normalises the same way
  (`lowerAscii()` then `replace('_', '-')`) and compares against the catalog's
  normalised IDs and aliases. Input is not rewritten: the stored object keeps the
  user's spelling, and the builder normalises again. A known ID placed in the wrong
  list is rejected, because vArmor would silently ignore it there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from varmor import api

JSON = dict[str, Any]

MAX_RULE_ID = 64
MAX_RULES = 256
MAX_TARGETS = 64
MAX_PATH = 4096
CATEGORY_FIELDS = {
    "hardening": "hardeningRules",
    "attack-protection": "attackProtectionRules",
    "vul-mitigation": "vulMitigationRules",
}


def _catalog_ids() -> dict[str, list[str]]:
    """Accepted spellings per category: IDs plus aliases, normalised and sorted."""
    from varmor.rules import load_catalog

    out: dict[str, list[str]] = {c: [] for c in CATEGORY_FIELDS}
    for rule in load_catalog():
        out[rule.category].extend((rule.id, *rule.aliases))
    return {c: sorted(set(ids)) for c, ids in out.items()}


# -- schema helpers ----------------------------------------------------------------
def _str(description: str, **extra: Any) -> JSON:
    return {"type": "string", "description": description, **extra}


def _bool(description: str, default: bool | None = None) -> JSON:
    out: JSON = {"type": "boolean", "description": description}
    if default is not None:
        out["default"] = default
    return out


def _int(description: str, fmt: str = "int32") -> JSON:
    return {"type": "integer", "format": fmt, "minimum": 0, "description": description}


def _obj(description: str, properties: JSON, required: list[str] | None = None, extra: JSON | None = None) -> JSON:
    out: JSON = {"type": "object", "description": description, "properties": properties}
    if required:
        out["required"] = required
    out.update(extra or {})
    return out


def _list(description: str, items: JSON, max_items: int, **extra: Any) -> JSON:
    return {"type": "array", "description": description, "items": items, "maxItems": max_items, **extra}


def _rule_id_item(category: str, ids: list[str]) -> JSON:
    literal = "[" + ", ".join(f"'{i}'" for i in ids) + "]"
    field = CATEGORY_FIELDS[category]
    return _str(
        f"A built-in {category} rule ID (case-insensitive; `_` may stand for `-`).",
        maxLength=MAX_RULE_ID,
        **{
            "x-kubernetes-validations": [
                {
                    "rule": f"self.lowerAscii().replace('_', '-') in {literal}",
                    "messageExpression": (
                        f"'unknown {category} rule ID \"' + self + '\": {field} accepts only built-in "
                        f"{category} rules (see `varmor rules list`)'"
                    ),
                }
            ]
        },
    )


def _paths(description: str) -> JSON:
    return _list(description, _str("An absolute executable path.", maxLength=MAX_PATH, pattern="^/"), MAX_TARGETS)


def label_selector_schema() -> JSON:
    expr = _obj(
        "A label selector requirement.",
        {
            "key": _str("The label key."),
            "operator": _str("How the key relates to the values.", enum=["In", "NotIn", "Exists", "DoesNotExist"]),
            "values": _list("Values for In and NotIn; empty for Exists and DoesNotExist.", _str("A value."), 256),
        },
        ["key", "operator"],
    )
    return _obj(
        "Selects workloads by the workload object's own labels (not its pod template's).",
        {
            "matchLabels": {
                "type": "object",
                "description": "Labels the workload must carry, all of them.",
                "additionalProperties": {"type": "string"},
            },
            "matchExpressions": _list("Requirements the workload's labels must meet, all of them.", expr, 64),
        },
        extra={"x-kubernetes-map-type": "atomic"},
    )


def target_schema(*, policy: bool) -> JSON:
    schema = _obj(
        "The workloads the policy protects.",
        {
            "kind": _str("The kind of workload.", enum=list(api.TARGET_KINDS)),
            "name": _str(
                "The workload's name (in the policy's namespace; any namespace for a cluster policy).",
                maxLength=253,
                minLength=1,
            ),
            "selector": label_selector_schema(),
            "containers": _list(
                "Container names to confine; empty means every regular container (never init or ephemeral).",
                _str("A container name.", maxLength=63),
                64,
            ),
        },
        ["kind"],
    )
    if policy:
        schema["x-kubernetes-validations"] = [
            {
                "rule": "has(self.name) != has(self.selector)",
                "message": "exactly one of target.name and target.selector must be set",
            },
            {"rule": "self == oldSelf", "message": "target is immutable: create a new policy instead"},
        ]
    return schema


def enhance_protect_schema(ids: dict[str, list[str]]) -> JSON:
    return _obj(
        "Rules added to the base profile in EnhanceProtect mode.",
        {
            "hardeningRules": _list(
                "Built-in hardening rules (privileged-container escapes, capabilities, exploit vectors).",
                _rule_id_item("hardening", ids["hardening"]),
                MAX_RULES,
            ),
            "attackProtectionRules": _list(
                "Built-in attack protection rules, optionally only for some executables.",
                _obj(
                    "A set of attack protection rules and the executables they apply to.",
                    {
                        "rules": _list(
                            "Built-in attack protection rule IDs.",
                            _rule_id_item("attack-protection", ids["attack-protection"]),
                            MAX_RULES,
                            minItems=1,
                        ),
                        "targets": _paths(
                            "Executables (absolute paths) the rules apply to, with their descendants; "
                            "empty means the whole container."
                        ),
                    },
                    ["rules"],
                ),
                MAX_TARGETS,
            ),
            "vulMitigationRules": _list(
                "Built-in vulnerability mitigation rules.",
                _rule_id_item("vul-mitigation", ids["vul-mitigation"]),
                MAX_RULES,
            ),
            "appArmorRawRules": _list(
                "Raw AppArmor rules. Each is one rule ending in ','; no blocks, includes or profile changes.",
                _obj(
                    "Raw AppArmor rules and the executables they apply to.",
                    {
                        "rules": _str("AppArmor rules, one per line, each ending in ','.", minLength=1),
                        "targets": _paths("Executables (absolute paths) the rules apply to; empty: all."),
                    },
                    ["rules"],
                ),
                MAX_TARGETS,
            ),
            "privileged": _bool(
                "Build on the AlwaysAllow base (for privileged containers) instead of RuntimeDefault.", False
            ),
            "auditViolations": _bool("Log violations of the rules to the kernel audit log.", False),
            "allowViolations": _bool(
                "Allow violations instead of blocking them (observation mode; with auditViolations, logs them).",
                False,
            ),
        },
    )


def policy_spec_schema(ids: dict[str, list[str]]) -> JSON:
    return _obj(
        "What to protect and how.",
        {
            "target": target_schema(policy=True),
            "policy": _obj(
                "How to confine the target.",
                {
                    "enforcer": _str(
                        "The confinement mechanism. varmor implements AppArmor only; other vArmor enforcers are "
                        "rejected rather than silently ignored.",
                        enum=["AppArmor"],
                    ),
                    "mode": _str(
                        "AlwaysAllow: an allow-all placeholder. RuntimeDefault: the container runtime's default "
                        "profile. EnhanceProtect: a base profile plus the chosen rules.",
                        enum=["AlwaysAllow", "RuntimeDefault", "EnhanceProtect"],
                    ),
                    "enhanceProtect": enhance_protect_schema(ids),
                },
                ["enforcer", "mode"],
                extra={
                    "x-kubernetes-validations": [
                        {
                            "rule": "self.mode != 'EnhanceProtect' || has(self.enhanceProtect)",
                            "message": "policy.enhanceProtect is required when mode is EnhanceProtect",
                        }
                    ]
                },
            ),
            "updateExistingWorkloads": _bool(
                "Roll matching Deployments, StatefulSets and DaemonSets when the policy is created or deleted, "
                "so running workloads gain (or lose) the profile. Bare Pods are reported, never killed.",
                False,
            ),
        },
        ["target", "policy"],
    )


def condition_schema(*, node: bool) -> JSON:
    props: JSON = {
        "type": _str("The condition type."),
        "status": _str("True, False or Unknown.", enum=["True", "False", "Unknown"]),
        "reason": _str("A CamelCase word naming the cause."),
        "message": _str("What happened, and what to do about it."),
        "lastTransitionTime": _str("When the status last changed.", format="date-time"),
    }
    if node:
        props["nodeName"] = _str("The node this condition is about.")
    else:
        props["observedGeneration"] = _int("The policy generation the condition was computed for.", "int64")
    return _obj("A condition.", props, ["type", "status"])


def policy_status_schema() -> JSON:
    return _obj(
        "Written by the varmor leader only.",
        {
            "profileName": _str(
                "The AppArmor profile attached to the target; set once the leader accepted the policy."
            ),
            "ready": _bool("True when every supported node with a ready agent has loaded the current profile."),
            "phase": _str("Pending, Protecting or Error.", enum=["Pending", "Protecting", "Error"]),
            "observedGeneration": _int("The generation the leader last processed.", "int64"),
            "desiredNumberLoaded": _int("Supported nodes with a ready agent that still heartbeats."),
            "currentNumberLoaded": _int("Nodes that loaded the current profile content."),
            "unprotectedWorkloads": _int("Selected workloads admitted without the profile (webhook failed open)."),
            "conditions": _list(
                "Created, Updated, Ready, and Conflict, Unprotected, Rollout when they apply.",
                condition_schema(node=False),
                32,
                **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
            ),
        },
    )


def armor_profile_spec_schema() -> JSON:
    return _obj(
        "The profile a policy compiled to, and where it applies. Written by the leader only.",
        {
            "target": target_schema(policy=False),
            "profile": _obj(
                "The AppArmor profile agents load on every node.",
                {
                    "name": _str("The profile name; equals the object's name.", maxLength=api.MAX_PROFILE_NAME),
                    "enforcer": _str("The enforcer.", enum=["AppArmor"]),
                    "mode": _str("How agents load it.", enum=["enforce", "complain"]),
                    "appArmor": _str("The full profile text."),
                    "sha256": _str("Hex SHA-256 of the profile text (UTF-8).", pattern="^[0-9a-f]{64}$"),
                },
                ["name", "enforcer", "mode", "appArmor", "sha256"],
            ),
            "updateExistingWorkloads": _bool("Copied from the policy.", False),
        },
        ["target", "profile"],
    )


def armor_profile_status_schema() -> JSON:
    return _obj(
        "Aggregated from ArmorNode objects by the leader.",
        {
            "desiredNumberLoaded": _int("Supported nodes with a ready agent that still heartbeats."),
            "currentNumberLoaded": _int("Nodes reporting this profile loaded at spec.profile.sha256."),
            "observedSha256": _str(
                "The spec.profile.sha256 the counts and conditions refer to; while it differs from "
                "spec.profile.sha256 they describe the previous content."
            ),
            "conditions": _list(
                "One entry per failed, unsupported, stale or lost (AgentLost) node.",
                condition_schema(node=True),
                10000,
                **{"x-kubernetes-list-type": "atomic"},
            ),
        },
    )


def armor_node_status_schema() -> JSON:
    loaded = _obj(
        "A profile loaded in the node's kernel.",
        {
            "namespace": _str("The ArmorProfile's namespace."),
            "sha256": _str("The content hash it was loaded at."),
            "mode": _str("How it was loaded.", enum=["enforce", "complain"]),
        },
    )
    failed = _obj(
        "A profile the node failed to load.",
        {
            "namespace": _str("The ArmorProfile's namespace."),
            "sha256": _str("The content hash that failed."),
            "message": _str("The parser's message."),
        },
    )
    return _obj(
        "Written by the node's agent only.",
        {
            "phase": _str("Whether this node can load AppArmor profiles.", enum=["Supported", "Unsupported"]),
            "reason": _str("Why the node is Unsupported."),
            "parserVersion": _str("apparmor_parser version."),
            "agentVersion": _str("varmor agent version."),
            "ready": _bool("The agent finished its initial sync."),
            # Atomic maps: the agent rewrites them whole, and the API server then tracks
            # one managed field per map instead of three per profile (a 200-profile write
            # costs a fraction of the CPU).
            "profiles": {
                "type": "object",
                "description": "Loaded varmor profiles, keyed by profile name.",
                "additionalProperties": loaded,
                "x-kubernetes-map-type": "atomic",
            },
            "failures": {
                "type": "object",
                "description": "Profiles that failed to load, keyed by profile name.",
                "additionalProperties": failed,
                "x-kubernetes-map-type": "atomic",
            },
            "lastUpdateTime": _str("When the agent last wrote this status.", format="date-time"),
            "heartbeatTime": _str(
                "When the agent last said it is alive (renewed every --agent-heartbeat seconds, 60 by default). "
                "The leader treats a node whose heartbeat is older than --agent-lost-after (180 s) as AgentLost: "
                "not counted, not blocking Ready. Absent: an agent without heartbeats, always counted.",
                format="date-time",
            ),
        },
    )


# -- CRDs --------------------------------------------------------------------------
def _column(name: str, path: str, kind: str = "string", priority: int = 0, description: str = "") -> JSON:
    col: JSON = {"name": name, "type": kind, "jsonPath": path}
    if priority:
        col["priority"] = priority
    if description:
        col["description"] = description
    return col


def _age() -> JSON:
    return _column("AGE", ".metadata.creationTimestamp", "date")


class _Dumper(yaml.SafeDumper):
    """No `&id001` anchors: the YAML is read by people and by Helm."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _crd(resource: api.Resource, description: str, schema: JSON, columns: list[JSON], root_rules: list[JSON]) -> JSON:
    singular = resource.kind.lower()
    names: JSON = {
        "kind": resource.kind,
        "listKind": f"{resource.kind}List",
        "plural": resource.plural,
        "singular": singular,
        "categories": ["varmor"],
    }
    if resource.short_names:
        names["shortNames"] = list(resource.short_names)
    root: JSON = {
        "type": "object",
        "description": description,
        "properties": {
            "apiVersion": _str("The versioned schema of this object."),
            "kind": _str("The REST resource this object represents."),
            "metadata": {"type": "object"},
            **schema,
        },
    }
    if root_rules:
        root["x-kubernetes-validations"] = root_rules
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{resource.plural}.{api.GROUP}", "labels": {api.MANAGED_BY_LABEL: "varmor"}},
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced" if resource.namespaced else "Cluster",
            "names": names,
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def _policy_columns() -> list[JSON]:
    return [
        _column("MODE", ".spec.policy.mode"),
        _column("TARGET-KIND", ".spec.target.kind"),
        _column("TARGET-NAME", ".spec.target.name"),
        _column("PROFILE", ".status.profileName"),
        _column("READY", ".status.ready", "boolean"),
        _column("STATUS", ".status.phase"),
        _column("DESIRED", ".status.desiredNumberLoaded", "integer"),
        _column("CURRENT", ".status.currentNumberLoaded", "integer"),
        _column("TARGET-SELECTOR", ".spec.target.selector", priority=1),
        _age(),
    ]


def crds() -> list[JSON]:
    """All four CRDs, in a stable order."""
    ids = _catalog_ids()
    policy_doc = (
        "{} confines {} workloads with an AppArmor profile built from chosen rules. "
        "Wire-compatible with vArmor's AppArmor policies."
    )
    return [
        _crd(
            api.VARMOR_POLICY,
            policy_doc.format("VarmorPolicy", "its namespace's"),
            {"spec": policy_spec_schema(ids), "status": policy_status_schema()},
            _policy_columns(),
            [],
        ),
        _crd(
            api.VARMOR_CLUSTER_POLICY,
            policy_doc.format("VarmorClusterPolicy", "every namespace's"),
            {"spec": policy_spec_schema(ids), "status": policy_status_schema()},
            _policy_columns(),
            [],
        ),
        _crd(
            api.ARMOR_PROFILE,
            "ArmorProfile is a compiled policy (internal, written by the varmor leader).",
            {"spec": armor_profile_spec_schema(), "status": armor_profile_status_schema()},
            [
                _column("PROFILE", ".spec.profile.name"),
                _column("MODE", ".spec.profile.mode"),
                _column("DESIRED", ".status.desiredNumberLoaded", "integer"),
                _column("CURRENT", ".status.currentNumberLoaded", "integer"),
                _age(),
            ],
            [{"rule": "self.metadata.name == self.spec.profile.name", "message": "name must equal spec.profile.name"}],
        ),
        _crd(
            api.ARMOR_NODE,
            "ArmorNode is what one node's varmor agent has loaded (written by that agent only).",
            {"status": armor_node_status_schema()},
            [
                _column("PHASE", ".status.phase"),
                _column("READY", ".status.ready", "boolean"),
                _column("PARSER", ".status.parserVersion"),
                _column("AGENT", ".status.agentVersion"),
                _column(
                    "HEARTBEAT", ".status.heartbeatTime", "date", description="Time since the agent's last heartbeat."
                ),
                _column("REASON", ".status.reason", priority=1),
                _age(),
            ],
            [],
        ),
    ]


def file_name(crd: JSON) -> str:
    return f"{crd['metadata']['name']}.yaml"


def render(crd: JSON) -> str:
    header = "# Generated by `varmor crds --out chart/crds`; do not edit.\n"
    return header + yaml.dump(crd, Dumper=_Dumper, sort_keys=False, width=120)


def write(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for crd in crds():
        path = out / file_name(crd)
        path.write_text(render(crd), encoding="utf-8")
        written.append(path)
    return written


def register(sub: Any) -> None:
    parser = sub.add_parser("crds", help="print (or write) varmor's CustomResourceDefinitions")
    parser.add_argument("--out", type=Path, default=None, help="write one YAML file per CRD into this directory")

    def handler(args: argparse.Namespace) -> int:
        if args.out is None:
            sys.stdout.write("---\n".join(render(crd) for crd in crds()))
        else:
            for path in write(args.out):
                print(path)
        return 0

    parser.set_defaults(func=handler)
