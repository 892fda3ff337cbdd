"""The store of a cluster: each room's ordered channel as a Redis Stream, its membership state,
host and end; node heartbeats (keys with a TTL), draining, atomic room claims (a Lua script)."""

from __future__ import annotations

import json
from typing import Any

from teleconsult.session.participant import Event
from teleconsult.session.placement import Load

_CLAIM = """
local host = redis.call('GET', KEYS[1])
if host and redis.call('EXISTS', ARGV[2] .. host) == 1 then return host end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""

# Drop a room's placement only if it is still this node's.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisStore:
    """The shared store: a Redis Stream per room for order, keys with TTLs for liveness."""

    def __init__(self, url: str, prefix: str = "teleconsult") -> None:
        import redis.asyncio as redis

        self.redis = redis.from_url(url)
        self.prefix = prefix
        self._claim = self.redis.register_script(_CLAIM)
        self._release = self.redis.register_script(_RELEASE)

    def _key(self, room: str, what: str) -> str:
        return f"{self.prefix}:room:{room}:{what}"

    def _node(self, node: str = "") -> str:
        return f"{self.prefix}:node:{node}"

    async def append(self, room: str, event: Event) -> None:
        """Add one ordered operation to a room's stream."""
        data = json.dumps(event, separators=(",", ":"))
        await self.redis.xadd(self._key(room, "channel"), {"e": data})

    async def log(self, room: str) -> list[Event]:
        """Return a room's operations, in stream order."""
        entries = await self.redis.xrange(self._key(room, "channel")) or []
        return [json.loads(fields[b"e"]) for _, fields in entries if fields]

    async def compact(self, room: str, checkpoint: Event) -> None:
        """Append a checkpoint to a room's stream and trim every entry before it."""
        key = self._key(room, "channel")
        data = json.dumps(checkpoint, separators=(",", ":"))
        entry = await self.redis.xadd(key, {"e": data})
        await self.redis.xtrim(key, minid=entry, approximate=False)

    async def save_state(self, room: str, state: Event) -> None:
        """Keep a room's membership state as one JSON value."""
        await self.redis.set(self._key(room, "state"), json.dumps(state, separators=(",", ":")))

    async def load_state(self, room: str) -> Event | None:
        """Return a room's kept state."""
        raw = await self.redis.get(self._key(room, "state"))
        return None if raw is None else dict(json.loads(raw))

    async def forget(self, room: str, node: str, ended_for: float | None = None) -> None:
        """Drop a room's stream, state and placement; mark an ended room for `ended_for` s."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._key(room, "channel"), self._key(room, "state"))
            if ended_for:
                pipe.set(self._key(room, "ended"), "1", ex=max(1, int(ended_for)))
            await pipe.execute()
        await self._release(keys=[self._key(room, "host")], args=[node])

    async def was_ended(self, room: str) -> bool:
        """Tell whether a room was ended on purpose on any node."""
        return bool(await self.redis.exists(self._key(room, "ended")))

    async def revoke(self, token_id: str, until: float) -> None:
        """Keep the token's id until the token would have expired."""
        await self.redis.set(f"{self.prefix}:revoked:{token_id}", "1", exat=max(1, int(until) + 1))

    async def is_revoked(self, token_id: str) -> bool:
        """Tell whether a token was revoked, on any node."""
        return bool(await self.redis.exists(f"{self.prefix}:revoked:{token_id}"))

    async def add_recording(self, room: str, folder: str, entry: Event | None) -> None:
        """Register a recorded session in the room's hash (None removes it)."""
        key = f"{self.prefix}:recordings:{room}"
        if entry is None:
            await self.redis.hdel(key, folder)
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, folder, json.dumps(entry, separators=(",", ":")))
            pipe.sadd(f"{self.prefix}:recorded", room)
            await pipe.execute()

    async def recordings(self, room: str | None = None) -> list[Event]:
        """Return the registered sessions of a room, or of every room."""
        if room is not None:
            rooms = [room]
        else:
            rooms = sorted(_text(r) for r in await self.redis.smembers(f"{self.prefix}:recorded"))
        out: list[Event] = []
        for r in rooms:
            found = await self.redis.hgetall(f"{self.prefix}:recordings:{r}")
            out += [json.loads(found[k]) for k in sorted(found)]
        return out

    async def heartbeat(self, node: str, load: Load, ttl: float, info: Event) -> None:
        """Refresh the node's key (expiring after `ttl`) with its load and details."""
        value = json.dumps({"load": load.describe(), "info": info}, separators=(",", ":"))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._node(node), value, px=max(1, int(ttl * 1000)))
            pipe.sadd(f"{self.prefix}:nodes", node)
            await pipe.execute()

    async def depart(self, node: str, rooms: list[str]) -> None:
        """Delete the node's key and release the rooms it hosted."""
        await self.redis.delete(self._node(node))
        await self.redis.srem(f"{self.prefix}:nodes", node)
        for room in rooms:
            await self._release(keys=[self._key(room, "host")], args=[node])

    async def nodes(self) -> dict[str, tuple[Load, Event]]:
        """Return the live nodes; forget those whose heartbeat expired."""
        names = sorted(_text(n) for n in await self.redis.smembers(f"{self.prefix}:nodes"))
        if not names:
            return {}
        values = await self.redis.mget([self._node(n) for n in names])
        draining = await self.redis.smembers(f"{self.prefix}:draining")
        live: dict[str, tuple[Load, Event]] = {}
        for name, raw in zip(names, values, strict=True):
            if raw is None:
                await self.redis.srem(f"{self.prefix}:nodes", name)
                continue
            data: dict[str, Any] = json.loads(raw)
            load = {**data.get("load", {}), "draining": name.encode() in draining}
            live[name] = (Load.parse(load), dict(data.get("info", {})))
        return live

    async def drain(self, node: str, draining: bool) -> None:
        """Stop (or resume) placing new rooms on a node; survives the node's restart."""
        if draining:
            await self.redis.sadd(f"{self.prefix}:draining", node)
        else:
            await self.redis.srem(f"{self.prefix}:draining", node)

    async def claim(self, room: str, node: str) -> str:
        """Atomically make `node` the host unless a live node hosts the room."""
        host = await self._claim(keys=[self._key(room, "host")], args=[node, self._node()])
        return _text(host)

    async def host(self, room: str) -> str | None:
        """Return the live node hosting a room."""
        raw = await self.redis.get(self._key(room, "host"))
        if raw is None:
            return None
        node = _text(raw)
        return node if await self.redis.exists(self._node(node)) else None

    async def close(self) -> None:
        """Close the connection pool."""
        await self.redis.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
