"""The journal: every change a room's future depends on, written to the store in order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_incrementing

from teleconsult.session.participant import Event
from teleconsult.session.room import Room
from teleconsult.session.store import Store

from .tasks import cancel_and_wait

log = logging.getLogger("teleconsult.hub")

# Every this many operations a room's log in the store is replaced by a checkpoint of its
# channel: a session of hours keeps the store's memory (and Redis's) flat, and a room restored
# on another node replays at most this many operations.
CHECKPOINT_EVERY = 500


class Journal:
    """Queues each room's changes and one task writes them to the store, in order, retrying
    for as long as the store is out of reach (the rooms go on meanwhile)."""

    def __init__(
        self,
        store: Store,
        node: str,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.node = node
        self.sleep = sleep  # between tries; a test passes its own
        # (room, what, payload): "op" an ordered operation, "checkpoint" the channel at one,
        # "state" the membership state, "recording"/"unrecord" a recording's entry, "forget"
        # the room ended (payload: seconds it stays refused, or None).
        self._queue: asyncio.Queue[tuple[str, str, Any]] = asyncio.Queue()
        # The revision of each room's membership state last journaled (Room.revision).
        self._saved: dict[str, int] = {}
        self._writer: asyncio.Task[None] | None = None

    def put(self, room_id: str, what: str, payload: Any) -> None:
        """Queue a change for the store; the one way in."""
        self._queue.put_nowait((room_id, what, payload))

    def op(self, room: Room, event: Event) -> None:
        """Queue an ordered channel operation, and every so often a checkpoint."""
        self.put(room.id, "op", event)
        if event["seq"] % CHECKPOINT_EVERY == 0:
            # Taken now, when the channel is exactly at this operation.
            self.put(room.id, "checkpoint", room.channel.checkpoint(CHECKPOINT_EVERY))

    def state(self, room: Room) -> None:
        """Queue a room's membership state if it changed since it was last queued."""
        if self._saved.get(room.id) != room.revision:
            self._saved[room.id] = room.revision
            self.put(room.id, "state", room.export())

    def saved(self, room: Room) -> None:
        """Note that the store holds a room's state as it is now (it was just restored)."""
        self._saved[room.id] = room.revision

    def drop(self, room_id: str) -> None:
        """Forget what was noted of a room this node no longer writes."""
        self._saved.pop(room_id, None)

    def start(self) -> None:
        """Start writing."""
        self._writer = asyncio.create_task(self._write_forever())

    async def written(self, timeout: float) -> None:
        """Wait until everything queued so far is in the store (TimeoutError after)."""
        if self._writer is None:
            return  # never started: nothing is being written
        await asyncio.wait_for(self._queue.join(), timeout)

    async def stop(self) -> None:
        """Stop writing (what is still queued is not written)."""
        if self._writer is not None:
            await cancel_and_wait([self._writer])

    async def _write_forever(self) -> None:
        while True:
            room_id, what, payload = await self._queue.get()
            # Redis restarting or out of reach: retry, in order, for as long as it takes
            # (operations are small and come at a human pace).
            retrying = AsyncRetrying(
                retry=retry_if_exception_type(Exception),
                wait=wait_incrementing(start=0.2, increment=0.2, max=5.0),
                before_sleep=_holding,
                sleep=self.sleep,
            )
            await retrying(self._write, room_id, what, payload)
            if retrying.statistics.get("attempt_number", 1) > 1:
                log.warning("the store is reachable again; held operations written")
            self._queue.task_done()

    async def _write(self, room_id: str, what: str, payload: Any) -> None:
        store = self.store
        if what == "forget":
            self._saved.pop(room_id, None)
            await store.forget(room_id, self.node, payload)
        elif what == "state":
            await store.save_state(room_id, payload)
        elif what == "recording":
            await store.add_recording(room_id, payload["session_id"], payload)
        elif what == "unrecord":
            await store.add_recording(room_id, payload, None)
        elif what == "checkpoint":
            await store.compact(room_id, payload)
        else:
            await store.append(room_id, payload)


def _holding(state: RetryCallState) -> None:
    if state.attempt_number == 1:
        log.warning("the store is unreachable; holding channel operations")
