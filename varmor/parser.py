"""Thin edge around `apparmor_parser`: every run varmor starts, budgeted (blocking and async).

Always compiles against the kernel-features file pinned in the package (`-M`), never the
host's: without it, on a host with no AppArmor kernel, `--Werror=rule-not-enforced` fails
on abstractions/base, and with the parser's built-in default ABI network rules are
silently dropped. `--warn/--Werror=rule-not-enforced` turn any rule the kernel would not
enforce (fine-grained unix, dbus) into an error instead of a silent no-op.

Every parser process runs under a `CompileBudget` the kernel enforces: RLIMIT_CPU and
RLIMIT_AS set in the child before exec (inherited by the workers it forks for a batch),
its own process group (killed whole on a timeout or when the caller is cancelled), and
PR_SET_PDEATHSIG, so a parser dies with the varmor thread that started it. A single file
compiles in the parser's own process (`--jobs=0`); a batch's workers do not inherit
PR_SET_PDEATHSIG, so if varmor is killed outright mid-batch they end at their own limits. A compile that
hits a limit is a distinct result (`exceeded`), never a pass: some rules (long runs of
`?` after `**`) cost exponential time and memory in the parser's DFA construction.

`compile_check` blocks (the CLI, tests); `run_async`/`compile_profile` are for the event
loop. PR_SET_PDEATHSIG follows the spawning *thread*: spawn from a long-lived thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import math
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence, Sized
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from varmor.profile import NODE_LOCAL_INCLUDE, node_local_include

DEFAULT_PARSER = "/sbin/apparmor_parser"
# Devices used for the node-local include when compile-checking away from a node.
SAMPLE_DISK_DEVICES = ("nvme0n1", "nvme0n1p1", "sda", "sda1", "vda", "vda1")
COMPILE_FLAGS = ("-Q", "-K", "--warn=rule-not-enforced", "--Werror=rule-not-enforced")
BUDGET_REASON = "CompileBudgetExceeded"
CPU, MEMORY, DEADLINE = "cpu", "memory", "deadline"  # what a budgeted run exceeded
# What the parser (C++, glibc) says when RLIMIT_AS makes an allocation fail.
_OOM_MARKERS = ("Memory allocation error", "Out of memory", "bad_alloc", "Cannot allocate memory")
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)  # loaded before any fork


class ParserNotFoundError(RuntimeError):
    pass


@dataclass(frozen=True)
class CompileBudget:
    """Per parser process: CPU-seconds and address space, enforced by the kernel. `wall`
    bounds the run in real time too (0: three times the CPU budget plus 5 s)."""

    cpu_seconds: float = 10.0
    memory_mib: int = 512
    wall_seconds: float = 0.0

    @property
    def wall(self) -> float:
        return self.wall_seconds or self.cpu_seconds * 3 + 5

    def within(self, seconds: float) -> CompileBudget:
        """This budget cut to a deadline of `seconds` (CPU and wall)."""
        return CompileBudget(min(self.cpu_seconds, seconds), self.memory_mib, min(self.wall, seconds))

    def describe(self, exceeded: str) -> str:
        if exceeded == CPU:
            return f"compiling the profile exceeded its budget of {self.cpu_seconds:g} CPU-seconds"
        if exceeded == MEMORY:
            return f"compiling the profile exceeded its budget of {self.memory_mib} MiB of memory"
        return f"compiling the profile did not finish within {self.wall:g} s"


DEFAULT_BUDGET = CompileBudget()


@dataclass(frozen=True)
class CompileResult:
    ok: bool
    message: str
    exceeded: str = ""  # CPU, MEMORY or DEADLINE when the budget, not the text, failed it

    @property
    def reason(self) -> str:
        """The status reason of a failure: CompileBudgetExceeded or Invalid."""
        return "" if self.ok else BUDGET_REASON if self.exceeded else "Invalid"


@dataclass(frozen=True)
class ParserRun:
    rc: int
    out: str
    err: str
    exceeded: str = ""

    @property
    def text(self) -> str:
        return (self.err + "\n" + self.out).strip()


def find_parser() -> str:
    found = shutil.which("apparmor_parser") or (DEFAULT_PARSER if Path(DEFAULT_PARSER).exists() else None)
    if not found:
        raise ParserNotFoundError("apparmor_parser not found (install the 'apparmor' package)")
    return found


def features_file() -> Path:
    """The pinned kernel-features file (a copy of Debian's apparmor-features, which the
    Debian 6.1 kernel's own features are a compatible superset of)."""
    path = Path(str(resources.files("varmor").joinpath("data", "apparmor-features")))
    if not path.is_file():
        raise FileNotFoundError(f"pinned AppArmor features file missing: {path}")
    return path


def compile_command(files: Sequence[Path | str], include_dirs: Sequence[Path | str] = ()) -> list[str]:
    cmd = [find_parser(), "--config-file", "/dev/null", *COMPILE_FLAGS, *single_process(files)]
    cmd += ["-M", str(features_file())]
    for directory in include_dirs:
        cmd += ["-I", str(directory)]
    return cmd + [str(f) for f in files]


def single_process(files: Sized) -> tuple[str, ...]:
    """`--jobs=0` for one file: the parser compiles in its own process instead of a forked
    worker, so the process varmor limits and kills is the one doing the work (a worker
    would lose PR_SET_PDEATHSIG and outlive a killed parent). Batches keep their workers
    (each under the same rlimits) for parallelism."""
    return ("--jobs=0",) if len(files) == 1 else ()


def write_sample_include(directory: Path) -> Path:
    """Write `<directory>/varmor/node-local` with sample devices; returns `directory`."""
    target = directory / NODE_LOCAL_INCLUDE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(node_local_include(SAMPLE_DISK_DEVICES))
    return directory


# -- budgeted processes --------------------------------------------------------------
def _capped(limit: int, which: int) -> tuple[int, int]:
    """(soft, hard) for `which`, never above the hard limit this process already has."""
    _soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    extra = 1 if which == resource.RLIMIT_CPU else 0  # SIGXCPU at soft, SIGKILL a second later
    return limit, limit + extra if hard == resource.RLIM_INFINITY else min(limit + extra, hard)


def _child_setup(budget: CompileBudget) -> Callable[[], None]:
    """The preexec hook: limits computed here (in the parent), applied in the child."""
    parent = os.getpid()
    cpu = _capped(max(1, math.ceil(budget.cpu_seconds)), resource.RLIMIT_CPU)
    memory = _capped(budget.memory_mib * 1024 * 1024, resource.RLIMIT_AS)

    def setup() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
        resource.setrlimit(resource.RLIMIT_CPU, cpu)
        resource.setrlimit(resource.RLIMIT_AS, memory)

    return setup


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def classify(rc: int, text: str, elapsed: float, budget: CompileBudget) -> str:
    """What a finished run exceeded, from how it ended ("" when it ran within budget).

    The parser compiles in forked workers; when one dies by a signal the parent exits
    ECHILD (10) with no message. A process is single-threaded, so it can only have hit the
    CPU limit if at least that much real time passed; sooner, it crashed or something else
    killed it (the OOM killer, an operator), which says nothing about the profile."""
    if any(marker in text for marker in _OOM_MARKERS) or rc == -signal.SIGABRT:
        return MEMORY
    if rc == -signal.SIGXCPU:
        return CPU
    cpu_possible = elapsed >= math.ceil(budget.cpu_seconds) * 0.95
    if cpu_possible and (rc == -signal.SIGKILL or (rc == errno.ECHILD and not text.strip())):
        return CPU
    return ""


def _finished(rc: int, out: str, err: str, elapsed: float, budget: CompileBudget) -> ParserRun:
    return ParserRun(rc, out, err, classify(rc, err + out, elapsed, budget))


def run_sync(cmd: Sequence[str], budget: CompileBudget = DEFAULT_BUDGET, wall: float | None = None) -> ParserRun:
    """Run one parser command under `budget`, blocking; the group dies on timeout or error."""
    proc = subprocess.Popen(
        list(cmd),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=_child_setup(budget),
    )
    started = time.monotonic()
    try:
        out, err = proc.communicate(timeout=budget.wall if wall is None else wall)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        out, err = proc.communicate()
        return ParserRun(proc.returncode, out, err, DEADLINE)
    except BaseException:
        _kill_group(proc.pid)
        proc.wait()
        raise
    return _finished(proc.returncode, out, err, time.monotonic() - started, budget)


RUNNING: set[int] = set()  # pids of parser runs in flight from the event loop (for metrics and tests)


async def run_async(cmd: Sequence[str], budget: CompileBudget = DEFAULT_BUDGET, wall: float | None = None) -> ParserRun:
    """Run one parser command under `budget` without blocking the loop. A timeout, or the
    caller's cancellation, kills the parser's whole process group."""
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        preexec_fn=_child_setup(budget),
    )
    RUNNING.add(proc.pid)
    started = time.monotonic()
    try:
        out, err = await asyncio.wait_for(proc.communicate(), budget.wall if wall is None else wall)
    except TimeoutError:
        _kill_group(proc.pid)
        await proc.wait()
        return ParserRun(proc.returncode if proc.returncode is not None else -9, "", "", DEADLINE)
    except BaseException:
        _kill_group(proc.pid)  # cancelled: nothing outlives the request that started it
        await asyncio.shield(proc.wait())  # reap it (a second cancellation leaves that to the loop)
        raise
    finally:
        RUNNING.discard(proc.pid)
    rc = proc.returncode if proc.returncode is not None else -1
    return _finished(rc, out.decode(errors="replace"), err.decode(errors="replace"), time.monotonic() - started, budget)


