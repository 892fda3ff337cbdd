"""One handler per client message type."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from teleconsult.session.errors import Close as SessionClose
from teleconsult.session.errors import Code as SessionCode
from teleconsult.session.errors import SessionError
from teleconsult.session.participant import Event, Participant, State
from teleconsult.session.room import Room

from . import messages as m
from .access import Refused, grant_for
from .conn import Conn, Handler
from .errors import Close, Code, ProtocolError
from .held import picture_size
from .media_handlers import (
    on_answer,
    on_get_stats,
    on_pause,
    on_publish,
    on_subscribe,
    on_unpublish,
    on_unsubscribe,
)
from .tokens import Grant

if TYPE_CHECKING:
    from teleconsult.media.sfu import Media


# Messages accepted before the handshake completes.
PRE_HANDSHAKE = frozenset({"hello", "ping", "pong"})


def _refuse(conn: Conn, code: str, message: str, close: int, ref: str | None) -> None:
    conn.error(code, message, ref=ref)
    conn.kick(close, code)


async def on_hello(conn: Conn, msg: m.Hello) -> None:
    """Check version and token, then join the room (or its lobby) and send the welcome."""
    hub = conn.hub
    if not _may_say_hello(conn, msg):
        return
    try:
        grant = await grant_for(hub, msg.token, msg.room)
    except Refused as e:
        hub.audit.record("join", "denied", room=msg.room, code=e.code)
        close = SessionClose.REMOVED if e.code == SessionCode.REMOVED else Close.UNAUTHORIZED
        _refuse(conn, e.code, e.message, close, msg.id)
        return
    conn.grant = grant
    # A room that is not live here may have a channel in the store (another node, a restart).
    await hub.restore(grant.room)
    try:
        room, p, old_media = await _join(conn, grant)
    except SessionError as e:
        conn.audit("join", "denied", code=e.code)
        close = {
            SessionCode.ROOM_FULL: Close.ROOM_FULL,
            SessionCode.ROOM_ENDED: SessionClose.ROOM_ENDED,
            SessionCode.REMOVED: SessionClose.REMOVED,
        }.get(e.code, Close.UNAUTHORIZED)
        _refuse(conn, e.code, e.message, close, msg.id)
        return
    if old_media is not None:
        room.remove_streams_of(p.id, "replaced")
        p.subscriptions.clear()
    conn.room, conn.participant = room, p
    conn.push(_welcome(conn, msg, room, p))
    if old_media is not None:
        await old_media.close_participant(p.id, "replaced")
    conn.audit("join", "ok" if p.state is State.JOINED else "waiting")
    hub.refresh_gauges()


def _may_say_hello(conn: Conn, msg: m.Hello) -> bool:
    """Refuse a second hello, a hello to a stopping node, or one of an unknown version."""
    if conn.participant is not None:
        conn.error(Code.ALREADY_JOINED, "this connection has already joined", ref=msg.id)
        return False
    if conn.hub.draining:
        message = "this server is stopping; connect again"
        _refuse(conn, Code.SERVER_SHUTDOWN, message, Close.GOING_AWAY, msg.id)
        return False
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
        return False
    return True


async def _join(conn: Conn, grant: Grant) -> tuple[Room, Participant, Media | None]:
    """Join the room (SessionError if refused); returns the media of a previous connection on
    another node, which the new one replaces."""
    hub = conn.hub
    if hub.rooms.was_ended(grant.room):
        raise SessionError(SessionCode.ROOM_ENDED, "this session has ended")
    room = hub.rooms.open(grant.room, hub.now())
    existing = room.by_identity(grant.identity)
    # A participant back through the same node keeps its streams and subscriptions: what
    # still flows goes on, what was lost it publishes again under the same stream id.
    # Media on another node than the new connection's cannot be continued from here.
    old_media = None
    old_node = getattr(existing.client, "media_node", hub.node) if existing else None
    if existing is not None and old_node != conn.media_node:
        old_media = hub.plane.of(existing)
    # Back from another address (a handover): its media left from the old one and is dead,
    # though ICE consent would take seconds more to say so.
    # Done before the join, so that the old connection is told and the welcome says it:
    # streams reconnecting, those subscriptions gone; the client makes both again.
    old_peer = getattr(existing.client, "peer", None) if existing else None
    if existing and old_media is None and old_peer and conn.peer and old_peer != conn.peer:
        await conn.media.lost(existing.id)
    p = room.join(grant.identity, grant.name, grant.role, conn, hub.now(), hub.new_participant_id)
    return room, p, old_media


def _welcome(conn: Conn, msg: m.Hello, room: Room, p: Participant) -> Event:
    """The welcome: who the participant is, ICE servers, limits, and the room as it is now."""
    s = conn.hub.settings
    assert conn.grant is not None
    welcome: dict[str, Any] = {
        "type": "welcome",
        "ref": msg.id,
        "version": msg.version,
        "participant_id": p.id,
        "you": p.describe(),
        "state": p.state.value,
        "ice_servers": conn.hub.ice_servers(conn.grant.identity, conn.ice_urls),
        "ping_interval": s.ping_interval,
        "ping_timeout": s.ping_timeout,
        "limits": {
            "max_message": s.max_message,
            "max_held_frame": s.max_held_frame,
            "rate": s.rate,
            "burst": s.burst,
        },
    }
    if p.state is State.JOINED:
        welcome.update(room.snapshot(p))
        # After a reconnect: the subscriptions the server still holds for this participant
        # (one it ended meanwhile is not here, and the client subscribes again).
        welcome["subscriptions"] = sorted(p.subscriptions)
        # Built in the same step as the join: no operation can fall between the two.
        welcome["channel"] = (
            room.channel.snapshot() if msg.resume is None else room.channel.since(msg.resume)
        )
    else:
        welcome["room"] = {"id": room.id, "title": room.config.title}
    return welcome


async def on_ping(conn: Conn, msg: m.Ping) -> None:
    """Answer a client's keepalive probe."""
    conn.push({"type": "pong", "ts": msg.ts})


