"""How late the event loop runs what is due: one thread forwards every packet, so a callback
that holds it (a slow disk, a long computation) delays every room; this makes that visible."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger("teleconsult.loop")

# A tenth of a second between looks: cheap (10 wake-ups a second) and fine enough to see a
# stall that costs a viewer a frame.
EVERY = 0.1
# A stall this long is worth a warning: packets queue in the kernel and are lost beyond it.
WARN_AFTER = 0.5
# At most one warning a minute, however often the loop stalls.
WARN_GAP = 60.0


async def watch(observe: Callable[[float], None], every: float = EVERY) -> None:
    """Measure, for ever, how much later than asked each short sleep wakes; hand it on."""
    loop = asyncio.get_running_loop()
    warned = -WARN_GAP
    while True:
        asked = loop.time()
        await asyncio.sleep(every)
        late = max(0.0, loop.time() - asked - every)
        observe(late)
        if late >= WARN_AFTER and loop.time() - warned >= WARN_GAP:
            warned = loop.time()
            log.warning("the event loop was held for %.2f s: packets wait meanwhile", late)
