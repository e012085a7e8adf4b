"""The agent's sync loop: ArmorProfiles (cluster-wide) -> profile files -> kernel.

Start-up: detect AppArmor -> read what the kernel has -> write the node-local include ->
load every current ArmorProfile (one batched parser run) -> unload orphaned `varmor-*`
profiles and delete stale files -> ready. The same path restores everything after a
reboot (the kernel starts empty; the files in the profile dir are only a fallback for the
host's own AppArmor service).

Steady state: informer events enqueue profile names; a worker per name compares the
desired profile with what it loaded and loads, replaces or unloads through the batching
Loader. A profile text is loaded from a file named by its content (`varmor/loads/`, with
the parser's compiled-policy cache beside it, so unchanged profiles reload in
milliseconds after a restart or a reboot) and copied into the profile dir only once the
kernel took it, so the profile dir never holds a text that failed.

Failures that are not the profile's own (a parser that hung, was killed or failed naming
no profile; a full or read-only profile dir) are in `failures` while they last and are
retried by the agent itself (`retries`); a profile dir that refuses writes is also the
condition ProfileDirWritable=False until every refused write went through (`files.Writes`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes.aio import client

from varmor import __version__, api
from varmor.api import DEFAULT_HEARTBEAT
from varmor.clock import utc_now
from varmor.kube.backoff import Backoff
from varmor.kube.client import JSON
from varmor.kube.informer import EventType, Informer, Key, object_key
from varmor.kube.kube import Kube
from varmor.kube.tasks import task_group
from varmor.kube.workqueue import WorkQueue
from varmor.loadreport import Ledger
from varmor.nodeexec import kernel, metrics, state
from varmor.nodeexec.files import ProfileDir, Writes, is_varmor_name
from varmor.nodeexec.kernel import Detection
from varmor.nodeexec.loader import Loader
from varmor.nodeexec.parser_runner import ParserConfig, ParserRunner
from varmor.nodeexec.retries import BUDGET, CONTENT, TRANSIENT, Retries, RetryPolicy, describe
from varmor.nodeexec.state import Desired, Failed, Loaded, NodeState, choose
from varmor.nodeexec.status import StatusWriter
from varmor.parser import DEFAULT_BUDGET, CompileBudget, ParserNotFoundError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AgentConfig:
    node_name: str
    profile_dir: Path
    securityfs: Path
    enabled_file: Path
    partitions: Path
    parser: str = ""
    parser_base_dir: Path | None = Path("/etc/apparmor.d")  # searched before the profile dir
    resync_seconds: float = 300.0
    retry_seconds: float = 60.0  # a profile that failed at one hash is retried after this (never: over budget)
    retry_base: float = 1.0  # first retry of a failure that is not the profile's (then backoff up to retry_seconds)
    parser_timeout: float = 300.0  # real time one parser run may take before it is killed (and retried)
    status_debounce: float = 0.5
    heartbeat_seconds: float = DEFAULT_HEARTBEAT  # renew ArmorNode heartbeatTime; 0 disables
    workers: int = 64
    budget: CompileBudget = DEFAULT_BUDGET  # per apparmor_parser process


class Agent:
    def __init__(self, config: AgentConfig, api_client: client.ApiClient) -> None:
        self.config = config
        self.kube = Kube(api_client, component="agent", instance=config.node_name)
        self.files = ProfileDir(config.profile_dir)
        self.informer = Informer(api_client, api.ARMOR_PROFILE, resync_seconds=config.resync_seconds)
        self.informer.add_handler(self._on_event)
        self.queue: WorkQueue[str] = WorkQueue(self.sync, concurrency=config.workers, name="agent")
        self.state = NodeState()
        self.desired: dict[str, Desired] = {}
        self.detection = Detection(False, "not detected yet")
        self.parser_version = ""
        self.synced = False  # initial sync finished (reported in the ArmorNode)
        self.ready = False  # ... and reported (the readiness check)
        self.ledger = Ledger()  # what arrived and what was acted on: the load report
        self._progress: int | None = None
        self.status = StatusWriter(
            self.kube,
            config.node_name,
            self._status,
            debounce=config.status_debounce,
            heartbeat=config.heartbeat_seconds,
            key=lambda status: status | {"watermark": self._progress},
        )
        self.loader: Loader | None = None
        self._index: dict[str, set[Key]] = {}
        self._force: set[str] = set()
        policy = RetryPolicy(config.retry_base, config.retry_seconds, config.retry_seconds)
        self.retries = Retries(policy, self._retry_due, monotonic=time.monotonic)
        self.writes = Writes(self.files, utc_now, self._changed, Backoff(config.retry_base, config.retry_seconds))
        self._node_local = ""
        self._started = self._last_phase = time.monotonic()
        self.phases: dict[str, float] = {}  # start-up phase -> seconds (logged, and for the benchmark)
        self.synced_listeners: list[Callable[[str], None]] = []  # called with a name after each sync of it

    def _phase(self, name: str) -> None:
        now = time.monotonic()
        self.phases[name] = round(now - self._last_phase, 3)
        self._last_phase = now

    # -- status ----------------------------------------------------------------------
    def _status(self) -> JSON:
        report = self.ledger.report(functools.partial(state.outcome, self.state, self.desired))
        self._progress = report.progress
        return state.node_status(
            supported=self.detection.supported,
            reason=self.detection.reason,
            parser_version=self.parser_version,
            agent_version=__version__,
            ready=self.synced,
            report=report,
            loaded=len(self.state.loaded),
            conditions=[c for c in [self.writes.health.condition] if c],
        )

    def _changed(self) -> None:
        metrics.PROFILES_LOADED.set(len(self.state.loaded))
        metrics.PROFILES_FAILED.set(len(self.state.failures))
        metrics.PROFILE_DIR_WRITABLE.set(1 if self.writes.health.writable else 0)
        self.status.mark()

    async def explain_missing(self, name: str) -> str | None:
        """Why profile `name` is not in this node's kernel, or None when it is there. A
        profile this agent loaded and the kernel no longer has (removed outside varmor) is
        reloaded now rather than at the next refresh."""
        if not self.detection.supported:
            return f"this node cannot load AppArmor profiles ({self.detection.reason})"
        if name in kernel.top_level(await asyncio.to_thread(kernel.read_loaded, self.config.securityfs)):
            return None
        why = state.missing_reason(self.state, self.desired, name, synced=self.synced)
        if why == state.REMOVED_OUTSIDE:
            log.warning("profile %s was removed from the kernel outside varmor; loading it again", name)
            self._force.add(name)
            self.queue.add(name)
        return why

    def owner(self, profile: str) -> Desired | None:
        """The ArmorProfile a (possibly child) profile name comes from, for attribution."""
        return self.desired.get(profile.split("//", 1)[0])

    # -- start-up --------------------------------------------------------------------
    async def _detect(self) -> ParserRunner | None:
        cfg = self.config
        self.detection = await asyncio.to_thread(kernel.detect, cfg.securityfs, cfg.enabled_file)
        try:
            # The image's own abstractions first: -I directories are searched before the
            # parser's base dir, and the host's profile dir may hold other versions.
            base = [cfg.parser_base_dir] if cfg.parser_base_dir and cfg.parser_base_dir.is_dir() else []
            runner = ParserRunner(
                ParserConfig(
                    subdomainfs=kernel.apparmor_dir(cfg.securityfs),
                    include_dirs=tuple(dict.fromkeys([*base, cfg.profile_dir])),
                    parser=cfg.parser,
                    timeout=cfg.parser_timeout,
                    budget=cfg.budget,
                )
            )
            self.parser_version = await runner.version()
            self.files.cache_key = re.sub(r"[^A-Za-z0-9._-]", "_", f"parser-{self.parser_version}-varmor-{__version__}")
            mkdir = functools.partial(self.files.cache_dir.mkdir, parents=True, exist_ok=True)
            if await self.writes.best_effort(mkdir):  # the parser makes only the last level; else: no cache
                runner.config = dataclasses.replace(runner.config, cache_dir=self.files.cache_dir)
        except (ParserNotFoundError, FileNotFoundError, PermissionError) as exc:
            if self.detection.supported:
                self.detection = Detection(False, f"cannot run apparmor_parser: {exc}")
            return None
        return runner if self.detection.supported else None

    async def initial_sync(self) -> None:
        """Load everything current, unload orphans, delete stale files."""
        assert self.loader is not None
        kernel_loaded = kernel.top_level(await asyncio.to_thread(kernel.read_loaded, self.config.securityfs))
        self._node_local = await self.writes.node_local(self.config.partitions) or ""
        self._phase("read-kernel")
        names = sorted(self._index)
        await asyncio.gather(*(self._initial(name, kernel_loaded) for name in names))
        self._phase("load")
        orphans = sorted(n for n in kernel_loaded if is_varmor_name(n) and n not in self._index)
        if orphans:
            log.info("unloading %d orphaned profiles", len(orphans), extra={"fields": {"profiles": orphans}})
        await asyncio.gather(*(self._initial(name, kernel_loaded) for name in orphans))
        await self._tidy()
        self._phase("orphans")

    async def _tidy(self) -> None:
        desired = {n: d.sha256 for n, d in self.desired.items()}
        await self.writes.tidy(desired, {n: p.sha256 for n, p in self.state.loaded.items()})

    async def run(self) -> None:
        runner = await self._detect()
        metrics.SUPPORTED.set(1 if runner else 0)
        self._phase("detect")
        await self.status.ensure_retrying()
        self._phase("armornode")
        async with task_group() as group:
            group.create_task(self.status.run(), name="agent-status")
            if runner is None:
                log.warning("node %s is Unsupported: %s", self.config.node_name, self.detection.reason)
                self.synced = self.ready = True  # nothing to load; never block this pod's other roles
                metrics.READY.set(1)
                self.status.mark()
                return  # the group keeps the status writer (heartbeats) running
            stall = min(5.0, self.config.parser_timeout / 10)  # a hung run holds other loads this long at most
            self.loader = Loader(runner, self.config.profile_dir / "varmor" / "stubs", stall=stall)
            self.status.mark()
            group.create_task(self.informer.run(), name="agent-informer")
            await self.informer.wait_synced()
            self._phase("list")
            await self.initial_sync()
            self.synced = True
            self._changed()
            try:  # report before declaring readiness, so readiness implies a reported status
                await self.status.flush()
            except Exception as exc:
                log.warning("could not report the initial sync yet: %r", exc)
            self._phase("report")
            self.ready = True
            elapsed = time.monotonic() - self._started
            metrics.READY.set(1)
            metrics.INITIAL_SYNC_SECONDS.set(elapsed)
            log.info(
                "initial sync done in %.2fs: %d loaded, %d failed",
                elapsed,
                len(self.state.loaded),
                len(self.state.failures),
                extra={"fields": {"phases": self.phases}},
            )
            self._changed()
            group.create_task(self.queue.run(), name="agent-queue")
            group.create_task(self._refresh_loop(), name="agent-refresh")

    # -- events ----------------------------------------------------------------------
    async def _on_event(self, event: EventType, obj: JSON) -> None:
        key = object_key(obj)
        name = key[1]
        # Another writer's update of an ArmorProfile's status (the leader's counts) changes
        # nothing to load: it neither wakes the writer nor costs a sync.
        act = event == "RESYNC" or self.ledger.received(key, obj, deleted=event == "DELETED")
        keys = self._index.setdefault(name, set())
        if event == "DELETED":
            keys.discard(key)
            if not keys:
                del self._index[name]
        else:
            keys.add(key)
        # Queued even before the initial sync: the queue runs after it, and a name that
        # is already in sync costs nothing, while a change during start-up is not lost.
        if act:
            self.status.mark()
            self.queue.add(name)

    async def _refresh_loop(self) -> None:
        """Every resync period: follow disk changes (node-local include) and repair drift
        (a varmor profile unloaded or left behind by someone else). While a write to the
        profile dir is outstanding, sooner: with backoff, until it went through."""
        while True:
            await self.writes.pause(self.config.resync_seconds)
            try:
                await self.refresh()
            except Exception:
                log.exception("agent refresh failed")

    async def refresh(self) -> None:
        if self.writes.tidy_due:
            await self._tidy()
        node_local = await self.writes.node_local(self.config.partitions)
        if node_local is not None and node_local != self._node_local:
            log.info("disk devices changed; reloading every profile")
            self._node_local = node_local
            self._force.update(self.desired)
        loaded = kernel.top_level(await asyncio.to_thread(kernel.read_loaded, self.config.securityfs))
        missing = {n for n in self.state.loaded if n not in loaded}
        self._force.update(missing)
        stray = {n for n in loaded if is_varmor_name(n) and n not in self._index}
        for name in sorted(self._force | stray):
            self.queue.add(name)

    # -- per-profile sync --------------------------------------------------------------
    async def _initial(self, name: str, kernel_loaded: dict[str, str]) -> None:
        try:
            await self.sync(name, kernel_loaded)
        except Exception:
            log.exception("initial sync of %s failed; retrying later", name)
            self.queue.add(name)

    def _objects(self, name: str) -> list[JSON]:
        cache = self.informer.cache
        return [cache[k] for k in sorted(self._index.get(name, ())) if k in cache]

    async def sync(self, name: str, kernel_loaded: dict[str, str] | None = None) -> None:
        """Make the kernel match the ArmorProfiles named `name`. Raises on transient
        errors (the queue retries); a profile that does not compile is a recorded failure."""
        token = self.ledger.begin(name)
        try:
            await self._sync(name, kernel_loaded)
            self.ledger.settle(name, token)
            self.status.mark()
        finally:
            for listener in self.synced_listeners:
                listener(name)

    async def _sync(self, name: str, kernel_loaded: dict[str, str] | None = None) -> None:
        assert self.loader is not None
        desired, rejected = choose(self._objects(name))
        previous = self.state.loaded.get(name)
        if desired is None and rejected and previous is not None:
            # A refused new version of a loaded profile: unloading it would leave the pods
            # running under it unconfined. The loaded version stays until the object goes.
            failure = rejected[0]
            message = f"{failure.message} (the version with sha256 {previous.sha256} stays loaded)"
            self._set_failure(name, Failed(failure.namespace, failure.sha256, message))
            return
        if desired is None:
            self.desired.pop(name, None)
            self.retries.clear(name)
            if is_varmor_name(name):
                await self._unload(name, kernel_loaded)
            self._set_failure(name, rejected[0] if rejected else None)
            self._force.discard(name)
            return
        self.desired[name] = desired
        conflict = rejected[0] if rejected else None
        if previous == Loaded(desired.namespace, desired.sha256, desired.mode) and name not in self._force:
            self._set_failure(name, conflict)
            if name in self.writes.health.pending:  # loaded, but its copy in the profile dir was refused
                await self._write(name, self.files.keep, name, desired.text, None)
            return
        if self.retries.blocks(name, desired.sha256, desired.mode, name in self._force):
            return
        self._force.discard(name)
        staged = self.files.load_path(name, desired.sha256)
        complain = desired.mode == "complain"
        if not await self.writes.run(name, self.files.stage, name, staged, desired.text, complain):
            await self.writes.best_effort(self.files.unstage, name, staged, previous.mode if previous else None)
            message = f"cannot write its load file in {self.files.root}: {self.writes.health.pending.get(name)}"
            self._failed(name, desired, TRANSIENT, "disk", message, kernel_loaded)
            return
        outcome = await self.loader.load(name, staged, complain=complain)
        if outcome.ok:
            # The kernel has it now, whatever the profile dir does next.
            self.state.loaded[name] = Loaded(desired.namespace, desired.sha256, desired.mode)
            self.retries.clear(name)
            self._set_failure(name, conflict)
            replaced = previous.sha256 if previous is not None and previous.sha256 != desired.sha256 else None
            await self._write(name, self.files.keep, name, desired.text, replaced)
            return
        await self.writes.best_effort(self.files.unstage, name, staged, previous.mode if previous else None)
        kind = BUDGET if outcome.exceeded else TRANSIENT if outcome.transient else CONTENT
        message = outcome.message.replace(str(staged), name)
        self._failed(name, desired, kind, outcome.transient, message, kernel_loaded)

    def _failed(
        self, name: str, desired: Desired, kind: str, why: str, message: str, kernel_loaded: dict[str, str] | None
    ) -> None:
        """Record a failed load of `desired`; one that is not the text's (`why`) is retried."""
        previous = self.state.loaded.get(name)
        before = bool(previous is None and kernel_loaded and name in kernel_loaded)
        attempt = self.retries.failed(name, kind, desired.sha256, desired.mode, why)
        message = describe(kind, why, message, previous.sha256 if previous else None, before)
        log.warning("profile %s failed to load (attempt %d): %s", name, attempt.failures, message)
        self._set_failure(name, Failed(desired.namespace, desired.sha256, message))

    async def _write(self, name: str, action: Callable[..., object], *args: Any) -> None:
        """Write `name`'s files; when refused, sync `name` again later, with backoff."""
        if await self.writes.run(name, action, *args):
            self.retries.wrote(name)
        else:
            self.retries.again(name, "disk")

    def _retry_due(self, name: str) -> None:
        if name in self.retries.attempts:  # a failed load; else a refused write: no reload needed
            self._force.add(name)
        self.queue.add(name)

    async def _unload(self, name: str, kernel_loaded: dict[str, str] | None) -> None:
        assert self.loader is not None
        if kernel_loaded is None:
            kernel_loaded = kernel.top_level(await asyncio.to_thread(kernel.read_loaded, self.config.securityfs))
        if name in kernel_loaded:
            outcome = await self.loader.unload(name)
            if not outcome.ok:
                raise RuntimeError(f"cannot unload {name}: {outcome.message}")
            log.info("unloaded profile %s", name)
        gone = self.state.loaded.pop(name, None)  # not in the kernel, whatever the profile dir does next
        if gone is not None:
            self._changed()
        await self._write(name, self.files.remove, name, gone.sha256 if gone else None)

    def _set_failure(self, name: str, failure: Failed | None) -> None:
        current = self.state.failures.get(name)
        if failure is None:
            self.state.failures.pop(name, None)
        else:
            self.state.failures[name] = failure
        if current != failure or failure is None:
            self._changed()
