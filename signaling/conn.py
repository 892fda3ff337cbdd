"""What a message handler may use of the connection it serves."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

from teleconsult.session.participant import Event, Participant
from teleconsult.session.room import Room

from .tokens import Grant

if TYPE_CHECKING:
    from teleconsult.media.sfu import Media

    from .hub import Hub


class Conn(Protocol):
    """What a handler may use of the connection it serves (`connection.Connection`, or a
    test's fake): its node, its place in a room, its media, and ways to answer."""

    hub: Hub
    room: Room | None
    participant: Participant | None
    grant: Grant | None
    media: Media
    media_node: str
    peer: str | None
    ice_urls: list[str] | None
    leave_reason: str

    def push(self, event: Event) -> None:
        """Queue an event for the client."""

    def kick(self, code: int, reason: str) -> None:
        """Close after what is queued."""

    def error(self, code: str, message: str, ref: str | None = None, **details: Any) -> None:
        """Send an error event."""

    def allow_op(self, kind: Literal["pointer", "op", "frame"]) -> bool:
        """Take a channel operation from the rate limits (False: refused, and said)."""

    def audit(self, action: str, outcome: str = "ok", **fields: Any) -> None:
        """Record an audit line about this participant."""


Handler = Callable[[Conn, Any], Awaitable[None]]
