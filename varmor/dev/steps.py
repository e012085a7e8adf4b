"""One long setup step, visible: what it does, how long it usually takes, its progress,
and the time it took; quiet when it has nothing to do (cached).

    python -m varmor.dev.steps NAME EXPECTED LOG -- COMMAND...

The command's standard output is passed through at the end (the build scripts print the
directory they built, which `hack/setup.sh` reads); its standard error goes to LOG, one
line per unit of work (`go build -v` prints each package it compiles, `go mod` each
module it downloads), and the count of those lines is the progress. A step that ends
within `quiet_after` seconds prints nothing. A failed step prints the tail of its log and
where the full log is.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

TAIL = 25


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Step:
    def __init__(
        self,
        name: str,
        expected: str,
        log: Path,
        *,
        out: TextIO | None = None,
        quiet_after: float = 2.0,
        report_every: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name, self.expected, self.log = name, expected, log
        self.out = out or sys.stderr
        self.quiet_after, self.report_every, self.clock = quiet_after, report_every, clock
        self.count = 0
        self.tail: deque[str] = deque(maxlen=TAIL)

    def _drain(self, stream: TextIO, log: TextIO) -> None:
        for line in stream:
            log.write(line)
            log.flush()
            self.tail.append(line.rstrip("\n"))
            self.count += 1

    def _say(self, text: str) -> None:
        print(f"setup: {self.name}: {text}", file=self.out, flush=True)

    def run(self, argv: Sequence[str]) -> tuple[int, str]:
        """(exit status, standard output)."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        start = self.clock()
        announced = False
        next_report = start + self.report_every
        with self.log.open("w", encoding="utf-8", errors="replace") as log:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
            assert proc.stdout is not None
            assert proc.stderr is not None
            drainer = threading.Thread(target=self._drain, args=(proc.stderr, log), daemon=True)
            drainer.start()
            output: list[str] = []
            stdout = proc.stdout
            reader = threading.Thread(target=lambda: output.append(stdout.read()))
            reader.start()
            while True:
                now = self.clock()
                if not announced and now - start >= self.quiet_after:
                    announced = True
                    self._say(f"running (usually {self.expected} on a 2-core machine; log: {self.log})")
                if announced and now >= next_report:
                    next_report = now + self.report_every
                    self._say(f"{self.count} steps so far, {_duration(now - start)} elapsed")
                try:
                    rc = proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    pass
            drainer.join()
            reader.join()
            proc.stdout.close()
            proc.stderr.close()
        elapsed = self.clock() - start
        if rc != 0:
            self._say(f"FAILED (exit {rc}) after {_duration(elapsed)}; the last lines of its log:")
            for line in self.tail:
                print(f"    {line}", file=self.out)
            print(f"setup: the full log: {self.log}", file=self.out, flush=True)
        elif announced:
            self._say(f"done in {_duration(elapsed)} ({self.count} steps)")
        return rc, "".join(output)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m varmor.dev.steps", description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("expected", help='how long it usually takes, e.g. "7 min"')
    parser.add_argument("log", type=Path)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    rc, output = Step(args.name, args.expected, args.log).run(command)
    sys.stdout.write(output)
    return rc


if __name__ == "__main__":
    sys.exit(main())