async def on_pong(conn: Conn, msg: m.Pong) -> None:
    """Nothing to do: any message received already counts as a sign of life."""


async def on_leave(conn: Conn, msg: m.Leave) -> None:
    """Leave the room and close."""
    conn.leave_reason = "left"
    conn.kick(Close.LEFT, "left")


async def on_set_role(conn: Conn, msg: m.SetRole) -> None:
    """Change a participant's role (moderator)."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    target = room.set_role(me.id, msg.participant, msg.role)
    conn.audit("set_role", target=target.identity, code=msg.role.value)
    await _withdraw_forbidden(conn, target)


async def _withdraw_forbidden(conn: Conn, target: Participant) -> None:
    """End the streams a changed role (or a floor taken back) no longer allows: an operator
    made audience stops sending the patient's image."""
    assert conn.room is not None
    for stream in conn.room.withdraw_forbidden(target.id):
        await conn.hub.plane.of(target).unpublish(stream.id, "role_changed")


async def on_mute(conn: Conn, msg: m.Mute) -> None:
    """Mute a participant (moderator)."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    target = room.mute(me.id, msg.participant)
    conn.hub.plane.of(target).mute(target.id, "audio", True)
    conn.audit("mute", target=target.identity)


async def on_mute_all(conn: Conn, msg: m.MuteAll) -> None:
    """Mute everyone but one participant (moderator), who then has the room."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    for target in room.mute_all(me.id, msg.keep):
        conn.hub.plane.of(target).mute(target.id, "audio", True)
    kept = room.participants.get(msg.keep) if msg.keep else me
    conn.audit("mute_all", target=kept.identity if kept else "")


async def on_set_muted(conn: Conn, msg: m.SetMuted) -> None:
    """Mute or unmute oneself."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    room.set_muted(me.id, msg.muted)
    conn.media.mute(me.id, "audio", msg.muted)


async def on_set_scale(conn: Conn, msg: m.SetScale) -> None:
    """Set the scale of one's own video feed (the operator changed the depth)."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    room.set_scale(me.id, msg.feed, msg.pixel_spacing_mm)


async def on_remove(conn: Conn, msg: m.Remove) -> None:
    """Remove a participant for the rest of the session (moderator)."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    target = room.remove(me.id, msg.participant, conn.hub.now())
    conn.hub.spawn(conn.hub.plane.of(target).close_participant(target.id, "removed"))
    conn.audit("remove", target=target.identity)
    # The link the removed person came in with stops opening anything of the room, its
    # recordings included, also once the room has ended and forgotten whom it removed.
    grant = getattr(target.client, "grant", None)
    if grant is not None and grant.token_id:
        conn.hub.spawn(conn.hub.revoke(room.id, grant.token_id, grant.expires_at, "moderator"))
    conn.hub.refresh_gauges()


async def on_admit(conn: Conn, msg: m.Admit) -> None:
    """Let a participant in from the lobby (moderator)."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    target = room.admit(me.id, msg.participant)
    conn.audit("admit", target=target.identity)


async def on_deny(conn: Conn, msg: m.Deny) -> None:
    """Turn a participant in the lobby away (moderator)."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    target = room.deny(me.id, msg.participant, conn.hub.now())
    conn.audit("deny", target=target.identity)
    conn.hub.refresh_gauges()


async def on_end_room(conn: Conn, msg: m.EndRoom) -> None:
    """End the session for everyone (moderator)."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    conn.hub.end_room(room.id, "ended_by_moderator", me.id)
    conn.audit("room_end", code="ended_by_moderator")


