"""Where a room's ordered channel is kept beyond one process: in memory, or in Redis.

The room's core stays free of I/O; the edge journals every ordered operation into a store and,
when a room opens that is not live on this node, rebuilds its channel from the store's log.
Both twins pass the same tests (tests/test_store.py).
"""

from __future__ import annotations

import json
from typing import Protocol

from .participant import Event


class Store(Protocol):
    """A log of each room's ordered operations."""

    async def append(self, room: str, event: Event) -> None:
        """Add one ordered operation to a room's log."""

    async def log(self, room: str) -> list[Event]:
        """Return a room's operations, in order."""

    async def forget(self, room: str) -> None:
        """Drop a room's log (the room ended)."""

    async def close(self) -> None:
        """Release connections."""


class MemoryStore:
    """The single-node store: the log lives as long as the process."""

    def __init__(self) -> None:
        self._logs: dict[str, list[Event]] = {}

    async def append(self, room: str, event: Event) -> None:
        """Add one ordered operation to a room's log."""
        self._logs.setdefault(room, []).append(event)

    async def log(self, room: str) -> list[Event]:
        """Return a room's operations, in order."""
        return list(self._logs.get(room, []))

    async def forget(self, room: str) -> None:
        """Drop a room's log."""
        self._logs.pop(room, None)

    async def close(self) -> None:
        """Nothing to release."""


class RedisStore:
    """The shared store: one Redis Stream per room, so any node can rebuild the channel."""

    def __init__(self, url: str, prefix: str = "teleconsult") -> None:
        import redis.asyncio as redis

        self.redis = redis.from_url(url)
        self.prefix = prefix

    def _key(self, room: str) -> str:
        return f"{self.prefix}:room:{room}:channel"

    async def append(self, room: str, event: Event) -> None:
        """Add one ordered operation to a room's stream."""
        await self.redis.xadd(self._key(room), {"e": json.dumps(event, separators=(",", ":"))})

    async def log(self, room: str) -> list[Event]:
        """Return a room's operations, in stream order."""
        entries = await self.redis.xrange(self._key(room)) or []
        return [json.loads(fields[b"e"]) for _, fields in entries if fields]

    async def forget(self, room: str) -> None:
        """Delete a room's stream."""
        await self.redis.delete(self._key(room))

    async def close(self) -> None:
        """Close the connection pool."""
        await self.redis.aclose()
