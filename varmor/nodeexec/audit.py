"""Pure parser for AppArmor audit records (`apparmor="DENIED"`, `"AUDIT"`, `"ALLOWED"`).

Accepts a line from any of the places the kernel's records end up: auditd's audit.log
(`type=AVC msg=audit(...)`, possibly with the enriched `\\x1d` suffix), the kernel log or
dmesg (`audit: type=1400 audit(...)`), and syslog's kern.log (`... kernel: [..] audit:`).
Values the kernel considered untrusted (a space, a quote, a control character) are logged
hex-encoded without quotes; those are decoded. No I/O.

The log is hostile input (a workload controls file names, comm, and can write to syslog):
only the kernel's exact record format is accepted. The record must be a kernel AVC record
(`type=AVC` or `type=1400`, never a userspace `USER_AVC`) whose message starts with
`apparmor=` right after its `audit(ts:serial):` stamp, and the message must be a clean
sequence of `key=value` pairs with no key repeated (the kernel never repeats one; a repeat
means injected text). The record's class is one of a fixed set, so it can label a metric.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from varmor.events import printable

ACTIONS = ("DENIED", "AUDIT", "ALLOWED")
# Fields the kernel logs with audit_log_untrustedstring (hex when they hold odd bytes).
STRING_FIELDS = frozenset(
    {"profile", "name", "comm", "peer", "target", "exe", "srcname", "label", "peer_label", "info", "fstype", "flags"}
)
# Where a kernel log line starts: dmesg, or syslog's kern.log (`<time> <host> kernel: `).
# Patterns put it right after `^`, so text a process logs (a USER_AVC message) cannot pose
# as the kernel's writing.
KERNEL_LOG_PREFIX = (
    r"(?:(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT\S+) \S+ kernel: )?(?:\[ *\d+\.\d+\] )?"
)
# Every record's stamp: its time and the serial number of the event it belongs to.
_STAMP = r"audit\((?P<ts>\d+(?:\.\d+)?):(?P<serial>\d+)\): "
# The kernel's record header, as auditd (`type=AVC msg=audit(..)`) and the kernel log
# (`audit: type=1400 audit(..)`) write it, followed at once by the AppArmor message.
_RECORD = re.compile(rf"^(?:(?:node=\S+ )?type=AVC msg=|{KERNEL_LOG_PREFIX}audit: type=1400 ){_STAMP}(?=apparmor=)")
# The SYSCALL record (type 1300) the kernel emits with an AVC, same stamp: it carries the
# ppid, which names the pod when the process itself is gone by the time it is read.
_SYSCALL = re.compile(rf"^(?:(?:node=\S+ )?type=SYSCALL msg=|{KERNEL_LOG_PREFIX}audit: type=1300 ){_STAMP}(?=arch=)")
# Any record's header: auditd names the type (`UNKNOWN[1334]` for one it does not know),
# the kernel log numbers it. Not auditd's own DAEMON_* records (types 12xx): auditd
# numbers them from a counter of its own.
_ANY = re.compile(
    r"^(?:(?:node=\S+ )?type=(?!DAEMON_)[A-Z][A-Z0-9_]*(?:\[\d+\])? msg="
    rf"|{KERNEL_LOG_PREFIX}audit: type=(?!12)\d{{4}} ){_STAMP}"
)
_PAIR = re.compile(
    r'(?P<key>[a-z_][a-z0-9_]*)=(?:"(?P<quoted>[^"\x00-\x1f\x7f]*)"|(?P<bare>[^\s"\x00-\x1f\x7f]*))(?: +|$)'
)
CLASSES = ("file", "net", "cap", "signal", "ptrace", "mount", "domain", "unix", "dbus", "io_uring", "other")
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
        """For the violation log: decoded values may hold control, bidi or format
        characters (a workload names its files), shown as escapes."""
        return {
            "action": self.action,
            "profile": printable(self.profile),
            "operation": printable(self.operation),
            "class": self.klass,
            "target": printable(self.target),
            "timestamp": self.timestamp,
            "serial": self.serial,
            "fields": {k: printable(v) for k, v in self.fields.items()},
        }


def _decode(key: str, value: str, quoted: bool) -> str:
    if quoted or key not in STRING_FIELDS or not _HEX.match(value):
        return value
    try:
        return bytes.fromhex(value).decode("utf-8", errors="replace")
    except ValueError:
        return value


def parse_fields(text: str) -> dict[str, str] | None:
    """The `key=value` pairs of one audit message, decoded; None unless the whole text is
    such pairs, each key once (anything else is not the kernel's writing)."""
    pairs: dict[str, str] = {}
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _PAIR.match(text, pos)
        if match is None or match.end() == pos:
            return None
        key = match["key"]
        if key in pairs:
            return None
        quoted = match["quoted"] is not None
        pairs[key] = _decode(key, (match["quoted"] if quoted else match["bare"]) or "", quoted)
        pos = match.end()
    return pairs


def classify(fields: dict[str, str]) -> str:
    """One of CLASSES (a metric label: a fixed set, whatever the record says)."""
    klass = fields.get("class")
    if klass:
        klass = {"network": "net", "capability": "cap"}.get(klass, klass)
        return klass if klass in CLASSES else "other"
    operation = fields.get("operation", "")
    if operation in _CLASS_BY_OPERATION:
        return _CLASS_BY_OPERATION[operation]
    if operation in _NET_OPERATIONS or "family" in fields:
        return "net"
    if "name" in fields or "requested_mask" in fields:
        return "file"
    return "other"


@dataclass(frozen=True)
class SyscallRecord:
    """The process side of an audit event: `serial` is shared with the event's AVC."""

    serial: int
    pid: str
    ppid: str


_SYSCALL_PIDS = re.compile(r" ppid=(?P<ppid>\d{1,10}) pid=(?P<pid>\d{1,10}) ")


def parse_syscall(line: str) -> SyscallRecord | None:
    """A kernel SYSCALL record's serial, pid and ppid, or None for anything else. Only the
    header and the fixed `ppid=N pid=N` pair are read: the kernel writes them in that order
    before any string a process controls (those are hex-encoded when they hold a space), and
    the record's subject may carry a mode suffix (`subj=p (enforce)`) the pair grammar of
    AVC records does not take."""
    line = line.rstrip("\n").split("\x1d", 1)[0]
    header = _SYSCALL.search(line)
    if header is None:
        return None
    numbers = line[header.end() : line.find(" comm=")]  # the kernel's fields before any string
    pids = _SYSCALL_PIDS.search(numbers)
    if pids is None or numbers.count(" ppid=") != 1 or numbers.count(" pid=") != 1:
        return None
    return SyscallRecord(int(header["serial"]), pids["pid"], pids["ppid"])


def parse_serial(line: str) -> int | None:
    """The serial of any kernel audit record (every type, not only AppArmor's), or None:
    what loss accounting needs, since every record takes its serial from one counter."""
    header = _ANY.match(line)
    if header is None or len(header["serial"]) > 10:
        return None
    serial = int(header["serial"])
    return serial if serial <= 0xFFFFFFFF else None


def parse_line(line: str) -> AuditRecord | None:
    """An AppArmor DENIED/AUDIT/ALLOWED record, or None for anything else (other audit
    types, AppArmor STATUS records, unrelated or forged log lines)."""
    line = line.rstrip("\n").split("\x1d", 1)[0]  # auditd's enriched fields
    header = _RECORD.search(line)
    if header is None:
        return None
    fields = parse_fields(line[header.end() :])
    if fields is None:
        return None
    action = fields.get("apparmor", "")
    profile = fields.get("profile", "")
    if action not in ACTIONS or not profile:
        return None
    return AuditRecord(
        action=action,
        profile=profile,
        operation=fields.get("operation", ""),
        klass=classify(fields),
        timestamp=float(header["ts"]),
        serial=int(header["serial"]),
        fields=fields,
    )
