"""The fault plane's audit log, read back: who sent which request, and what it got.

Every varmor role authenticates with a ServiceAccount token, so the policy records every
request of every ServiceAccount (at Metadata level: no bodies) and nothing else.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  userGroups: ["system:serviceaccounts"]
- level: None
"""


@dataclass(frozen=True)
class Request:
    user: str
    verb: str
    resource: str  # resource[/subresource]
    namespace: str
    name: str
    code: int
    received: dt.datetime
    user_agent: str
    pod: str = ""  # the Pod a bound token names: tells apart processes sharing a ServiceAccount

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def requests(self) -> Iterator[Request]:
        if not self.path.exists():
            return
        with self.path.open("rb") as handle:
            for line in handle:
                if not line.strip():
                    continue
                event = orjson.loads(line)
                if event.get("stage") != "ResponseComplete":
                    continue
                ref = event.get("objectRef") or {}
                resource = ref.get("resource", "")
                if ref.get("subresource"):
                    resource += "/" + ref["subresource"]
                yield Request(
                    user=event["user"]["username"],
                    verb=event["verb"],
                    resource=resource,
                    namespace=ref.get("namespace", ""),
                    name=ref.get("name", ""),
                    code=int((event.get("responseStatus") or {}).get("code", 0)),
                    received=_parse_time(event["requestReceivedTimestamp"]),
                    user_agent=event.get("userAgent", ""),
                    pod=((event["user"].get("extra") or {}).get("authentication.kubernetes.io/pod-name") or [""])[0],
                )
