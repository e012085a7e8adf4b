"""The leader's merge of behaviour shares (pure): which shares count, and what they add.

Every share is input from a node, so:

- a share counts only when a controller owner reference names the profile's current
  ArmorProfile (`owned_by`): a share for a profile that does not exist, or an older
  ArmorProfile of that name, is ignored (and the garbage collector removes it);
- it counts only from a node where a pod uses the profile, or that contributed before
  (`uses_profile`; the controller lists the node's pods): root on one node cannot widen
  the model of a profile that node never ran;
- it is decoded strictly, once per version (`ShareCache`), and each rule is re-checked
  against the profile grammar; refused rules are counted per node, never merged;
- counts saturate (`MAX_COUNT`), so a node that reports absurd counts cannot push a sum
  past what the API stores (which would freeze the model's writes);
- what a node says about its pods is shown to people: text is escaped and bounded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from varmor import api
from varmor.admission.objects import ObjectView, view_of
from varmor.admission.planner import effective_localhost, pod_parts
from varmor.behavior.codec import decode_model_data
from varmor.behavior.model import Behavior
from varmor.behavior.profile import check_rule
from varmor.events import printable

JSON = dict[str, Any]
MAX_COUNT = 2**53  # well inside int64, and exact in JSON readers that use doubles
MAX_PODS = 64
_POD_FIELDS = ("namespace", "name", "container", "image")


def saturating(*values: Any) -> int:
    """The sum of non-negative counts, capped at MAX_COUNT (a hostile count is not an int)."""
    total = 0
    for value in values:
        count = value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
        total = min(MAX_COUNT, total + min(count, MAX_COUNT))
    return total


def owned_by(share: Mapping[str, Any], profile_uid: str) -> bool:
    """The share's controller owner is the ArmorProfile with `profile_uid`."""
    refs = (share.get("metadata") or {}).get("ownerReferences") or []
    return any(
        isinstance(ref, Mapping)
        and ref.get("kind") == api.ARMOR_PROFILE.kind
        and ref.get("uid") == profile_uid
        and ref.get("name") == (share.get("spec") or {}).get("profileName")
        for ref in refs
    )


def uses_profile(pod: Mapping[str, Any] | ObjectView, profile: str) -> bool:
    """Some container of the pod runs (or would run) under `profile`."""
    try:
        meta, spec = pod_parts("Pod", view_of(pod))
    except ValueError:
        return False
    if spec is None:
        return False
    containers = (spec.containers or []) + (spec.init_containers or []) + (spec.ephemeral_containers or [])
    return any(effective_localhost(meta, spec, c) == profile for c in containers)


@dataclass(frozen=True)
class CheckedShare:
    behavior: Behavior  # only rules a profile may hold
    refused: int  # rules refused by the grammar; -1: the share could not be decoded (error)
    error: str = ""


class ShareCache:
    """Decoded, checked shares by (uid, resourceVersion): an unchanged share is decoded
    once, not at every merge of its profile."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._cache: OrderedDict[tuple[str, str], CheckedShare] = OrderedDict()

    def checked(self, share: Mapping[str, Any]) -> CheckedShare:
        meta = share.get("metadata") or {}
        key = (str(meta.get("uid")), str(meta.get("resourceVersion")))
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        try:
            behavior = decode_model_data(share)
        except ValueError as exc:
            result = CheckedShare(Behavior(), -1, str(exc))
        else:
            safe = Behavior(rules={r: min(c, MAX_COUNT) for r, c in behavior.rules.items() if check_rule(r) is None})
            result = CheckedShare(safe, len(behavior.rules) - len(safe.rules))
        self._cache[key] = result
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return result


def node_entry(share: Mapping[str, Any]) -> JSON:
    spec = share.get("spec") or {}
    return {
        "nodeName": str(spec.get("nodeName")),
        "records": saturating(spec.get("records")),
        "lostRecords": saturating(spec.get("lostRecords")),
        "excludedRecords": saturating(spec.get("excludedRecords")),
    }


def merge(shares: Iterable[Mapping[str, Any]], cache: ShareCache) -> tuple[Behavior, list[JSON]]:
    """The merged model of a profile's (admitted) shares and each node's contribution."""
    merged = Behavior()
    nodes: list[JSON] = []
    for share in sorted(shares, key=lambda s: str((s.get("spec") or {}).get("nodeName"))):
        entry = node_entry(share)
        merged.lost = saturating(merged.lost, entry["lostRecords"])  # measured whatever the share holds
        checked = cache.checked(share)
        if checked.refused < 0:
            nodes.append({**entry, "rules": 0, "refusedRules": 0, "refused": f"unreadable: {checked.error[:200]}"})
            continue
        for rule, count in checked.behavior.rules.items():
            merged.rules[rule] = saturating(merged.rules.get(rule, 0), count)
        merged.records = saturating(merged.records, max(0, entry["records"] - entry["excludedRecords"]))
        merged.excluded = saturating(merged.excluded, entry["excludedRecords"])
        nodes.append({**entry, "rules": len(checked.behavior.rules), "refusedRules": checked.refused})
    return merged, nodes


def top_pods(shares: Iterable[Mapping[str, Any]]) -> list[JSON]:
    """The pods behind a model, across nodes: the MAX_PODS with the most records, their
    names escaped and bounded (what a node reports about its pods is not checked)."""
    counts: dict[tuple[str, ...], int] = {}
    for share in shares:
        for pod in ((share.get("spec") or {}).get("pods") or [])[: MAX_PODS + 1]:
            if isinstance(pod, Mapping):
                key = tuple(printable(str(pod.get(k) or ""))[:253] for k in _POD_FIELDS)
                counts[key] = saturating(counts.get(key, 0), pod.get("records"))
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_PODS]
    return [{k: v for k, v in zip(_POD_FIELDS, key, strict=True) if v} | {"records": n} for key, n in ranked]
