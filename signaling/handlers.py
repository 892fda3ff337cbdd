"""One handler per client message type."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from session.errors import Close as SessionClose
from session.errors import Code as SessionCode
from session.errors import SessionError
from session.participant import State

from . import messages as m
from .errors import Close, Code
from .tokens import TokenError, verify

if TYPE_CHECKING:
    from .connection import Connection

Handler = Callable[["Connection", Any], Awaitable[None]]

# Messages accepted before the handshake completes.
PRE_HANDSHAKE = frozenset({"hello", "ping", "pong"})


def _refuse(conn: Connection, code: str, message: str, close: int, ref: str | None) -> None:
    conn.error(code, message, ref=ref)
    conn.kick(close, code)


async def on_hello(conn: Connection, msg: m.Hello) -> None:
    """Check version and token, then join the room (or its lobby) and send the welcome."""
    hub = conn.hub
    if conn.participant is not None:
        conn.error(Code.ALREADY_JOINED, "this connection has already joined", ref=msg.id)
        return
    if msg.version not in m.PROTOCOL_VERSIONS:
        conn.hub.metrics.errors.labels(code=Code.UNSUPPORTED_VERSION).inc()
        conn.push(
            {
                "type": "error",
                "code": Code.UNSUPPORTED_VERSION,
                "ref": msg.id,
                "message": f"protocol version {msg.version} is not supported",
                "supported": list(m.PROTOCOL_VERSIONS),
            }
        )
        conn.kick(Close.UNSUPPORTED_VERSION, Code.UNSUPPORTED_VERSION)
        return
    try:
        grant = verify(hub.keys.token_secret, msg.token, hub.now())
    except TokenError as e:
        hub.audit.record("join", "denied", room=msg.room, code=e.code)
        _refuse(conn, e.code, e.message, Close.UNAUTHORIZED, msg.id)
        return
    if grant.room != msg.room:
        hub.audit.record(
            "join",
            "denied",
            room=msg.room,
            identity=grant.identity,
            role=grant.role.value,
            code=Code.TOKEN_WRONG_ROOM,
        )
        _refuse(
            conn,
            Code.TOKEN_WRONG_ROOM,
            "this link is for another session",
            Close.UNAUTHORIZED,
            msg.id,
        )
        return
    conn.grant = grant
    try:
        if hub.rooms.was_ended(grant.room):
            raise SessionError(SessionCode.ROOM_ENDED, "this session has ended")
        room = hub.rooms.open(grant.room, hub.now())
        p = room.join(
            grant.identity, grant.name, grant.role, conn, hub.now(), hub.new_participant_id
        )
    except SessionError as e:
        conn.audit("join", "denied", code=e.code)
        close = {
            SessionCode.ROOM_FULL: Close.ROOM_FULL,
            SessionCode.ROOM_ENDED: SessionClose.ROOM_ENDED,
            SessionCode.REMOVED: SessionClose.REMOVED,
        }.get(e.code, Close.UNAUTHORIZED)
        _refuse(conn, e.code, e.message, close, msg.id)
        return
    conn.room, conn.participant = room, p
    s = hub.settings
    welcome: dict[str, Any] = {
        "type": "welcome",
        "ref": msg.id,
        "version": msg.version,
        "participant_id": p.id,
        "you": p.describe(),
        "state": p.state.value,
        "ice_servers": [],
        "ping_interval": s.ping_interval,
        "ping_timeout": s.ping_timeout,
        "limits": {"max_message": s.max_message, "rate": s.rate, "burst": s.burst},
    }
    if p.state is State.JOINED:
        welcome.update(room.snapshot(p))
    else:
        welcome["room"] = {"id": room.id, "title": room.config.title}
    conn.push(welcome)
    conn.audit("join", "ok" if p.state is State.JOINED else "waiting")
    hub.refresh_gauges()


async def on_ping(conn: Connection, msg: m.Ping) -> None:
    """Answer a client's keepalive probe."""
    conn.push({"type": "pong", "ts": msg.ts})


async def on_pong(conn: Connection, msg: m.Pong) -> None:
    """Nothing to do: any message received already counts as a sign of life."""


async def on_leave(conn: Connection, msg: m.Leave) -> None:
    """Leave the room and close."""
    conn.leave_reason = "left"
    conn.kick(Close.LEFT, "left")


async def on_set_role(conn: Connection, msg: m.SetRole) -> None:
    """Change a participant's role (moderator)."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    target = room.set_role(me.id, msg.participant, msg.role)
    conn.audit("set_role", target=target.identity, code=msg.role.value)


async def on_mute(conn: Connection, msg: m.Mute) -> None:
    """Mute a participant (moderator)."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    target = room.mute(me.id, msg.participant)
    conn.audit("mute", target=target.identity)


async def on_set_muted(conn: Connection, msg: m.SetMuted) -> None:
    """Mute or unmute oneself."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    room.set_muted(me.id, msg.muted)


async def on_remove(conn: Connection, msg: m.Remove) -> None:
    """Remove a participant for the rest of the session (moderator)."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    target = room.remove(me.id, msg.participant, conn.hub.now())
    conn.audit("remove", target=target.identity)
    conn.hub.refresh_gauges()


async def on_admit(conn: Connection, msg: m.Admit) -> None:
    """Let a participant in from the lobby (moderator)."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    target = room.admit(me.id, msg.participant)
    conn.audit("admit", target=target.identity)


async def on_deny(conn: Connection, msg: m.Deny) -> None:
    """Turn a participant in the lobby away (moderator)."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    target = room.deny(me.id, msg.participant, conn.hub.now())
    conn.audit("deny", target=target.identity)
    conn.hub.refresh_gauges()


async def on_end_room(conn: Connection, msg: m.EndRoom) -> None:
    """End the session for everyone (moderator)."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    conn.hub.end_room(room.id, "ended_by_moderator", me.id)
    conn.audit("room_end", code="ended_by_moderator")


HANDLERS: dict[str, Handler] = {
    "hello": on_hello,
    "ping": on_ping,
    "pong": on_pong,
    "leave": on_leave,
    "set_role": on_set_role,
    "mute": on_mute,
    "set_muted": on_set_muted,
    "remove": on_remove,
    "admit": on_admit,
    "deny": on_deny,
    "end_room": on_end_room,
}
