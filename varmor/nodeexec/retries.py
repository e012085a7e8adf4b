"""When the agent tries a failed profile again, and the timers that make it do so.

What failed a load decides (`RetryPolicy`): the text's own fault (the parser names the
profile) waits for the next event or resync after `content` seconds; a compile over the
CPU or memory budget is never retried until the content changes; anything that is not the
text's fault (a parser that hung past its deadline, was killed, or failed naming no
profile; a full or read-only profile dir) is retried by the agent itself, with backoff.

A deadline overrun is transient on purpose: CPU-seconds and memory are measured on the
parser process and are a property of the content, but real time is a property of the node
(a loaded box, a stopped or hung parser); treating it as permanent left a profile unloaded
until someone changed it.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from varmor.kube.backoff import exponential
from varmor.nodeexec import metrics

CONTENT, BUDGET, TRANSIENT = "content", "budget", "transient"  # what failed a load
# Why a transient failure was not the text's (parser_runner's TIMEOUT, PARSER, DISK) -> status prefix.
_PREFIXES = {"timeout": "ParserTimeout", "parser": "ParserFailed", "disk": "ProfileDirUnwritable"}


def describe(kind: str, why: str, message: str, loaded: str | None, preloaded: bool) -> str:
    """A failure's message in ArmorNode `failures`: the cause first, what stays in the
    kernel (`loaded`: the sha256 this agent loaded; `preloaded`: a version from before
    the agent started), then what the agent does about it."""
    if loaded is not None:
        message += f" (the version with sha256 {loaded} stays loaded)"
    elif preloaded:
        message += " (a version loaded before the agent started stays in the kernel)"
    if kind == BUDGET:
        return f"CompileBudgetExceeded: {message}; not retried until the profile changes"
    if kind == TRANSIENT:
        return f"{_PREFIXES.get(why, 'ParserFailed')}: {message}; retried by the agent with backoff"
    return message


@dataclass(frozen=True)
class Attempt:
    """The last failed load of one profile version, and when it may be tried again."""

    sha256: str
    mode: str
    not_before: float  # monotonic seconds; inf: never (over the compile budget)
    failures: int = 1  # consecutive transient failures of this version (the backoff exponent)

    def blocks(self, sha256: str, mode: str, now: float, forced: bool) -> bool:
        """Whether a sync of (sha256, mode) at `now` must not try again yet. Forcing (a
        resync repair, a due retry) overrides the wait, never the budget."""
        if (self.sha256, self.mode) != (sha256, mode):
            return False
        return self.not_before == math.inf or (now < self.not_before and not forced)


@dataclass(frozen=True)
class RetryPolicy:
    """Transient failures back off from `base` to `cap`, jittered by up to `jitter` so a
    fleet that failed together does not come back in lockstep."""

    base: float = 1.0
    cap: float = 60.0
    content: float = 60.0
    jitter: float = 0.5

    def after(self, kind: str, previous: Attempt | None, sha256: str, mode: str, now: float, rand: float) -> Attempt:
        """The attempt record after a failure of `kind` at `now`; `rand` in [0, 1) jitters."""
        if kind == BUDGET:
            return Attempt(sha256, mode, math.inf)
        if kind == CONTENT:
            return Attempt(sha256, mode, now + self.content)
        same = previous is not None and (previous.sha256, previous.mode) == (sha256, mode)
        failures = previous.failures + 1 if previous is not None and same else 1
        delay = min(self.cap, exponential(failures - 1, self.base, self.cap) * (1 + rand * self.jitter))
        return Attempt(sha256, mode, now + delay, failures)


class Retries:
    """Per profile name: its last failed load, and a timer that calls `due(name)` when a
    transient failure may be tried again (or a refused write of its files)."""

    def __init__(
        self,
        policy: RetryPolicy,
        due: Callable[[str], None],
        *,
        monotonic: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self.due = due
        self.monotonic = monotonic
        self.rng = rng or random.Random()
        self.attempts: dict[str, Attempt] = {}
        self._refused: dict[str, Attempt] = {}  # names whose files could not be written (no failed load)
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def blocks(self, name: str, sha256: str, mode: str, forced: bool) -> bool:
        attempt = self.attempts.get(name)
        return attempt is not None and attempt.blocks(sha256, mode, self.monotonic(), forced)

    def failed(self, name: str, kind: str, sha256: str, mode: str, why: str) -> Attempt:
        """Record a failed load; a transient one (`why`: timeout, parser or disk) is
        scheduled again."""
        attempt = self.policy.after(kind, self.attempts.get(name), sha256, mode, self.monotonic(), self.rng.random())
        self.attempts[name] = attempt
        if kind == TRANSIENT:
            self._schedule(name, attempt.not_before, why)
        else:
            self._cancel(name)  # the text's own fault now: no retry of an earlier transient one
        return attempt

    def again(self, name: str, why: str) -> None:
        """Sync `name` again later though it did not fail to load (a write of its files
        was refused), on the same backoff."""
        previous = self._refused.get(name)
        attempt = self.policy.after(TRANSIENT, previous, "", "", self.monotonic(), self.rng.random())
        self._refused[name] = attempt
        self._schedule(name, attempt.not_before, why)

    def wrote(self, name: str) -> None:
        """`name`'s files were written: the next refusal starts the backoff over."""
        self._refused.pop(name, None)

    def clear(self, name: str) -> None:
        """`name` loaded, or is gone: no failed load to retry."""
        self.attempts.pop(name, None)
        self._cancel(name)

    def _cancel(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()

    def _schedule(self, name: str, when: float, why: str) -> None:
        metrics.PROFILE_RETRIES.labels(why).inc()
        self._cancel(name)

        def fire() -> None:
            self._timers.pop(name, None)
            self.due(name)

        delay = max(0.0, when - self.monotonic())
        self._timers[name] = asyncio.get_running_loop().call_later(delay, fire)
