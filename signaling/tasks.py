"""Stopping background tasks, in bounded time, even when a library swallows a cancel."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("teleconsult.tasks")

# A cancelled task gets this long to clean up before it is cancelled again.
FIRST_GRACE = 0.5
AGAIN_EVERY = 0.1


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], timeout: float = 3.0) -> None:
    """Cancel tasks and wait until they end, cancelling again any still running (bounded).

    redis-py sometimes catches a cancel in the middle of a command and returns normally
    (redis/redis-py#2028, #2551): a loop around it then goes on forever, and a node waiting
    for it never stops. A second cancel reaches it at its next await.
    """
    loop = asyncio.get_running_loop()
    every = list(tasks)
    pending = {t for t in every if not t.done()}
    deadline = loop.time() + timeout
    grace = FIRST_GRACE
    while pending:
        left = deadline - loop.time()
        if left <= 0:
            log.warning("%d background tasks did not stop in %.0f s", len(pending), timeout)
            break
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(grace, left))
        grace = AGAIN_EVERY
    for task in every:
        if task.done() and not task.cancelled():
            task.exception()  # ended by a failure while stopping: nothing to do with it now
