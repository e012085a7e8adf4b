"""Loads, replaces and removes profiles with the real `apparmor_parser`, in batches.

Flags and the pinned features file come from `varmor.parser`, so what the node loads is
compiled exactly as the leader compile-checked it: `-M <pinned features>` (fixes the ABI
even when the kernel has more), `--Werror=rule-not-enforced` (never a silently dropped
rule), `--config-file /dev/null` (the host's parser.conf cannot change the meaning) and
`-K` (no binary cache on the host). `--subdomainfs` names the securityfs apparmor
directory, which tests point at a stand-in.

One invocation handles many files (the parser compiles them in parallel); `-v` makes it
print one success line per profile, so a failure is attributed to the right profile and
the others in the batch still load. A profile that fails without its own message is
re-run alone to get one. All parser runs are asyncio subprocesses: nothing blocks the loop.

Every run is budgeted (`varmor.parser.run_async`: CPU-seconds and memory per parser
process, its own process group, killed with the agent). A profile that exceeds the budget
fails with `Outcome.exceeded` set, so the agent records it and never retries that content.

A failure that is not the text's is `Outcome.transient`, and the agent retries it with
backoff: a run past its real-time bound (a hang is a property of the node, not of the
content), a parser killed by a signal before it could have used its CPU budget, an exit
whose message names no profile, and a full or read-only profile directory. A batch that
fails that way is re-run one profile at a time, so one bad profile never fails the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from varmor.nodeexec import metrics
from varmor.nodeexec.files import disk_error
from varmor.parser import (
    COMPILE_FLAGS,
    DEADLINE,
    DEFAULT_BUDGET,
    CompileBudget,
    ParserRun,
    features_file,
    find_parser,
    run_async,
    single_process,
)

LOAD_FLAGS = tuple(flag for flag in COMPILE_FLAGS if flag != "-Q")  # -Q would skip the kernel load
_SUCCESS = re.compile(r'^(?:Addition|Replacement|Removal) succeeded for "(?P<name>[^"]+)"\.?$')
_VERSION = re.compile(r"version (\S+)")
MAX_MESSAGE = 2000
TIMEOUT, PARSER, DISK = "timeout", "parser", "disk"  # why a failure is transient


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str = ""
    exceeded: str = ""  # the CPU or memory budget failed it, not the text: never retried
    transient: str = ""  # TIMEOUT, PARSER or DISK: not the text's fault, retried with backoff


Run = ParserRun


@dataclass(frozen=True)
class ParserConfig:
    subdomainfs: Path  # <securityfs>/apparmor
    include_dirs: tuple[Path, ...] = ()
    parser: str = ""  # default: found on PATH
    features: Path | None = None  # default: varmor's pinned features file
    timeout: float = 300.0  # real time, per parser run (a batch may hold many profiles)
    budget: CompileBudget = DEFAULT_BUDGET  # per parser process (each profile of a batch compiles in its own)
    cache_dir: Path | None = None  # compiled-policy cache for enforce-mode loads (None: no cache)


def _trim(message: str) -> str:
    message = message.strip()
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."


def succeeded(stdout: str) -> set[str]:
    """Profile names the parser reported as loaded, replaced or removed (`-v` lines)."""
    return {m["name"] for line in stdout.splitlines() if (m := _SUCCESS.match(line.strip()))}


def blame(text: str, path: Path, name: str) -> str:
    """The parser's lines about one file or profile (it names files by path and profiles
    in quotes)."""
    keys = (str(path), f'"{name}"', f"profile {name} ", f"profile {name}:")
    return "\n".join(line for line in text.splitlines() if any(k in line for k in keys))


class ParserRunner:
    def __init__(self, config: ParserConfig) -> None:
        self.config = config
        self.parser = config.parser or find_parser()
        self.features = config.features or features_file()

    def _base(self) -> list[str]:
        cmd = [self.parser, "--config-file", "/dev/null", *LOAD_FLAGS, "-M", str(self.features)]
        for directory in self.config.include_dirs:
            cmd += ["-I", str(directory)]
        return [*cmd, "--subdomainfs", str(self.config.subdomainfs)]

    async def _exec(self, action: str, args: Sequence[str]) -> Run:
        started = time.monotonic()
        try:
            run = await run_async(args, self.config.budget, self.config.timeout)
        finally:
            metrics.PARSER_DURATION.labels(action).observe(time.monotonic() - started)
        metrics.PARSER_RUNS.labels(action, "ok" if run.rc == 0 and not run.exceeded else "error").inc()
        if run.exceeded == DEADLINE:
            message = f"apparmor_parser did not finish within {self.config.timeout:g}s and was killed"
            return Run(run.rc, run.out, message, run.exceeded)
        return run

    def _unattributed(self, run: Run) -> Outcome:
        """A run's failure that its output pins on no profile (one file was in the run)."""
        if run.exceeded == DEADLINE:
            return Outcome(False, run.err, transient=TIMEOUT)
        if run.exceeded:
            return Outcome(False, self.config.budget.describe(run.exceeded), run.exceeded)
        if disk_error(run.text):
            return Outcome(False, _trim(run.text), transient=DISK)
        if run.rc < 0:
            said = f": {run.text}" if run.text else ""
            return Outcome(False, _trim(f"apparmor_parser was killed by {_signal(-run.rc)}{said}"), transient=PARSER)
        return Outcome(False, _trim(run.text or f"apparmor_parser exited {run.rc}"), transient=PARSER)

    async def version(self) -> str:
        run = await self._exec("version", [self.parser, "--version"])
        match = _VERSION.search(run.out + run.err)
        return match.group(1) if match else "unknown"

    # -- names check ---------------------------------------------------------------
    async def check_names(self, files: Mapping[str, Path]) -> dict[str, Outcome]:
        """Refuse any file that defines a profile other than its own name (and children
        `name//...`): loading it would replace a profile varmor does not own. One `-N`
        run (parse only, ~70 ms for 200 files); files the parser blames, or any surprise,
        are checked one by one."""
        if not files:
            return {}
        cmd = [*self._base(), "-N", *single_process(files), *(str(p) for p in files.values())]
        run = await self._exec("names", cmd)
        names = [n for n in run.out.split("\n") if n]
        found = Counter(n for n in names if "//" not in n)
        # A child is `<file's profile>//...`; anything else (`sshd//x`, `:ns://x`) is not ours.
        strays = sorted(n for n in names if "//" in n and n.split("//", 1)[0] not in files)
        if run.rc == 0 and found == Counter(list(files)) and not strays:
            return {name: Outcome(True) for name in files}
        if len(files) == 1:
            ((name, path),) = files.items()
            message = "" if run.exceeded or run.rc < 0 else blame(run.text, path, name)
            if run.rc != 0 or run.exceeded:
                return {name: Outcome(False, _trim(message)) if message else self._unattributed(run)}
            extra = sorted(set(found) - {name}) + strays
            if extra:
                return {name: Outcome(False, f"profile text defines profiles other than {name}: {', '.join(extra)}")}
            return {name: Outcome(False, f"profile text does not define profile {name}")}
        results: dict[str, Outcome] = {}
        singles = await asyncio.gather(*(self.check_names({n: p}) for n, p in files.items()))
        for single in singles:
            results.update(single)
        return results

    # -- load ------------------------------------------------------------------------
    async def replace(self, files: Mapping[str, Path], *, complain: bool) -> dict[str, Outcome]:
        """Load or replace (`-r` adds a profile that is not loaded yet) every file, whose
        key is the one profile it defines. Returns an outcome per profile."""
        if not files:
            return {}
        cached = self.config.cache_dir is not None and not complain  # the parser never caches complain mode
        run = await self._exec("replace", self._replace_command(files, complain, cached))
        if cached and run.rc != 0 and not run.exceeded and disk_error(run.text):
            # The compiled-policy cache cannot be written (a full or read-only profile
            # dir); loading needs no disk, so what is staged still loads, uncached.
            run = await self._exec("replace", self._replace_command(files, complain, False))
        done = succeeded(run.out)
        results = {name: Outcome(True) for name in files if name in done or (run.rc == 0 and not run.exceeded)}
        failed = {name: path for name, path in files.items() if name not in results}
        killed = bool(run.exceeded) or run.rc < 0  # its output was cut short: no verdict on the rest
        unexplained = []
        for name, path in failed.items():
            message = "" if killed else blame(run.text, path, name)
            if message and len(failed) == 1:
                results[name] = Outcome(False, _trim(message))
            elif len(files) == 1:
                results[name] = self._unattributed(run)
            else:
                unexplained.append(name)  # e.g. a worker killed at the budget: the parser says nothing
        if unexplained:
            # Several failures in one run can interleave their lines: re-run each alone
            # (replacing is idempotent) so every message belongs to its profile.
            singles = await asyncio.gather(*(self.replace({n: files[n]}, complain=complain) for n in unexplained))
            for single in singles:
                results.update(single)
        return {name: results[name] for name in files}

    def _replace_command(self, files: Mapping[str, Path], complain: bool, cached: bool) -> list[str]:
        base = self._base()
        flags = ["-r", "-v", *(["-C"] if complain else []), *single_process(files)]
        if cached:
            base.remove("-K")
            flags += ["-W", "-L", str(self.config.cache_dir)]
        return [*base, *flags, *(str(p) for p in files.values())]

    # -- remove ----------------------------------------------------------------------
    async def remove(self, names: Sequence[str], stub_dir: Path) -> dict[str, Outcome]:
        """Unload profiles by name. Each goes through a stub file `profile <name> {}`, so
        removal never depends on the profile's own text still existing or compiling."""
        if not names:
            return {}
        paths = await asyncio.to_thread(_write_stubs, names, stub_dir)
        run = await self._exec("remove", [*self._base(), "-R", "-v", *(str(p) for p in paths.values())])
        done = succeeded(run.out)
        results = {}
        for name, path in paths.items():
            message = blame(run.text, path, name)
            if run.rc == 0 or name in done or "Profile doesn't exist" in message:
                results[name] = Outcome(True)  # gone already counts as removed
            else:
                results[name] = Outcome(False, _trim(message or run.text))
        await asyncio.to_thread(_remove_stubs, paths, stub_dir)
        return results


def _signal(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _write_stubs(names: Sequence[str], stub_dir: Path) -> dict[str, Path]:
    """Stub files in `stub_dir`, or in a temporary directory when that cannot be written
    (a full or read-only profile dir must not keep a deleted profile in the kernel)."""
    try:
        return _stubs_in(names, stub_dir)
    except OSError:
        where = Path(tempfile.mkdtemp(prefix="varmor-stubs-"))
        try:
            return _stubs_in(names, where)
        except OSError:
            shutil.rmtree(where, ignore_errors=True)
            raise


def _stubs_in(names: Sequence[str], directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / name for name in names}
    for name, path in paths.items():
        path.write_text(f"profile {name} {{}}\n")
    return paths


def _remove_stubs(paths: Mapping[str, Path], stub_dir: Path) -> None:
    for path in paths.values():
        with contextlib.suppress(OSError):  # a stub left in a read-only dir is rewritten next time
            path.unlink(missing_ok=True)
        if path.parent != stub_dir:
            shutil.rmtree(path.parent, ignore_errors=True)