async def on_annotate(conn: Conn, msg: m.Annotate) -> None:
    """Apply an annotation operation; the room orders it and sends it on."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    if not conn.allow_op("pointer" if msg.op == "pointer" else "op"):
        return
    op = msg.model_dump(exclude={"type"}, exclude_none=True)
    room.annotate(me.id, op, conn.hub.now())


async def on_hold_frame(conn: Conn, msg: m.HoldFrame) -> None:
    """Show everyone a still frame of a feed; the image is checked off the event loop."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    room.check_hold(me.id, msg.feed)  # refused before the decoding is paid for
    if not conn.allow_op("frame"):
        return
    try:
        width, height = await asyncio.to_thread(picture_size, msg.image)
    except ProtocolError as e:
        conn.error(e.code, e.message, ref=msg.id)
        return
    frame = {"feed": msg.feed, "width": width, "height": height, "image": msg.image}
    if msg.media_ts is not None:
        frame["media_ts"] = msg.media_ts
    held = room.hold_frame(me.id, frame, conn.hub.now(), ref=msg.id)
    conn.audit("hold_frame", code=held["id"])


async def on_release_frame(conn: Conn, msg: m.ReleaseFrame) -> None:
    """Stop showing the held frame."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    room.release_frame(me.id, ref=msg.id)


async def on_chat(conn: Conn, msg: m.Chat) -> None:
    """Post a chat message."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    if not conn.allow_op("op"):
        return
    room.chat(me.id, _op_id(msg), msg.text, conn.hub.now())


async def on_raise_hand(conn: Conn, msg: m.RaiseHand) -> None:
    """Raise or lower one's hand."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    if not conn.allow_op("op"):
        return
    room.raise_hand(me.id, _op_id(msg), msg.raised, conn.hub.now())


async def on_grant(conn: Conn, msg: m.Grant) -> None:
    """Let a participant annotate or speak beyond its role (moderator)."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    target = room.grant(
        me.id, msg.participant, conn.hub.now(), annotate=msg.annotate, floor=msg.floor
    )
    conn.audit(
        "grant", target=target.identity, code=f"annotate={target.may_annotate},floor={target.floor}"
    )
    await _withdraw_forbidden(conn, target)


async def on_record(conn: Conn, msg: m.Record) -> None:
    """Start or stop recording (moderator); a patient feed first needs the operator's consent."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    hub = conn.hub
    if msg.action == "stop":
        if room.cancel_recording(me.id):
            conn.audit("record_start", "cancelled")
            return
        hub.recordings.stop(room, me.id)
        conn.audit("record_stop", code=room.recording.session_id)
        return
    if room.start_recording(me.id, hub.now()):
        session_id = hub.recordings.start(room)
        conn.audit("record_start", code=session_id)
    else:
        conn.audit("record_start", "pending", code="consent_required")


async def on_consent(conn: Conn, msg: m.Consent) -> None:
    """Take the operator's answer on the patient's consent to recording."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    hub = conn.hub
    if not msg.confirmed:
        pending = room.decline_consent(me.id)
        conn.audit("consent", "declined")
        if pending in room.participants:
            room.participants[pending].client.push({"type": "consent_declined", "by": me.id})
        return
    start = room.give_consent(me.id, hub.now())
    conn.audit("consent", "confirmed")
    if start:
        session_id = hub.recordings.start(room)
        conn.audit("record_start", code=session_id)
    elif room.recording.active:
        hub.recordings.recorders[room.id].refresh()


def _op_id(msg: m.Message) -> str:
    if not msg.id:
        raise SessionError(SessionCode.INVALID_OP, "an operation needs an id")
    return msg.id


HANDLERS: dict[str, Handler] = {
    "hello": on_hello,
    "ping": on_ping,
    "pong": on_pong,
    "leave": on_leave,
    "set_role": on_set_role,
    "mute": on_mute,
    "mute_all": on_mute_all,
    "set_muted": on_set_muted,
    "set_scale": on_set_scale,
    "remove": on_remove,
    "admit": on_admit,
    "deny": on_deny,
    "end_room": on_end_room,
    "publish": on_publish,
    "unpublish": on_unpublish,
    "subscribe": on_subscribe,
    "answer": on_answer,
    "unsubscribe": on_unsubscribe,
    "pause": on_pause,
    "get_stats": on_get_stats,
    "annotate": on_annotate,
    "chat": on_chat,
    "hold_frame": on_hold_frame,
    "release_frame": on_release_frame,
    "raise_hand": on_raise_hand,
    "grant": on_grant,
    "record": on_record,
    "consent": on_consent,
}
