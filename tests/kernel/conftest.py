"""Fixtures of the kernel test layer: one qemu boot per batch, shared by the session.

Why session-scoped and lazy: a boot costs seconds, a check milliseconds. Each test
module declares its batch of cases at import time (so every check is its own
parametrized test), and the first test that needs a batch boots it once.
"""

from __future__ import annotations

from collections.abc import Callable

import aavm
import pytest

BootFn = Callable[[aavm.Batch], aavm.BootResult]


@pytest.fixture(scope="session")
def kernel_boot() -> BootFn:
    """Boot a batch (once per session) and return what it produced.

    Missing tools or kernel make the tests FAIL, never skip: a skipped kernel layer
    would look like a green one.
    """
    results: dict[str, aavm.BootResult | aavm.HarnessError] = {}

    def boot(batch: aavm.Batch) -> aavm.BootResult:
        if batch.name not in results:
            try:
                aavm.preflight()
                results[batch.name] = batch.run()
            except aavm.HarnessError as exc:
                results[batch.name] = exc
        res = results[batch.name]
        if isinstance(res, aavm.HarnessError):
            pytest.fail(f"kernel layer cannot run: {res}", pytrace=False)
        return res

    return boot

