"""Server-wide state of one node: rooms, secrets, audit trail, metrics and open connections."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from media.aiortc_adapter import use_host_addresses
from media.sfu import Sfu, local_address
from session.participant import Event
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
        self._tasks: set[asyncio.Task[Any]] = set()
        self._encoded: dict[int, tuple[Event, str]] = {}
        rewrite_to = None
        if settings.announce:
            if local_address(settings.announce):
                # Gather on exactly this address (aioice never offers loopback on its own).
                use_host_addresses([settings.announce])
            else:
                rewrite_to = settings.announce
        self.sfu = Sfu(clock, rewrite_to, self._up_closed, self._down_closed)
        self.metrics.watch_media(self.sfu.stats, self.sfu.forward_delay)

    def now(self) -> float:
        """Return the current time in seconds since the epoch."""
        return self.clock()

    @staticmethod
    def new_participant_id() -> str:
        """Return a fresh opaque participant id."""
        return "p-" + secrets.token_hex(6)

    def encode(self, event: Event) -> str:
        """Serialize an event once, however many connections send it."""
        key = id(event)
        hit = self._encoded.get(key)
        if hit is not None and hit[0] is event:
            return hit[1]
        text = json.dumps(event, separators=(",", ":"))
        # Keeping the event alive keeps its id from being reused while it is cached.
        self._encoded[key] = (event, text)
        if len(self._encoded) > 512:
            self._encoded.pop(next(iter(self._encoded)))
        return text

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a coroutine in the background, keeping a reference until it ends."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def room_of_stream(self, stream_id: str) -> Room | None:
        """Return the live room in which a stream is published."""
        for room in self.rooms.live():
            if stream_id in room.streams:
                return room
        return None

    def _up_closed(self, stream_id: str, reason: str) -> None:
        room = self.room_of_stream(stream_id)
        if room is not None:
            room.remove_stream(stream_id, reason)

    def _down_closed(self, down_id: str, reason: str) -> None:
        # Tell the subscriber, unless it asked for this itself.
        if reason in ("unsubscribed",):
            return
        for room in self.rooms.live():
            for p in room.participants.values():
                if down_id in p.subscriptions:
                    p.subscriptions.discard(down_id)
                    p.client.push({"type": "unsubscribed", "stream": down_id, "reason": reason})
                    return

    def refresh_gauges(self) -> None:
        """Bring the room and participant gauges up to date."""
        live = self.rooms.live()
        self.metrics.rooms.set(len(live))
        self.metrics.participants.set(sum(len(r.participants) for r in live))

    def end_room(self, room_id: str, reason: str, actor_id: str | None = None) -> Room:
        """End a room on purpose; the caller audits who did it."""
        live = self.rooms.get(room_id)
        gone = list(live.participants) if live is not None else []
        room = self.rooms.end(room_id, reason, self.now(), actor_id)
        for pid in gone:
            self.spawn(self.sfu.close_participant(pid, reason))
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
        await self.sfu.close()
        for task in list(self._tasks):
            task.cancel()
        self.audit.close()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval)
            self.sweep()
