"""The event loop's lag is measured: a callback that holds the loop shows in the histogram and
in one warning, not in one per stall."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from teleconsult.signaling import looplag


async def test_a_held_loop_is_seen_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[float] = []
    caplog.set_level(logging.WARNING, "teleconsult.loop")
    watcher = asyncio.create_task(looplag.watch(seen.append, every=0.02))
    try:
        await asyncio.sleep(0.1)
        for _ in range(2):
            time.sleep(0.6)  # noqa: ASYNC251 - holding the loop, as a slow disk write would
            await asyncio.sleep(0.1)
    finally:
        watcher.cancel()
    held = [s for s in seen if s >= 0.5]
    assert len(held) == 2, seen
    assert all(s < 1.0 for s in held)
    assert min(seen) < 0.05  # an idle loop wakes on time
    warnings = [r for r in caplog.records if r.name == "teleconsult.loop"]
    assert len(warnings) == 1 and "held for 0.6" in warnings[0].getMessage()
