"""How long a 429 waits before its retry: the server's Retry-After, capped, spread."""

from __future__ import annotations

import random

import pytest

from varmor.kube.client import MAX_RETRY_AFTER, throttle_delay


@pytest.mark.parametrize(
    ("retry_after", "low"),
    [(None, 1.0), ("", 1.0), ("3", 3.0), ("0", 0.0), ("-5", 0.0), ("600", MAX_RETRY_AFTER), ("Wed, 21 Oct", 1.0)],
)
def test_retry_after_is_honoured_capped_and_spread_by_up_to_half(retry_after: str | None, low: float) -> None:
    delays = [throttle_delay(retry_after, random.Random(seed)) for seed in range(200)]
    assert all(low <= d <= low * 1.5 for d in delays)
    if low:
        assert len(set(delays)) > 100  # spread: a throttled fleet does not come back in one wave
