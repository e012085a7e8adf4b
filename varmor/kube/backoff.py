"""Exponential backoff with jitter: the one retry cadence of every loop that talks to
the API server (watches, status writers, registration, certificates).

Jitter spreads a fleet of agents that all failed at the same moment (an API server
restart) so they do not return in lockstep.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


def exponential(failures: int, base: float, cap: float) -> float:
    """`base` doubled per consecutive failure before this one, at most `cap`."""
    return float(min(base * 2 ** max(failures, 0), cap))


@dataclass
class Backoff:
    base: float = 0.5
    cap: float = 30.0
    jitter: float = 1.0  # each delay is scaled by a factor in [1, 1 + jitter)
    rng: random.Random = field(default_factory=random.Random, repr=False)
    failures: int = 0

    def next(self) -> float:
        """The delay before the next attempt; grows with each consecutive failure."""
        delay = exponential(self.failures, self.base, self.cap)
        self.failures += 1
        return float(delay * (1 + self.rng.random() * self.jitter))

    def reset(self) -> None:
        self.failures = 0
