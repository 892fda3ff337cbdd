"""Server-wide state of one node: rooms, secrets, audit trail, metrics and open connections."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from session.room import Room, RoomConfig
from session.rooms import Rooms

from .audit import AuditLog
from .config import Secrets, Settings
from .metrics import Metrics

if TYPE_CHECKING:
    from .connection import Connection


class Hub:
    """Holds what every connection and the HTTP API share."""

    def __init__(
        self, settings: Settings, keys: Secrets, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.clock = clock
        self.rooms = Rooms(
            RoomConfig(
                max_participants=settings.max_participants, idle_timeout=settings.idle_timeout
            ),
            tombstone_ttl=settings.max_token_ttl,
        )
        self.audit = AuditLog(settings.data_dir / "audit.jsonl")
        self.metrics = Metrics()
        self.connections: set[Connection] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def now(self) -> float:
        """Return the current time in seconds since the epoch."""
        return self.clock()

    @staticmethod
    def new_participant_id() -> str:
        """Return a fresh opaque participant id."""
        return "p-" + secrets.token_hex(6)

    def refresh_gauges(self) -> None:
        """Bring the room and participant gauges up to date."""
        live = self.rooms.live()
        self.metrics.rooms.set(len(live))
        self.metrics.participants.set(sum(len(r.participants) for r in live))

    def end_room(self, room_id: str, reason: str, actor_id: str | None = None) -> Room:
        """End a room on purpose; the caller audits who did it."""
        room = self.rooms.end(room_id, reason, self.now(), actor_id)
        self.refresh_gauges()
        return room

    def sweep(self) -> None:
        """End idle rooms."""
        for room in self.rooms.sweep(self.now()):
            self.audit.record("room_end", room=room.id, code="idle", actor="server")
        self.refresh_gauges()

    async def start(self) -> None:
        """Start background work."""
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def stop(self) -> None:
        """Stop background work and close every connection."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for conn in list(self.connections):
            conn.shutdown()
        self.audit.close()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval)
            self.sweep()
