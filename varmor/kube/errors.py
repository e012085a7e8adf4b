"""One error hierarchy for reconcilers, as kopf has: a permanent error is not retried
(the input must change first), a temporary one is retried after the delay it names.
Anything else is retried with the queue's backoff."""

from __future__ import annotations

from varmor.kube.client import ApiException

__all__ = ["ApiException", "PermanentError", "TemporaryError", "is_status"]


class PermanentError(Exception):
    """Retrying cannot help until something else changes (which enqueues the key again)."""


class TemporaryError(Exception):
    """Expected to clear by itself: retry after `delay` seconds, without counting as a failure."""

    def __init__(self, message: str, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


def is_status(exc: BaseException, *codes: int) -> bool:
    """An ApiException with one of these HTTP status codes."""
    return isinstance(exc, ApiException) and exc.status in codes
