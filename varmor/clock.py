"""Time, in one place: the clock components read, and the API's timestamp formats.

Pure: a component that depends on time takes a `Clock` (default `utc_now`), so tests
pass fixed readings instead of waiting on the real clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def rfc3339(when: dt.datetime) -> str:
    """metav1.Time: seconds precision, UTC."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(when: dt.datetime) -> str:
    """metav1.MicroTime (Lease timestamps)."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_rfc3339(clock: Clock = utc_now) -> str:
    return rfc3339(clock())


def parse_time(value: Any) -> dt.datetime | None:
    """An RFC3339 timestamp as the API server stores it, or None when absent or malformed
    (callers treat a malformed time like a missing one, never as a reason to act)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)
