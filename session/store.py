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
from typing import Protocol

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
