"""Coalesces concurrent load and unload requests into batched `apparmor_parser` runs.

Each profile name is reconciled by its own work-queue worker, which awaits `load` or
`unload` here. Requests arriving within a short window, or while a batch is running, go
into the next batch: at start-up every profile lands in one parser invocation, and a
burst of policy changes costs a few invocations instead of one per profile.

A batch holds the next one back for at most `stall` seconds: a parser that hangs (until
its deadline kills it, minutes later) must not hold every other profile's load with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from varmor.nodeexec import metrics
from varmor.nodeexec.parser_runner import Outcome, ParserRunner


@dataclass
class _Request:
    name: str
    path: Path
    complain: bool
    future: asyncio.Future[Outcome]


class Loader:
    def __init__(
        self,
        runner: ParserRunner,
        stub_dir: Path,
        *,
        window: float = 0.02,
        max_wait: float = 0.5,
        stall: float = 5.0,
    ) -> None:
        self.runner = runner
        self.stub_dir = stub_dir
        self.window = window
        self.max_wait = max_wait
        self.stall = stall
        self._loads: list[_Request] = []
        self._unloads: list[_Request] = []
        self._task: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()
        self.batches = 0  # parser batches run (loads and unloads), for tests and the benchmark
        self.last_check_seconds = 0.0

    async def load(self, name: str, path: Path, *, complain: bool) -> Outcome:
        return await self._submit(self._loads, name, path, complain)

    async def unload(self, name: str) -> Outcome:
        return await self._submit(self._unloads, name, Path(), False)

    async def _submit(self, queue: list[_Request], name: str, path: Path, complain: bool) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        queue.append(_Request(name, path, complain, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="varmor-loader")
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._loads or self._unloads:
            # Gather until a whole window passes with no new request (bounded), so a burst
            # whose callers trickle in (each writes its file first) still makes one batch.
            deadline, seen = loop.time() + self.max_wait, -1
            while seen != len(self._loads) + len(self._unloads) and loop.time() < deadline:
                seen = len(self._loads) + len(self._unloads)
                await asyncio.sleep(self.window)
            loads, self._loads = self._loads, []
            unloads, self._unloads = self._unloads, []
            batch = asyncio.create_task(self._batch(loads, unloads), name="varmor-loader-batch")
            self._batches.add(batch)
            batch.add_done_callback(self._batches.discard)
            try:
                await asyncio.wait({batch}, timeout=self.stall)
            except asyncio.CancelledError:
                batch.cancel()
                raise

    async def _batch(self, loads: list[_Request], unloads: list[_Request]) -> None:
        try:
            await asyncio.gather(self._run_loads(loads), self._run_unloads(unloads))
        except BaseException as exc:
            for request in loads + unloads:
                if not request.future.done():
                    request.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError("cancelled"))
            if not isinstance(exc, Exception):
                raise

    async def _run_loads(self, requests: list[_Request]) -> None:
        if not requests:
            return
        # Requests are per name (the work queue serialises a name), but be safe: the last wins.
        latest = {r.name: r for r in requests}
        files = {name: r.path for name, r in latest.items()}
        started = time.monotonic()
        checked = await self.runner.check_names(files)
        self.last_check_seconds = time.monotonic() - started
        results = {name: outcome for name, outcome in checked.items() if not outcome.ok}
        by_mode: dict[bool, dict[str, Path]] = {False: {}, True: {}}
        for name, request in latest.items():
            if name not in results:
                by_mode[request.complain][name] = request.path
        runs = [self.runner.replace(files, complain=complain) for complain, files in by_mode.items() if files]
        self.batches += len(runs)
        for batch in await asyncio.gather(*runs):
            results.update(batch)
        for request in requests:
            outcome = results[request.name]
            metrics.PROFILE_OPS.labels("load", "ok" if outcome.ok else "error").inc()
            with contextlib.suppress(asyncio.InvalidStateError):
                request.future.set_result(outcome)

    async def _run_unloads(self, requests: list[_Request]) -> None:
        if not requests:
            return
        names = sorted({r.name for r in requests})
        self.batches += 1
        results = await self.runner.remove(names, self.stub_dir)
        for request in requests:
            outcome = results[request.name]
            metrics.PROFILE_OPS.labels("unload", "ok" if outcome.ok else "error").inc()
            with contextlib.suppress(asyncio.InvalidStateError):
                request.future.set_result(outcome)
