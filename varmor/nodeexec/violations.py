"""Violation reporting: tail the kernel audit source, attribute AppArmor records to
profile -> ArmorProfile -> policy, count them, write them as JSON lines, and emit
rate-limited Events on the policy.

Runs as its own task and never touches the load path: file reads go through a thread,
Events go through a bounded queue that drops (and counts) when the API is slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson

from varmor.clock import utc_now
from varmor.events import ObjectRef, event_body
from varmor.kube.kube import Kube
from varmor.nodeexec import metrics
from varmor.nodeexec.attribution import Attribution, Attributor
from varmor.nodeexec.audit import AuditRecord, SyscallRecord, parse_line, parse_syscall
from varmor.nodeexec.collector import BehaviorCollector
from varmor.nodeexec.eventqueue import EventQueue, RateLimiter
from varmor.nodeexec.files import is_varmor_name
from varmor.nodeexec.state import Desired

log = logging.getLogger(__name__)
REASONS = {"DENIED": "ViolationDenied", "AUDIT": "ViolationAudited", "ALLOWED": "ViolationAllowed"}


# -- following a file ----------------------------------------------------------------
class Follower:
    """`tail -F` in a thread-friendly shape: returns new complete lines, survives rotation
    (new inode) and truncation, and waits for a file that does not exist yet (and then
    reads it from its start: everything in it is new)."""

    def __init__(self, path: Path, *, from_start: bool = False) -> None:
        self.path = path
        self.from_start = from_start
        self._handle: Any = None
        self._inode = -1
        self._partial = b""

    def _open(self) -> bool:
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 (kept open across calls)
        except FileNotFoundError:
            self.from_start = True  # a file that appears later holds only new lines
            return False
        stat = os.fstat(handle.fileno())
        if self._handle is None and not self.from_start:
            handle.seek(0, os.SEEK_END)  # first open: only what happens from now on
        if self._handle is not None:
            self._handle.close()
        self._handle, self._inode, self._partial = handle, stat.st_ino, b""
        return True

    def read_lines(self, limit: int = 1 << 20) -> list[str]:
        """Blocking: the complete lines appended since the last call."""
        if self._handle is None and not self._open():
            return []
        data = self._handle.read(limit)
        if not data:
            try:
                stat = os.stat(self.path)
            except FileNotFoundError:
                return []
            if stat.st_ino != self._inode:  # rotated: finish with the new file
                self.from_start = True
                self._open()
                data = self._handle.read(limit)
            elif stat.st_size < self._handle.tell():  # truncated
                self._handle.seek(0)
                data = self._handle.read(limit)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        return [line.decode("utf-8", errors="replace") for line in lines]

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


@dataclass(frozen=True)
class Violation:
    record: AuditRecord
    owner: Desired | None  # the ArmorProfile it came from, when known
    attribution: Attribution | None = None  # the pod, when the agent resolves pods

    def as_json(self, node: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"node": node, **self.record.as_json()}
        if self.attribution is not None:
            pod = self.attribution.pod
            entry["pod"] = pod.as_json() if pod is not None else None
            if pod is None:
                entry["unattributed"] = self.attribution.reason
        if self.owner is not None:
            entry["armorProfile"] = {"namespace": self.owner.namespace, "name": self.owner.name}
            if self.owner.policy is not None:
                p = self.owner.policy
                entry["policy"] = {"kind": p.kind, "namespace": p.namespace, "name": p.name}
        return entry


def violation_event(violation: Violation, node: str, suppressed: int, now: dt.datetime) -> dict[str, Any] | None:
    """An Event on the violating policy, or None when the profile's policy is unknown."""
    owner = violation.owner
    if owner is None or owner.policy is None:
        return None
    policy, record = owner.policy, violation.record
    message = f"node {node}: {record.action} {record.operation} {record.target}".rstrip()
    comm = record.fields.get("comm")
    message += f" by {comm}" if comm else ""
    pod = violation.attribution.pod if violation.attribution is not None else None
    if pod is not None:
        message += f" in {pod.describe()}" if policy.may_name(pod.namespace) else " in a pod of another namespace"
    message += f" (profile {record.profile})"
    if suppressed:
        message += f"; {suppressed} more since the previous event"
    ref = ObjectRef(kind=policy.kind, name=policy.name, namespace=policy.namespace, uid=policy.uid)
    return event_body(
        ref,
        "Warning" if record.action == "DENIED" else "Normal",
        REASONS[record.action],
        message,
        component="agent",
        instance=node,
        now=now,
        count=1 + suppressed,
    )


