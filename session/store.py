"""Where room state is kept beyond one process: in memory, or in Redis shared by a cluster.

The room's core stays free of I/O; the edge journals every ordered channel operation and every
change of membership into a store and, when a room opens that is not live on this node, rebuilds
it from there. The store also holds the cluster's placement: node heartbeats with their load,
which node hosts each room, and which nodes are draining. Both twins pass the same tests
(tests/test_store.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Protocol

from .participant import Event
from .placement import Load


class Store(Protocol):
    """Each room's ordered log, state and host, and the nodes that serve rooms."""

    async def append(self, room: str, event: Event) -> None:
        """Add one ordered operation to a room's log."""

    async def log(self, room: str) -> list[Event]:
        """Return a room's operations, in order."""

    async def compact(self, room: str, checkpoint: Event) -> None:
        """Replace a room's operations up to a checkpoint (appended in order) with it."""

    async def save_state(self, room: str, state: Event) -> None:
        """Keep a room's membership state (people, roles, bans, recording)."""

    async def load_state(self, room: str) -> Event | None:
        """Return a room's kept state, if any."""

    async def forget(self, room: str, node: str, ended_for: float | None = None) -> None:
        """Drop a room's log, state and placement; an ended room stays refused for a while."""

    async def was_ended(self, room: str) -> bool:
        """Tell whether a room was ended on purpose (on any node) and may not reopen."""

    async def revoke(self, token_id: str, until: float) -> None:
        """Refuse a token from now until it would have expired."""

    async def is_revoked(self, token_id: str) -> bool:
        """Tell whether a token was revoked."""

    async def add_recording(self, room: str, folder: str, entry: Event | None) -> None:
        """Register a recorded session (a folder on some node); None unregisters it."""

    async def recordings(self, room: str | None = None) -> list[Event]:
        """Return the registered sessions of a room, or of every room."""

    async def heartbeat(self, node: str, load: Load, ttl: float, info: Event) -> None:
        """Say that a node is alive, with its load, for the next `ttl` seconds."""

    async def depart(self, node: str, rooms: list[str]) -> None:
        """Take a stopping node out at once and free the rooms it hosted for other nodes."""

    async def nodes(self) -> dict[str, tuple[Load, Event]]:
        """Return the live nodes with their load and details."""

    async def drain(self, node: str, draining: bool) -> None:
        """Stop (or resume) placing new rooms on a node."""

    async def claim(self, room: str, node: str) -> str:
        """Make `node` the room's host unless a live node hosts it; return the host."""

    async def host(self, room: str) -> str | None:
        """Return the live node hosting a room, if any."""

    async def close(self) -> None:
        """Release connections."""


class MemoryStore:
    """The single-node store: everything lives as long as the process."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._logs: dict[str, list[Event]] = {}
        self._states: dict[str, Event] = {}
        self._ended: dict[str, float] = {}  # room -> refused until
        self._nodes: dict[str, tuple[float, Load, Event]] = {}  # node -> (alive until, ...)
        self._draining: set[str] = set()
        self._hosts: dict[str, str] = {}
        self._revoked: dict[str, float] = {}  # token id -> its expiry
        self._recordings: dict[str, dict[str, Event]] = {}  # room -> folder -> entry

    async def append(self, room: str, event: Event) -> None:
        """Add one ordered operation to a room's log."""
        self._logs.setdefault(room, []).append(event)

    async def log(self, room: str) -> list[Event]:
        """Return a room's operations, in order."""
        return list(self._logs.get(room, []))

    async def compact(self, room: str, checkpoint: Event) -> None:
        """Replace a room's operations up to a checkpoint with it."""
        later = [e for e in self._logs.get(room, []) if e["seq"] > checkpoint["seq"]]
        self._logs[room] = [checkpoint, *later]

    async def save_state(self, room: str, state: Event) -> None:
        """Keep a room's membership state."""
        self._states[room] = json.loads(json.dumps(state))

    async def load_state(self, room: str) -> Event | None:
        """Return a room's kept state."""
        return self._states.get(room)

    async def forget(self, room: str, node: str, ended_for: float | None = None) -> None:
        """Drop a room's log, state and placement."""
        self._logs.pop(room, None)
        self._states.pop(room, None)
        if self._hosts.get(room) == node:
            del self._hosts[room]
        if ended_for:
            self._ended[room] = self.clock() + ended_for

    async def was_ended(self, room: str) -> bool:
        """Tell whether a room was ended on purpose."""
        until = self._ended.get(room)
        if until is not None and until <= self.clock():
            del self._ended[room]
            return False
        return until is not None

    async def revoke(self, token_id: str, until: float) -> None:
        """Refuse a token until it would have expired."""
        self._revoked[token_id] = until

    async def is_revoked(self, token_id: str) -> bool:
        """Tell whether a token was revoked."""
        until = self._revoked.get(token_id)
        if until is not None and until <= self.clock():
            del self._revoked[token_id]  # expired anyway
            return False
        return until is not None

    async def add_recording(self, room: str, folder: str, entry: Event | None) -> None:
        """Register (or, with None, unregister) a recorded session."""
        sessions = self._recordings.setdefault(room, {})
        if entry is None:
            sessions.pop(folder, None)
        else:
            sessions[folder] = dict(entry)

    async def recordings(self, room: str | None = None) -> list[Event]:
        """Return the registered sessions."""
        rooms = [room] if room is not None else sorted(self._recordings)
        return [e for r in rooms for _, e in sorted(self._recordings.get(r, {}).items())]

    async def heartbeat(self, node: str, load: Load, ttl: float, info: Event) -> None:
        """Say that a node is alive."""
        self._nodes[node] = (self.clock() + ttl, load, dict(info))

    async def depart(self, node: str, rooms: list[str]) -> None:
        """Take a stopping node out and free its rooms."""
        self._nodes.pop(node, None)
        for room in rooms:
            if self._hosts.get(room) == node:
                del self._hosts[room]

    async def nodes(self) -> dict[str, tuple[Load, Event]]:
        """Return the live nodes."""
        now = self.clock()
        live = {}
        for node, (until, load, info) in list(self._nodes.items()):
            if until <= now:
                del self._nodes[node]
                continue
            draining = node in self._draining
            live[node] = (Load(**{**load.describe(), "draining": draining}), info)
        return live

    async def drain(self, node: str, draining: bool) -> None:
        """Stop (or resume) placing new rooms on a node."""
        if draining:
            self._draining.add(node)
        else:
            self._draining.discard(node)

    async def claim(self, room: str, node: str) -> str:
        """Make `node` the room's host unless a live node hosts it."""
        current = await self.host(room)
        if current is not None:
            return current
        self._hosts[room] = node
        return node

    async def host(self, room: str) -> str | None:
        """Return the live node hosting a room."""
        node = self._hosts.get(room)
        if node is None:
            return None
        until = self._nodes.get(node, (0.0,))[0]
        return node if until > self.clock() else None

    async def close(self) -> None:
        """Nothing to release."""


# Claim a room for a node unless its host is alive (its heartbeat key exists).
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