# -- compile checks ------------------------------------------------------------------
def _blame(stderr: str, path: Path) -> str:
    """The parser's lines about one file (it names files by path)."""
    return "\n".join(line for line in stderr.splitlines() if str(path) in line)


def _result(run: ParserRun, budget: CompileBudget, path: Path, name: str) -> CompileResult:
    if run.exceeded:
        return CompileResult(False, budget.describe(run.exceeded), run.exceeded)
    return CompileResult(run.rc == 0, "" if run.rc == 0 else _rename(run.text, path, name))


def compile_check(
    texts: Mapping[str, str],
    include_dirs: Sequence[Path | str] | None = None,
    *,
    budget: CompileBudget = DEFAULT_BUDGET,
    timeout: float = 120.0,
) -> dict[str, CompileResult]:
    """Compile each profile text (keyed by any name) under the pinned ABI, in as few
    parser runs as possible, each under `budget` (per parser process; `timeout` bounds a
    whole batch in real time). When a batch fails, the files the parser names are failed
    with its messages and the rest are re-checked, so every failure lands on the right
    profile. `include_dirs` defaults to a directory holding a sample node-local include."""
    results: dict[str, CompileResult] = {}
    with tempfile.TemporaryDirectory(prefix="varmor-compile-") as tmp:
        root = Path(tmp)
        dirs: Sequence[Path | str] = include_dirs if include_dirs is not None else [write_sample_include(root / "inc")]
        paths: dict[Path, str] = {}
        for i, (name, text) in enumerate(texts.items()):
            path = root / f"p{i:05d}.aa"
            path.write_text(text)
            paths[path] = name
        pending = list(paths)
        wall = max(timeout, budget.wall) if len(pending) > 1 else min(timeout, budget.wall)
        while pending:
            run = run_sync(compile_command(pending, dirs), budget, wall)
            if run.rc == 0 and not run.exceeded:
                results.update({paths[p]: CompileResult(True, "") for p in pending})
                break
            blamed = [] if run.exceeded else [p for p in pending if str(p) in run.text]
            if len(pending) == 1:  # it ran alone already: its result is final
                results[paths[pending[0]]] = _result(run, budget, pending[0], paths[pending[0]])
                break
            if not blamed:
                # Output names no file (an include error, a budget hit): one by one.
                for p in pending:
                    one = run_sync(compile_command([p], dirs), budget, min(timeout, budget.wall))
                    results[paths[p]] = _result(one, budget, p, paths[p])
                break
            for p in blamed:
                message = _blame(run.text, p)
                if len(blamed) > 1:
                    # Parallel compiles can interleave lines: re-check alone to be exact.
                    one = run_sync(compile_command([p], dirs), budget, min(timeout, budget.wall))
                    results[paths[p]] = _result(one, budget, p, paths[p])
                    continue
                results[paths[p]] = CompileResult(False, _rename(message, p, paths[p]))
            pending = [p for p in pending if p not in blamed]
    return {name: results[name] for name in texts}


async def compile_profile(
    name: str, text: str, budget: CompileBudget = DEFAULT_BUDGET, *, wall: float | None = None
) -> CompileResult:
    """Compile one profile text from the event loop (the webhook, the leader)."""
    # Made here, not in a thread: a caller cancelled while a thread made it never got the
    # name to remove it.
    tmp = Path(tempfile.mkdtemp(prefix="varmor-compile-"))
    try:
        path = tmp / "profile.aa"
        await asyncio.to_thread(_stage, tmp, path, text)
        run = await run_async(compile_command([path], [tmp / "inc"]), budget, wall)
        return _result(run, budget, path, name)
    finally:
        # Synchronously: a few small files, and a thread started here may never run when the
        # caller is cancelled as its loop shuts down, which left these directories behind.
        shutil.rmtree(tmp, True)


def _stage(tmp: Path, path: Path, text: str) -> None:
    write_sample_include(tmp / "inc")
    path.write_text(text)


def _rename(message: str, path: Path, name: str) -> str:
    return message.replace(str(path), name).strip()
