"""Task supervision, in one place: a role's tasks run in one group; the first to fail
stops the rest.

`asyncio.TaskGroup` does the supervision: when one task raises, the others (and the
body of the `async with`) are cancelled and awaited, and the error propagates to
whoever started the group; for a role that is the shell, which logs it and exits
non-zero, so the kubelet restarts the pod. The body may await between starting tasks
(start the informers, wait for their sync, then start the workers).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine, Iterable
from typing import Any


@contextlib.asynccontextmanager
async def task_group() -> AsyncIterator[asyncio.TaskGroup]:
    """`asyncio.TaskGroup` that raises a single failure as itself, not wrapped in an
    ExceptionGroup, so callers and logs see the real error."""
    try:
        async with asyncio.TaskGroup() as group:
            yield group
    except BaseExceptionGroup as failed:
        if len(failed.exceptions) == 1:
            raise failed.exceptions[0] from None
        raise


async def supervise(*jobs: tuple[str, Coroutine[Any, Any, Any]]) -> None:
    """Run named coroutines together until all return; the first failure cancels the rest."""
    async with task_group() as group:
        for name, coro in jobs:
            group.create_task(coro, name=name)


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel every task and wait until each has finished, swallowing their errors: for
    a race whose loser must stop (the election cancels leader work when the lease is
    lost); the winner's outcome is handled by the caller."""
    pending = list(tasks)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
