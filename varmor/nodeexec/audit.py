"""Pure parser for AppArmor audit records (`apparmor="DENIED"`, `"AUDIT"`, `"ALLOWED"`).

Accepts a line from any of the places the kernel's records end up: auditd's audit.log
(`type=AVC msg=audit(...)`, possibly with the enriched `\\x1d` suffix), the kernel log or
dmesg (`audit: type=1400 audit(...)`), and syslog's kern.log (`... kernel: [..] audit:`).
Values the kernel considered untrusted (a space, a quote, a control character) are logged
hex-encoded without quotes; those are decoded. No I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ACTIONS = ("DENIED", "AUDIT", "ALLOWED")
# Fields the kernel logs with audit_log_untrustedstring (hex when they hold odd bytes).
STRING_FIELDS = frozenset(
    {"profile", "name", "comm", "peer", "target", "exe", "srcname", "label", "peer_label", "info", "fstype", "flags"}
)
_STAMP = re.compile(r"audit\((?P<ts>\d+(?:\.\d+)?):(?P<serial>\d+)\)")
_PAIR = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)=(?:"(?P<quoted>[^"]*)"|(?P<bare>[^\s"]*))')
_HEX = re.compile(r"^(?:[0-9A-F]{2})+$")
_CLASS_BY_OPERATION = {
    "capable": "cap",
    "signal": "signal",
    "ptrace": "ptrace",
    "mount": "mount",
    "umount": "mount",
    "remount": "mount",
    "pivotroot": "mount",
    "change_profile": "domain",
    "change_hat": "domain",
    "change_onexec": "domain",
    "setprocattr": "domain",
}
_NET_OPERATIONS = frozenset(
    {
        "create",
        "post_create",
        "bind",
        "connect",
        "listen",
        "accept",
        "sendmsg",
        "recvmsg",
        "getsockname",
        "getpeername",
        "getsockopt",
        "setsockopt",
        "socket_shutdown",
    }
)


@dataclass(frozen=True)
class AuditRecord:
    action: str  # DENIED | AUDIT | ALLOWED
    profile: str  # as logged, e.g. varmor-demo-web//child_0
    operation: str
    klass: str  # file | net | cap | signal | ptrace | mount | domain | other
    timestamp: float | None = None
    serial: int | None = None
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def base_profile(self) -> str:
        """The top-level profile (what an ArmorProfile names)."""
        return self.profile.split("//", 1)[0]

    @property
    def target(self) -> str:
        """What was accessed, in the record's own terms."""
        f = self.fields
        if self.klass == "file" or "name" in f:
            return f.get("name", "")
        if self.klass == "net":
            return " ".join(v for v in (f.get("family", ""), f.get("sock_type", ""), f.get("protocol", "")) if v)
        if self.klass == "cap":
            return f.get("capname", f.get("capability", ""))
        return f.get("peer", f.get("target", ""))

    def as_json(self) -> dict[str, object]:
        return {
            "action": self.action,
            "profile": self.profile,
            "operation": self.operation,
            "class": self.klass,
            "target": self.target,
            "timestamp": self.timestamp,
            "serial": self.serial,
            "fields": self.fields,
        }


def _decode(key: str, value: str, quoted: bool) -> str:
    if quoted or key not in STRING_FIELDS or not _HEX.match(value):
        return value
    try:
        return bytes.fromhex(value).decode("utf-8", errors="replace")
    except ValueError:
        return value


def parse_fields(text: str) -> dict[str, str]:
    """`key=value` pairs of one audit message, decoded."""
    pairs: dict[str, str] = {}
    for match in _PAIR.finditer(text):
        key = match["key"]
        quoted = match["quoted"] is not None
        value = match["quoted"] if quoted else match["bare"]
        pairs.setdefault(key, _decode(key, value or "", quoted))
    return pairs


def classify(fields: dict[str, str]) -> str:
    klass = fields.get("class")
    if klass:
        return {"network": "net", "capability": "cap"}.get(klass, klass)
    operation = fields.get("operation", "")
    if operation in _CLASS_BY_OPERATION:
        return _CLASS_BY_OPERATION[operation]
    if operation in _NET_OPERATIONS or "family" in fields:
        return "net"
    if "name" in fields or "requested_mask" in fields:
        return "file"
    return "other"


def parse_line(line: str) -> AuditRecord | None:
    """An AppArmor DENIED/AUDIT/ALLOWED record, or None for anything else (other audit
    types, AppArmor STATUS records, unrelated log lines)."""
    at = line.find("apparmor=")
    if at < 0:
        return None
    line = line.split("\x1d", 1)[0]  # auditd's enriched fields
    stamp = _STAMP.search(line)
    body = line[stamp.end() :] if stamp and stamp.end() <= at else line[at:]
    fields = parse_fields(body)
    action = fields.get("apparmor", "")
    profile = fields.get("profile", "")
    if action not in ACTIONS or not profile:
        return None
    return AuditRecord(
        action=action,
        profile=profile,
        operation=fields.get("operation", ""),
        klass=classify(fields),
        timestamp=float(stamp["ts"]) if stamp else None,
        serial=int(stamp["serial"]) if stamp else None,
        fields=fields,
    )
