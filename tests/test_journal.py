"""The journal: a room's changes reach the store in order, across a store out of reach."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from teleconsult.session.room import Room, RoomConfig
from teleconsult.session.store import MemoryStore
from teleconsult.signaling.journal import CHECKPOINT_EVERY, Journal


class FlakyStore(MemoryStore):
    """A store out of reach for its first `down` appends, as Redis restarting is."""

    def __init__(self, down: int) -> None:
        super().__init__(clock=lambda: 0.0)
        self.down = down
        self.tries = 0

    async def append(self, room_id: str, event: dict[str, Any]) -> None:
        self.tries += 1
        if self.tries <= self.down:
            raise ConnectionError("store out of reach")
        await super().append(room_id, event)


async def test_operations_wait_out_a_store_out_of_reach_and_keep_their_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FlakyStore(down=6)
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(0)

    journal = Journal(store, "n1", sleep=sleep)
    journal.start()
    caplog.set_level(logging.WARNING, logger="teleconsult.hub")
    try:
        for seq in range(1, 21):
            journal.put("r", "op", {"seq": seq, "op": "chat", "text": f"m{seq}"})
        await journal.written(5.0)
    finally:
        await journal.stop()
    assert [e["seq"] for e in await store.log("r")] == list(range(1, 21))
    # Waits grow by 0.2 s a try, capped at 5 s; once each, the operator hears of it and of
    # the recovery.
    assert waits == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.2])
    said = [r.getMessage() for r in caplog.records]
    assert said.count("the store is unreachable; holding channel operations") == 1
    assert said.count("the store is reachable again; held operations written") == 1


class CountingStore(MemoryStore):
    """A store that counts the states written to it."""

    def __init__(self) -> None:
        super().__init__(clock=lambda: 0.0)
        self.states = 0

    async def save_state(self, room_id: str, state: dict[str, Any]) -> None:
        self.states += 1
        await super().save_state(room_id, state)


async def test_a_room_state_is_written_only_when_it_changed() -> None:
    store = CountingStore()
    journal = Journal(store, "n1")
    journal.start()
    room = Room("r", RoomConfig(title="Thyroid"), 0.0)
    try:
        journal.state(room)
        journal.state(room)  # unchanged: not written again
        room.banned.add("someone")
        room.revision += 1
        journal.state(room)
        await journal.written(5.0)
    finally:
        await journal.stop()
    assert store.states == 2
    assert await store.load_state("r") == room.export()


async def test_a_long_channel_is_checkpointed_in_the_store() -> None:
    store = MemoryStore(clock=lambda: 0.0)
    journal = Journal(store, "n1")
    journal.start()
    room = Room("r", RoomConfig(), 0.0)
    room.journal = lambda event: journal.op(room, event)
    try:
        for i in range(CHECKPOINT_EVERY + 10):
            event = room.channel.say("p1", f"op{i}", f"m{i}", float(i))
            room.journal(event)
        await journal.written(5.0)
    finally:
        await journal.stop()
    log = await store.log("r")
    # The log holds one checkpoint and what came after it, not every operation since the start.
    assert [e["seq"] for e in log] == list(range(CHECKPOINT_EVERY, CHECKPOINT_EVERY + 11))
    assert log[0]["type"] == "checkpoint"
    assert [e["text"] for e in log[1:]] == [
        f"m{i}" for i in range(CHECKPOINT_EVERY, CHECKPOINT_EVERY + 10)
    ]
