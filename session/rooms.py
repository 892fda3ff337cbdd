"""The registry of live rooms and of rooms that were ended on purpose."""

from __future__ import annotations

from collections.abc import Callable

from .errors import Code, SessionError
from .room import Room, RoomConfig


class Rooms:
    """Creates, finds, ends and expires rooms; time is passed in."""

    def __init__(
        self,
        default_config: RoomConfig,
        tombstone_ttl: float = 86400.0,
        on_create: Callable[[Room], None] | None = None,
    ) -> None:
        self.default_config = default_config
        self.on_create = on_create
        self.tombstone_ttl = tombstone_ttl
        self._live: dict[str, Room] = {}
        # Rooms ended by a moderator or the admin stay refused for as long as a token for them
        # may still be valid; rooms ended for idleness are simply forgotten.
        self._ended: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._live)

    def get(self, room_id: str) -> Room | None:
        """Return a live room."""
        return self._live.get(room_id)

    def live(self) -> list[Room]:
        """Return the live rooms, oldest first."""
        return sorted(self._live.values(), key=lambda r: r.created_at)

    def was_ended(self, room_id: str) -> bool:
        """Tell whether the room was ended on purpose and may not be reopened."""
        return room_id in self._ended

    def mark_ended(self, room_id: str, now: float) -> None:
        """Refuse a room here that was ended on another node."""
        self._ended.setdefault(room_id, now)

    def create(self, room_id: str, now: float, config: RoomConfig | None = None) -> Room:
        """Create a room; refuses one that exists or was ended."""
        if room_id in self._live:
            raise SessionError(Code.ROOM_EXISTS, "a room with this id exists")
        if room_id in self._ended:
            raise SessionError(Code.ROOM_ENDED, "this session has ended")
        room = Room(room_id, config or self.default_config, now)
        self._live[room_id] = room
        if self.on_create is not None:
            self.on_create(room)
        return room

    def open(self, room_id: str, now: float) -> Room:
        """Return the room for a join, creating it with defaults on first join."""
        room = self._live.get(room_id)
        if room is not None:
            return room
        return self.create(room_id, now)

    def end(self, room_id: str, reason: str, now: float, actor_id: str | None = None) -> Room:
        """End a live room on purpose; later joins are refused."""
        room = self._live.get(room_id)
        if room is None:
            raise SessionError(Code.NO_SUCH_ROOM, "no such room")
        room.end(reason, actor_id)
        del self._live[room_id]
        self._ended[room_id] = now
        return room

    def drop(self, room_id: str) -> Room | None:
        """Let go of a live room that another node now hosts (no tombstone: it goes on there)."""
        return self._live.pop(room_id, None)

    def sweep(self, now: float) -> list[Room]:
        """End rooms idle past their timeout and forget old tombstones; returns the rooms ended."""
        idle = [r for r in self._live.values() if r.idle(now)]
        for room in idle:
            room.end("idle")
            del self._live[room.id]
        for room_id, ended_at in list(self._ended.items()):
            if now - ended_at >= self.tombstone_ttl:
                del self._ended[room_id]
        return idle
