"""Lease-based leader election with client-go's semantics, on coordination.k8s.io/v1.

Why our own: the elector shipped with kubernetes.aio crashed on Lease creation in a
local trial. This one keeps the decision logic pure (`ElectionState`, driven by an
injectable clock) and the I/O thin (`LeaseStore`).

client-go semantics:
* a candidate takes the Lease only when it is free, or when the record it *observed*
  has not changed for the record's `leaseDurationSeconds` (measured on the local
  monotonic clock, so clock skew between nodes does not matter);
* the leader renews every `retry_period`; if no renewal succeeded for `renew_deadline`
  it gives up at once (before anyone else may take over, since
  lease_duration > renew_deadline);
* writes use the Lease's resourceVersion, so two candidates never both win.
Stricter than client-go: a leader that sees another holder in the Lease stops
immediately instead of retrying until its deadline, and its writes are fenced: `fence()`
(checked by the leader's `Kube` before every write) refuses once `renew_deadline` has
passed on the monotonic clock since the start of the last successful renewal, even if
this process was stopped and has not run `hold()` since. Nobody else may take the lease
before `lease_duration` has passed since then, so a write that leaves in time lands before
any other leader exists; docs/design.md ("Fencing") covers writes delayed beyond that.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, Protocol

from varmor.clock import micro_time, parse_time
from varmor.kube import paths
from varmor.kube.client import JSON, ApiException
from varmor.kube.errors import TemporaryError
from varmor.kube.kube import Kube
from varmor.kube.tasks import cancel_and_wait
from varmor.reconcile import metrics

log = logging.getLogger(__name__)

JITTER = 1.2


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def now(self) -> dt.datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(frozen=True)
class ElectionConfig:
    namespace: str
    lease_name: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.identity:
            raise ValueError("leader election needs a non-empty identity")
        if self.lease_duration <= self.renew_deadline:
            raise ValueError("lease duration must be greater than the renew deadline")
        if self.renew_deadline <= JITTER * self.retry_period:
            raise ValueError(f"renew deadline must be greater than {JITTER} x the retry period")
        if self.retry_period <= 0:
            raise ValueError("retry period must be positive")


@dataclass(frozen=True)
class LeaseRecord:
    holder: str = ""
    lease_duration: int = 15
    acquire_time: dt.datetime | None = None
    renew_time: dt.datetime | None = None
    transitions: int = 0
    resource_version: str = ""

    def same_record(self, other: LeaseRecord | None) -> bool:
        """Equal as a leader election record (resourceVersion aside)."""
        return other is not None and replace(self, resource_version="") == replace(other, resource_version="")


def default_identity() -> str:
    """The pod name (set from the downward API), else hostname plus a random suffix so two
    processes on one host never share an identity."""
    pod = os.environ.get("POD_NAME")
    if pod:
        return pod
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


class ElectionState:
    """Pure: what this candidate has observed, and what it may do next."""

    def __init__(self, config: ElectionConfig) -> None:
        self.config = config
        self.observed: LeaseRecord | None = None
        self.observed_at = 0.0  # monotonic time the observed record last changed

    def observe(self, record: LeaseRecord | None, now: float) -> None:
        if record is None:
            self.observed = None
            self.observed_at = now
            return
        if not record.same_record(self.observed):
            self.observed_at = now
        self.observed = record

    def held_by_other(self, now: float) -> bool:
        """Another identity holds an unexpired lease (as far as we observed)."""
        rec = self.observed
        if rec is None or not rec.holder or rec.holder == self.config.identity:
            return False
        return self.observed_at + rec.lease_duration > now

    def is_mine(self) -> bool:
        return self.observed is not None and self.observed.holder == self.config.identity

    def desired(self, wall_now: dt.datetime) -> LeaseRecord:
        """The record to write to acquire or renew."""
        rec = self.observed
        duration = max(1, round(self.config.lease_duration))
        if rec is not None and rec.holder == self.config.identity:
            return replace(rec, lease_duration=duration, renew_time=wall_now)
        transitions = (rec.transitions + 1) if rec is not None and rec.holder else (rec.transitions if rec else 0)
        return LeaseRecord(
            holder=self.config.identity,
            lease_duration=duration,
            acquire_time=wall_now,
            renew_time=wall_now,
            transitions=transitions,
            resource_version=rec.resource_version if rec else "",
        )

    def released(self, wall_now: dt.datetime) -> LeaseRecord | None:
        """The record that hands the lease back (client-go ReleaseOnCancel), if ours."""
        rec = self.observed
        if rec is None or rec.holder != self.config.identity:
            return None
        return replace(rec, holder="", lease_duration=1, acquire_time=wall_now, renew_time=wall_now)


# -- I/O ---------------------------------------------------------------------------
class LeaseStore(Protocol):
    async def get(self) -> LeaseRecord | None: ...

    async def create(self, record: LeaseRecord) -> LeaseRecord: ...

    async def update(self, record: LeaseRecord) -> LeaseRecord: ...


class NotLeading(TemporaryError):
    """A leader write refused by the fence: this process may no longer hold the lease.
    Temporary: the work is cancelled once the elector notices, or retried as leader."""


class Conflict(Exception):
    """Someone else wrote the Lease first (409): re-read and decide again."""


def record_from_lease(lease: JSON) -> LeaseRecord:
    spec = lease.get("spec") or {}
    meta = lease.get("metadata") or {}
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        lease_duration=int(spec.get("leaseDurationSeconds") or 0),
        acquire_time=parse_time(spec.get("acquireTime")),
        renew_time=parse_time(spec.get("renewTime")),
        transitions=int(spec.get("leaseTransitions") or 0),
        resource_version=str(meta.get("resourceVersion") or ""),
    )


class KubeLeaseStore:
    """A coordination.k8s.io/v1 Lease, read and written as raw JSON."""

    def __init__(self, kube: Kube, namespace: str, name: str, request_timeout: float = 5.0) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.request_timeout = request_timeout
        self._base = paths.lease_path(namespace)

    def _body(self, record: LeaseRecord) -> JSON:
        spec: JSON = {
            "holderIdentity": record.holder,
            "leaseDurationSeconds": record.lease_duration,
            "leaseTransitions": record.transitions,
        }
        if record.acquire_time is not None:
            spec["acquireTime"] = micro_time(record.acquire_time)
        if record.renew_time is not None:
            spec["renewTime"] = micro_time(record.renew_time)
        meta: JSON = {"name": self.name, "namespace": self.namespace}
        if record.resource_version:
            meta["resourceVersion"] = record.resource_version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    async def get(self) -> LeaseRecord | None:
        try:
            lease = await self.kube.request(
                "GET", paths.lease_path(self.namespace, self.name), request_timeout=self.request_timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return record_from_lease(lease)

    async def create(self, record: LeaseRecord) -> LeaseRecord:
        body = self._body(replace(record, resource_version=""))
        try:
            lease = await self.kube.request("POST", self._base, body=body, request_timeout=self.request_timeout)
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict from exc
            raise
        return record_from_lease(lease)

    async def update(self, record: LeaseRecord) -> LeaseRecord:
        try:
            lease = await self.kube.request(
                "PUT",
                paths.lease_path(self.namespace, self.name),
                body=self._body(record),
                request_timeout=self.request_timeout,
            )
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict from exc
            raise
        return record_from_lease(lease)


class LeaderElector:
    """Runs the candidate/leader loop; `run(lead)` calls `lead()` while leading and
    cancels it the moment leadership is lost."""

    def __init__(self, store: LeaseStore, config: ElectionConfig, clock: Clock | None = None) -> None:
        self.store = store
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.state = ElectionState(config)
        self.leading = False
        self._last_renew = 0.0  # monotonic reading taken before the last successful renewal began

    async def try_acquire_or_renew(self) -> bool:
        """One client-go tryAcquireOrRenew round. True when we hold the lease now."""
        now = self.clock.monotonic()
        if self.leading and self.state.is_mine() and await self._renew_from_observed(now):
            return True
        try:
            current = await self.store.get()
        except Exception as exc:
            log.warning("leader election: reading the lease failed: %r", exc)
            return False
        if current is None:
            record = self.state.desired(self.clock.now())
            try:
                written = await self.store.create(record)
            except Conflict:
                return False
            except Exception as exc:
                log.warning("leader election: creating the lease failed: %r", exc)
                return False
            self.state.observe(written, self.clock.monotonic())
            self._last_renew = now
            return True
        self.state.observe(current, now)
        if self.state.held_by_other(now):
            return False
        record = self.state.desired(self.clock.now())
        try:
            written = await self.store.update(record)
        except Conflict:
            return False
        except Exception as exc:
            log.warning("leader election: updating the lease failed: %r", exc)
            return False
        self.state.observe(written, self.clock.monotonic())
        self._last_renew = now
        return True

    async def _renew_from_observed(self, now: float) -> bool:
        """client-go's fast path: the leader renews from the record it wrote last, in one PUT
        whose resourceVersion makes it fail if anyone else wrote since. A slow API server
        then costs one round trip per renewal instead of two; on any failure the full round
        (read, then decide) follows."""
        record = self.state.observed
        if record is None or not record.resource_version:
            return False
        try:
            written = await self.store.update(self.state.desired(self.clock.now()))
        except Exception:  # Conflict (someone wrote), or an error: the full round decides
            return False
        self.state.observe(written, self.clock.monotonic())
        self._last_renew = now
        return True

    def fence(self) -> None:
        """Raise NotLeading unless a write sent now lands while no one else can lead: we
        lead and renewed (began the renewal that succeeded) less than renew_deadline ago."""
        held = self.clock.monotonic() - self._last_renew
        if self.leading and held < self.config.renew_deadline:
            return
        metrics.FENCED_WRITES.inc()
        if self.leading:
            log.warning("leader election: write refused, no renewal for %.1fs (lease may be lost)", held)
        raise NotLeading(f"not the leader (or the lease may have expired: last renewal {held:.1f}s ago)")

    async def acquire(self) -> None:
        """Block until we hold the lease."""
        while True:
            if await self.try_acquire_or_renew():
                return
            await self.clock.sleep(self.config.retry_period * (1 + random.random() * (JITTER - 1)))

    async def hold(self) -> None:
        """Renew until we cannot; returns the moment leadership is lost."""
        while True:
            await self.clock.sleep(self.config.retry_period)
            remaining = self.config.renew_deadline - (self.clock.monotonic() - self._last_renew)
            renewed = False
            if remaining > 0:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        renewed = await self.try_acquire_or_renew()
            if renewed:
                continue
            now = self.clock.monotonic()
            if self.state.observed is not None and self.state.observed.holder not in ("", self.config.identity):
                log.warning("leader election: lease taken by %s", self.state.observed.holder)
                return
            if now - self._last_renew >= self.config.renew_deadline:
                log.warning("leader election: no renewal for %.1fs; giving up", now - self._last_renew)
                return

    async def release(self) -> None:
        record = self.state.released(self.clock.now())
        if record is None:
            return
        with contextlib.suppress(Exception):
            self.state.observe(await self.store.update(record), self.clock.monotonic())
            metrics.LEADER_TRANSITIONS.labels("released").inc()

    async def run(self, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Forever: acquire, lead until lost, stop leading at once, repeat.

        If `lead()` returns or raises, the lease is released first (so a standby takes
        over without waiting for expiry) and the outcome propagates."""
        while True:
            await self.acquire()
            self._set_leading(True)
            leader_task = asyncio.create_task(lead(), name="leader-tasks")
            holder_task = asyncio.create_task(self.hold(), name="lease-renewal")
            try:
                done, _ = await asyncio.wait({leader_task, holder_task}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                self._set_leading(False)
                await _cancel(leader_task, holder_task)
                await asyncio.shield(self.release())
                raise
            if leader_task in done:
                self._set_leading(False)
                await _cancel(holder_task)
                await self.release()
                leader_task.result()  # re-raise a crash
                return
            # Lost the lease: stop leader work before anything else.
            self._set_leading(False)
            await _cancel(leader_task)
            metrics.LEADER_TRANSITIONS.labels("lost").inc()

    def _set_leading(self, leading: bool) -> None:
        self.leading = leading
        metrics.IS_LEADER.set(1 if leading else 0)
        if leading:
            metrics.LEADER_TRANSITIONS.labels("acquired").inc()
            log.info("became leader", extra={"fields": {"identity": self.config.identity}})
        else:
            log.info("stopped leading", extra={"fields": {"identity": self.config.identity}})


async def _cancel(*tasks: asyncio.Task[None]) -> None:
    await cancel_and_wait(tasks)
