"""core/v1 Event bodies, built in one place for every role (pure).

Messages carry user- and kernel-supplied text (policy names, file paths decoded from
audit records), so control characters are escaped before they reach kubectl's output,
and the message is capped at the API server's 1 KiB.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from dataclasses import dataclass
from typing import Any, Literal

from varmor import api
from varmor.clock import rfc3339

Severity = Literal["Normal", "Warning"]
MAX_MESSAGE = 1024


# Unicode categories shown as escapes: controls, format characters (bidi overrides, zero
# widths, tags), line and paragraph separators, private-use and unassigned code points.
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Co", "Cn", "Cs"})


def printable(text: str) -> str:
    """`text` with every control, format, separator or otherwise invisible character shown
    as an escape, so what a workload named cannot rewrite a terminal or hide text."""
    if text.isprintable():  # the common case: nothing to do
        return text
    return "".join(
        ch.encode("unicode_escape").decode() if unicodedata.category(ch) in HIDDEN_CATEGORIES else ch for ch in text
    )


@dataclass(frozen=True)
class ObjectRef:
    """The object an Event is about (`involvedObject`)."""

    kind: str
    name: str
    namespace: str = ""
    uid: str = ""
    api_version: str = api.API_VERSION
    resource_version: str = ""

    @classmethod
    def of(cls, obj: dict[str, Any]) -> ObjectRef:
        meta = obj.get("metadata") or {}
        return cls(
            kind=str(obj.get("kind") or ""),
            name=str(meta.get("name") or ""),
            namespace=str(meta.get("namespace") or ""),
            uid=str(meta.get("uid") or ""),
            api_version=str(obj.get("apiVersion") or api.API_VERSION),
            resource_version=str(meta.get("resourceVersion") or ""),
        )


def event_body(
    ref: ObjectRef,
    event_type: Severity,
    reason: str,
    message: str,
    *,
    component: str,
    instance: str,
    now: dt.datetime,
    count: int = 1,
) -> dict[str, Any]:
    """An Event on `ref`. Cluster-scoped objects' Events go to `default`, as client-go's
    recorder does. `component` is the role (leader, webhook, agent); `instance` is the
    replica or node."""
    stamp = rfc3339(now)
    involved: dict[str, Any] = {"apiVersion": ref.api_version, "kind": ref.kind, "name": ref.name, "uid": ref.uid}
    if ref.namespace:
        involved["namespace"] = ref.namespace
    if ref.resource_version:
        involved["resourceVersion"] = ref.resource_version
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{ref.name or 'varmor'}.", "namespace": ref.namespace or "default"},
        "involvedObject": involved,
        "type": event_type,
        "reason": reason,
        "message": printable(message)[:MAX_MESSAGE],
        "source": {"component": f"varmor-{component}", **({"host": instance} if component == "agent" else {})},
        "reportingComponent": f"varmor.org/{component}",
        "reportingInstance": instance[:128],
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": count,
    }
