"""Which ArmorProfile status changes may wait (`varmor/reconcile/statuswrites.py`): every
ArmorProfile write reaches every agent's watch, so progress alone is refreshed at an
interval, while readiness and conditions are written at once."""

from __future__ import annotations

from varmor.reconcile.statuswrites import only_progress

BEFORE = {"desiredNumberLoaded": 5, "currentNumberLoaded": 2, "observedSha256": "a", "conditions": []}


def test_progress_alone_may_wait() -> None:
    assert only_progress(BEFORE, {**BEFORE, "currentNumberLoaded": 3})


def test_readiness_and_everything_else_is_written_at_once() -> None:
    assert not only_progress(BEFORE, {**BEFORE, "currentNumberLoaded": 5})  # now ready
    ready = {**BEFORE, "currentNumberLoaded": 5}
    assert not only_progress(ready, {**ready, "currentNumberLoaded": 4})  # no longer ready
    assert not only_progress(BEFORE, {**BEFORE, "currentNumberLoaded": 3, "desiredNumberLoaded": 6})
    assert not only_progress(BEFORE, {**BEFORE, "currentNumberLoaded": 3, "observedSha256": "b"})
    failed = [{"type": "Ready", "status": "False", "reason": "LoadFailed", "nodeName": "n1"}]
    assert not only_progress(BEFORE, {**BEFORE, "currentNumberLoaded": 3, "conditions": failed})
    assert not only_progress(BEFORE, BEFORE)  # nothing changed: nothing to hold
