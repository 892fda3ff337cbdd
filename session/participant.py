"""A participant as the room knows it, and the Client interface the room pushes to."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from .roles import Role

Event = dict[str, Any]


class Client(Protocol):
    """What a room pushes to: a WebSocket connection, the recorder, or a test client."""

    def push(self, event: Event) -> None:
        """Queue an event for delivery; must not block."""

    def kick(self, code: int, reason: str) -> None:
        """Disconnect after the events already queued are delivered."""


class State(StrEnum):
    """Where a participant stands: in the lobby or in the room."""

    WAITING = "waiting"
    JOINED = "joined"


@dataclass
class Participant:
    """One member of a room, present or waiting in its lobby."""

    id: str
    identity: str
    name: str
    role: Role
    client: Client
    joined_at: float
    state: State = State.JOINED
    muted: bool = False
    # Granted by a moderator: annotating beyond the role, and the floor (speaking) for audience.
    may_annotate: bool = False
    floor: bool = False
    # Ids of the media subscriptions (down streams) this participant holds.
    subscriptions: set[str] = field(default_factory=set)
    # When its connection dropped (None while connected), and why: it stays for the room's
    # reconnect grace, in case it comes back.
    away_since: float | None = None
    away_reason: str = ""

    def describe(self) -> Event:
        """Return the public description sent to other participants."""
        return {
            "id": self.id,
            "identity": self.identity,
            "name": self.name,
            "role": self.role.value,
            "muted": self.muted,
            "joined_at": self.joined_at,
            "may_annotate": self.may_annotate,
            "floor": self.floor,
            "connected": self.away_since is None,
        }
