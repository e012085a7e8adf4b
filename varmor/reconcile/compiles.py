"""The leader's compile gate: every profile compiled, under the budget, before any
ArmorProfile is written.

A compile never runs in a reconcile worker. `check` answers from a verdict cache keyed by
the profile's sha256; on a miss it starts the compile in a task the gate owns, raises
`CompilePending`, and the worker moves on to other policies; the key is queued again when
the verdict lands. Compiles run in two bounded lanes: every new content first gets a short
probe (`probe_seconds` of CPU) in the fast lane; content that exceeds the probe finishes in
the slow lane under the full budget. So N slow policies hold the fast lane for at most the
probe each, policies that compile in milliseconds keep getting through, and the slow lane
(small, default one slot) caps what slow content can cost the leader. Unchanged content is
compiled once per leader; an ArmorProfile already holding the same sha256 was compiled by
the leader that wrote it and is not compiled again.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable

from prometheus_client import Counter, Gauge

from varmor.kube.client import JSON
from varmor.kube.errors import TemporaryError
from varmor.parser import CPU, DEADLINE, CompileBudget, CompileResult, ParserNotFoundError, compile_profile
from varmor.profile.builder import BuiltProfile

log = logging.getLogger(__name__)

LANES = ("probe", "full")
RUNNING = Gauge("varmor_leader_compiles_running", "Profile compiles running in the leader, by lane.", ["lane"])
COMPILES = Counter(
    "varmor_leader_compiles_total",
    "Profile compiles finished by the leader, by result (ok, invalid, over_budget, unchecked, error).",
    ["result"],
)
for _lane in LANES:
    RUNNING.labels(_lane)
for _result in ("ok", "invalid", "over_budget", "unchecked", "error"):
    COMPILES.labels(_result)


class CompilePending(Exception):
    """The profile is compiling; its policy is queued again when the verdict lands."""


class CompileGate:
    def __init__(
        self,
        budget: CompileBudget,
        *,
        slots: int = 2,
        slow_slots: int = 1,
        probe_seconds: float = 1.0,
        cache_size: int = 4096,
    ) -> None:
        self.budget = budget
        self.probe = CompileBudget(min(probe_seconds, budget.cpu_seconds), budget.memory_mib)
        self._lanes = {"probe": asyncio.Semaphore(slots), "full": asyncio.Semaphore(slow_slots)}
        self._verdicts: OrderedDict[str, CompileResult] = OrderedDict()
        self._cache_size = cache_size
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._waiters: dict[str, list[Callable[[], None]]] = {}
        self._broken: dict[str, str] = {}  # sha256 -> why the compile could not run
        self.running: dict[str, str] = {}  # sha256 -> lane, while its parser runs (tests, the gauge)

    def check(
        self, built: BuiltProfile | None, current: JSON | None, notify: Callable[[], None]
    ) -> tuple[str, str] | None:
        """None when the profile may be written (or there is none), (reason, message) when it
        may not; CompilePending while it compiles (`notify` is called when it is done).
        `current` is the policy's ArmorProfile, if any: its content needs no new compile."""
        if built is None:
            return None
        key = built.sha256
        if current is not None and current["spec"]["profile"]["sha256"] == key:
            return None
        verdict = self._verdicts.get(key)
        if verdict is None:
            why = self._broken.pop(key, None)
            if why is not None:
                raise TemporaryError(f"the profile could not be compiled: {why}", delay=10.0)
            self._waiters.setdefault(key, []).append(notify)
            if key not in self._tasks:
                self._tasks[key] = asyncio.create_task(self._compile(built), name=f"compile-{key[:12]}")
            raise CompilePending(key)
        self._verdicts.move_to_end(key)
        if verdict.ok:
            return None
        if verdict.exceeded:
            return verdict.reason, f"{verdict.message}; no ArmorProfile is written for it"
        return verdict.reason, f"the generated profile does not compile: {verdict.message}"

    async def _compile(self, built: BuiltProfile) -> None:
        key = built.sha256
        try:
            verdict = await self._lane("probe", built, self.probe)
            if verdict.exceeded in (CPU, DEADLINE) and self.probe.cpu_seconds < self.budget.cpu_seconds:
                verdict = await self._lane("full", built, self.budget)
            result = "ok" if verdict.ok else "over_budget" if verdict.exceeded else "invalid"
        except ParserNotFoundError as exc:
            log.error("the leader cannot compile profiles (%s); writing them unchecked", exc)
            verdict, result = CompileResult(True, ""), "unchecked"
        except Exception as exc:
            log.exception("compiling profile %s failed to run", built.name)
            self._broken[key] = type(exc).__name__
            verdict, result = None, "error"
        finally:
            self._tasks.pop(key, None)
        COMPILES.labels(result).inc()
        if verdict is not None:
            self._verdicts[key] = verdict
            if len(self._verdicts) > self._cache_size:
                self._verdicts.popitem(last=False)
        for notify in self._waiters.pop(key, []):
            notify()

    async def _lane(self, lane: str, built: BuiltProfile, budget: CompileBudget) -> CompileResult:
        async with self._lanes[lane]:
            self.running[built.sha256] = lane
            RUNNING.labels(lane).inc()
            try:
                return await compile_profile(built.name, built.text, budget)
            finally:
                RUNNING.labels(lane).dec()
                self.running.pop(built.sha256, None)

    async def run(self) -> None:
        """Own the compiles for the leader's lifetime: cancelling this (the lease is lost)
        cancels them, which kills their parsers."""
        try:
            await asyncio.Event().wait()
        finally:
            tasks = list(self._tasks.values())
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._waiters.clear()