# -- the reporter ----------------------------------------------------------------------
class ViolationReporter:
    def __init__(
        self,
        kube: Kube | None,
        node: str,
        source: Path,
        owner: Callable[[str], Desired | None],
        *,
        attributor: Attributor | None = None,
        json_out: str = "-",
        event_interval: float = 60.0,
        poll: float = 0.5,
        from_start: bool = False,
        queue_size: int = 256,
        collector: BehaviorCollector | None = None,
    ) -> None:
        self.collector = collector
        self.kube = kube
        self.node = node
        self.follower = Follower(source, from_start=from_start)
        self.owner = owner
        self.attributor = attributor
        self.json_out = json_out
        self.limiter = RateLimiter(event_interval)
        self.poll = poll
        self.events = (
            EventQueue(kube, lambda result: metrics.VIOLATION_EVENTS.labels(result).inc(), size=queue_size)
            if kube is not None
            else None
        )
        self.seen = 0

    @classmethod
    def from_args(
        cls, args: Any, agent: Any, attributor: Attributor | None = None, collector: BehaviorCollector | None = None
    ) -> ViolationReporter:
        return cls(
            agent.kube,
            args.node_name,
            Path(args.audit_log),
            agent.owner,
            attributor=attributor,
            json_out=args.violation_log,
            event_interval=args.violation_event_interval,
            collector=collector,
        )

    def behavior(
        self, lines: list[str], records: list[AuditRecord], attributions: list[Attribution | None]
    ) -> list[tuple[AuditRecord, Attribution | None]]:
        """Measure loss on every line; hand modelling profiles' ALLOWED records to the
        collector (behaviour, not violations, with the pod they came from); return the rest."""
        pairs = list(zip(records, attributions, strict=True))
        if self.collector is None:
            return pairs
        for line in lines:
            self.collector.loss.feed(line)
        metrics.AUDIT_LOST.set(self.collector.loss.lost)
        rest = []
        for record, attribution in pairs:
            owner = self.collector.modeling(record)
            if owner is None:
                rest.append((record, attribution))
            else:
                self.collector.collect(record, owner, attribution)
        return rest

    async def lines(self) -> AsyncIterator[list[str]]:
        while True:
            lines = await asyncio.to_thread(self.follower.read_lines)
            if lines:
                yield lines
            else:
                await asyncio.sleep(self.poll)

    def parse(self, line: str) -> AuditRecord | None:
        """One line's record of a varmor profile, or None; counted either way."""
        try:
            record = parse_line(line)
        except Exception:  # a malformed line must never stop the tailer
            metrics.AUDIT_LINES.labels("malformed").inc()
            return None
        if record is None or not is_varmor_name(record.base_profile):
            metrics.AUDIT_LINES.labels("other").inc()
            return None
        metrics.AUDIT_LINES.labels("varmor").inc()
        return record

    def attribute(self, records: list[AuditRecord], syscalls: dict[int, SyscallRecord]) -> list[Attribution | None]:
        """Blocking (a /proc read per record): the pods of `records`, read while their
        processes (or, for one already gone, its parent from the event's SYSCALL record,
        `syscalls` by serial, the same pid) most likely still run."""
        if self.attributor is None:
            return [None] * len(records)
        out: list[Attribution | None] = []
        seen: dict[tuple[str | None, str | None], Attribution] = {}  # a busy pid's records: one read
        for record in records:
            pid = record.fields.get("pid")
            syscall = syscalls.get(record.serial) if record.serial is not None else None
            parent = syscall.ppid if syscall is not None and syscall.pid == pid else None
            if (pid, parent) not in seen:
                seen[(pid, parent)] = self.attributor.attribute(pid, parent, record.timestamp)
            out.append(seen[(pid, parent)])
        return out

    def handle(self, line: str, attribution: Attribution | None = None) -> Violation | None:
        """Parse, attribute and count one line; queue its Event if the limiter allows."""
        record = self.parse(line)
        return None if record is None else self.report(record, attribution)

    def report(self, record: AuditRecord, attribution: Attribution | None) -> Violation:
        metrics.VIOLATIONS.labels(record.action, record.klass).inc()
        if attribution is not None and attribution.pod is None:
            metrics.UNATTRIBUTED.inc()
        violation = Violation(record, self.owner(record.base_profile), attribution)
        self.seen += 1
        self._queue_event(violation)
        return violation

    def _queue_event(self, violation: Violation) -> None:
        if self.events is None or violation.owner is None or violation.owner.policy is None:
            return
        p = violation.owner.policy
        send, suppressed = self.limiter.admit((p.kind, p.namespace, p.name, violation.record.action), time.monotonic())
        if not send:
            metrics.VIOLATION_EVENTS.labels("suppressed").inc()
            return
        body = violation_event(violation, self.node, suppressed, utc_now())
        if body is not None:
            self.events.offer(body)

    def _open_out(self) -> TextIO | None:
        if not self.json_out:
            return None
        if self.json_out == "-":
            return sys.stdout
        Path(self.json_out).parent.mkdir(parents=True, exist_ok=True)
        return open(self.json_out, "a", buffering=1)

    async def run(self) -> None:
        out = await asyncio.to_thread(self._open_out)
        sender = asyncio.create_task(self.events.run()) if self.events is not None else None
        try:
            async for lines in self.lines():
                records = [r for r in map(self.parse, lines) if r is not None]
                syscalls = {s.serial: s for s in map(parse_syscall, lines) if s is not None} if records else {}
                attributions = await asyncio.to_thread(self.attribute, records, syscalls) if records else []
                rest = self.behavior(lines, records, attributions)
                entries = [self.report(r, a).as_json(self.node) for r, a in rest]
                if out is not None and entries:
                    text = "".join(orjson.dumps(e).decode() + "\n" for e in entries)
                    await asyncio.to_thread(_write, out, text)
        finally:
            if sender is not None:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
            self.follower.close()
            if out is not None and out is not sys.stdout:
                out.close()


def _write(out: TextIO, text: str) -> None:
    out.write(text)
    out.flush()
