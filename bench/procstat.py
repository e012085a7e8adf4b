"""CPU seconds and memory of the benchmark's processes, from /proc, so each figure says
which process paid for it (the API server, etcd, the leader and its parser children, the
simulator itself) and how much of the machine other work took meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
from dataclasses import dataclass, field
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    """One process at one moment: its own CPU seconds, those of its waited-for children
    (the leader's parser runs), and its resident memory now and at its peak."""

    cpu: float
    children: float
    rss_kb: int
    hwm_kb: int


def usage(pid: int) -> Usage:
    if pid == os.getpid():  # finer than clock ticks; its children are the processes measured here
        own = resource.getrusage(resource.RUSAGE_SELF)
        cpu, children = own.ru_utime + own.ru_stime, 0.0
    else:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / TICKS
        children = (int(fields[13]) + int(fields[14])) / TICKS
    status = Path(f"/proc/{pid}/status").read_text()
    rss = re.search(r"VmRSS:\s+(\d+)", status)
    hwm = re.search(r"VmHWM:\s+(\d+)", status)
    return Usage(cpu, children, int(rss.group(1)) if rss else 0, int(hwm.group(1)) if hwm else 0)


def machine() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # without guest time, which is already in user
    return (total - idle) / TICKS, total / TICKS


@dataclass
class Snapshot:
    at: float
    procs: dict[str, Usage]
    busy: float
    total: float


@dataclass
class Meter:
    """Named processes; `snap()` at phase boundaries, `peaks` of RSS sampled in between
    (VmHWM is the whole life's peak; a phase's peak needs sampling)."""

    pids: dict[str, int]
    interval: float = 0.5
    peaks: dict[str, int] = field(default_factory=dict)

    def snap(self) -> Snapshot:
        procs = {}
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError):
                procs[name] = usage(pid)
        busy, total = machine()
        return Snapshot(asyncio.get_running_loop().time(), procs, busy, total)

    def reset_peaks(self) -> None:
        self.peaks = {}

    async def sample(self) -> None:
        """Record each process's highest RSS until cancelled."""
        while True:
            for name, pid in self.pids.items():
                with contextlib.suppress(OSError):
                    rss = usage(pid).rss_kb
                    self.peaks[name] = max(self.peaks.get(name, 0), rss)
            await asyncio.sleep(self.interval)


@dataclass(frozen=True)
class Spent:
    """CPU seconds per process between two snapshots, and the machine's."""

    seconds: float
    cpu: dict[str, float]
    children: dict[str, float]
    busy: float
    capacity: float

    @property
    def apiserver(self) -> float:
        """The API server's cost: kube-apiserver and its etcd."""
        return self.cpu.get("kube-apiserver", 0.0) + self.cpu.get("etcd", 0.0)

    @property
    def others(self) -> float:
        """Machine CPU not spent by the benchmark's processes (other work on the machine)."""
        ours = sum(self.cpu.values()) + sum(self.children.values())
        return max(0.0, self.busy - ours)

    def line(self) -> str:
        parts = [f"{name} {cpu:.1f}" for name, cpu in self.cpu.items()]
        parts += [f"{name}'s children {cpu:.1f}" for name, cpu in self.children.items() if cpu >= 0.05]
        parts.append(f"other work {self.others:.1f}")
        share = 100 * self.busy / self.capacity if self.capacity else 0.0
        return (
            f"CPU seconds over {self.seconds:.1f} s: {', '.join(parts)}; "
            f"machine busy {self.busy:.1f} of {self.capacity:.1f} ({share:.0f} %)"
        )

    def shares(self) -> str:
        """Each process's share of the machine over the phase (of all cores)."""
        if not self.capacity:
            return ""
        cpu = {**self.cpu, **{f"{n}+children": c for n, c in self.children.items() if c >= 0.05}, "other": self.others}
        return ", ".join(f"{name} {100 * c / self.capacity:.0f} %" for name, c in cpu.items())


def spent(a: Snapshot, b: Snapshot) -> Spent:
    cpu = {n: b.procs[n].cpu - a.procs[n].cpu for n in b.procs if n in a.procs}
    children = {n: b.procs[n].children - a.procs[n].children for n in b.procs if n in a.procs}
    return Spent(b.at - a.at, cpu, children, b.busy - a.busy, b.total - a.total)
