"""Fixtures of the kernel test layer: one qemu boot per batch, shared by the session.

Why session-scoped and lazy: a boot costs seconds, a check milliseconds. Each test
module declares its batch of cases at import time (so every check is its own
parametrized test). The first test that needs a batch boots every batch the session
imported, two at a time: TCG runs a guest on one host core, so on a 2-core machine the
boots overlap instead of queueing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import aavm
import pytest

BootFn = Callable[[aavm.Batch], aavm.BootResult]


def _boot_one(batch: aavm.Batch) -> aavm.BootResult | aavm.HarnessError:
    try:
        aavm.preflight()
        return batch.run()
    except aavm.HarnessError as exc:
        return exc


@pytest.fixture(scope="session")
def kernel_boot() -> Iterator[BootFn]:
    """Boot a batch (once per session) and return what it produced.

    Missing tools or kernel make the tests FAIL, never skip: a skipped kernel layer
    would look like a green one.
    """
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="qemu")
    futures: dict[str, Future[aavm.BootResult | aavm.HarnessError]] = {}

    def boot(batch: aavm.Batch) -> aavm.BootResult:
        if not futures:
            try:
                aavm.kernel_image()  # fetch once, before two boots could race for it
            except aavm.HarnessError as exc:
                pytest.fail(f"kernel layer cannot run: {exc}", pytrace=False)
            for other in aavm.REGISTRY:
                futures.setdefault(other.name, pool.submit(_boot_one, other))
        if batch.name not in futures:
            futures[batch.name] = pool.submit(_boot_one, batch)
        res = futures[batch.name].result()
        if isinstance(res, aavm.HarnessError):
            pytest.fail(f"kernel layer cannot run: {res}", pytrace=False)
        return res

    yield boot
    pool.shutdown(wait=True, cancel_futures=True)
