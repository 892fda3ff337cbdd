"""One signaling connection: a reader, a writer fed by a queue, and a keepalive timer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from teleconsult.media.sfu import MediaError
from teleconsult.session.errors import Code as SessionCode
from teleconsult.session.errors import SessionError
from teleconsult.session.participant import Event, Participant
from teleconsult.session.room import Room

from .errors import Close, Code, ProtocolError
from .handlers import HANDLERS, PRE_HANDSHAKE
from .hub import Hub
from .messages import parse
from .ratelimit import TokenBucket
from .tasks import cancel_and_wait
from .tokens import Grant

log = logging.getLogger("teleconsult.signaling")

# Why a connection can end without its participant meaning to leave: it may come back.
AWAY_REASONS = frozenset({"lost", "timeout", "too_slow"})
# Close codes a client sends when it closes on purpose (a page closed, a tool stopped).
CLEAN_CLOSES = frozenset({1000, 1001})


@dataclass(frozen=True)
class _CloseRequest:
    code: int
    reason: str


@dataclass(frozen=True)
class _LatestSlot:
    """Stands in the queue for the latest of a kind of event (an author's pointer, the held
    frame), sent when its turn comes: a slow reader gets the newest only."""

    key: str


async def until_one_ends(*loops: Coroutine[Any, Any, None]) -> None:
    """Run loops together until one ends (or this is cancelled), then stop the others."""
    tasks = [asyncio.create_task(loop) for loop in loops]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(tasks)


class Socket(Protocol):
    """What a connection reads and writes: a WebSocket, or one relayed from another node."""

    async def accept(self) -> None:
        """Complete the opening handshake."""

    async def receive(self) -> Any:
        """Return the next ASGI message."""

    async def send_text(self, data: str) -> None:
        """Send one text frame."""

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Close with a code and reason."""


class Connection:
    """Serves one WebSocket; implements session.participant.Client for its room."""

    def __init__(
        self,
        ws: Socket,
        hub: Hub,
        first: dict[str, Any] | None = None,
        relayed_from: str | None = None,
        ice_urls: list[str] | None = None,
    ) -> None:
        self.ws = ws
        self.hub = hub
        # The client's address as this node sees it (None when it came through another node): a
        # reconnect from another address means the media paths from the old one are dead.
        client = getattr(ws, "client", None)
        self.peer: str | None = getattr(client, "host", None) if relayed_from is None else None
        # A frame already read (by the cluster, to find the room) and the node it came through.
        self.first = first
        self.relayed_from = relayed_from
        # TURN servers of the node the client reached, where its media is.
        self.ice_urls = ice_urls
        # The client's media stays on the node it reached.
        self.media = hub.plane.at(relayed_from)
        self.media_node = relayed_from or hub.node
        s = hub.settings
        now = hub.now()
        self.out: asyncio.Queue[Event | _CloseRequest | _LatestSlot] = asyncio.Queue()
        self.bucket = TokenBucket(s.rate, s.burst, now)
        # Pointers are accepted at up to 60 Hz; drawings, chat and hands at a human pace.
        self.pointer_bucket = TokenBucket(s.pointer_rate, s.pointer_rate, now)
        self.op_bucket = TokenBucket(s.op_rate, s.op_burst, now)
        self.frame_bucket = TokenBucket(s.held_frame_rate, 2 * s.held_frame_rate, now)
        # The latest pointer of each author, and the latest held frame, not yet sent.
        self.latest: dict[str, Event] = {}
        self.opened_at = now
        self.last_heard = now
        self.last_ping = now
        self.last_rate_error = -1e9
        self.closing: _CloseRequest | None = None
        self.leave_reason = "disconnected"
        self.frozen = False  # the server is stopping: messages are no longer taken
        self.grant: Grant | None = None
        self.room: Room | None = None
        self.participant: Participant | None = None

    # -- session.participant.Client ----------------------------------------------------------

    def push(self, event: Event) -> None:
        """Queue an event for the writer; a client that cannot keep up is disconnected."""
        if self.closing is not None:
            return
        kind = event.get("type")
        if kind in ("pointer", "frame_held") and "ref" not in event:
            # A held frame is up to a few hundred KiB: only the newest is worth its bytes.
            key = f"pointer:{event['author']}" if kind == "pointer" else "frame_held"
            if key not in self.latest:
                self.out.put_nowait(_LatestSlot(key))
            self.latest[key] = event
            return
        if self.out.qsize() >= self.hub.settings.queue_size:
            self.leave_reason = "too_slow"
            self.kick(Close.TOO_SLOW, "not reading fast enough")
            return
        self.out.put_nowait(event)

    def kick(self, code: int, reason: str) -> None:
        """Close after what is already queued has been sent."""
        if self.closing is None:
            self.closing = _CloseRequest(code, reason)
            self.out.put_nowait(self.closing)

    # -- helpers for handlers ----------------------------------------------------------------

    def error(self, code: str, message: str, ref: str | None = None, **details: Any) -> None:
        """Send an error message and count it."""
        self.hub.metrics.errors.labels(code=code).inc()
        event: Event = {"type": "error", "code": code, "message": message}
        if ref is not None:
            event["ref"] = ref
        event.update({k: v for k, v in details.items() if v is not None})
        self.push(event)

    def allow_op(self, kind: Literal["pointer", "op", "frame"]) -> bool:
        """Apply the per-connection limit on annotation operations; False drops this one."""
        now = self.hub.now()
        bucket = {"pointer": self.pointer_bucket, "op": self.op_bucket, "frame": self.frame_bucket}
        if bucket[kind].take(now):
            return True
        self.hub.metrics.messages.labels(type="dropped").inc()
        if now - self.last_rate_error >= 1.0:
            self.last_rate_error = now
            what = {
                "pointer": "pointer updates are limited to 60 a second",
                "op": "too many annotations, messages or hands a second",
                "frame": "a frame can be held up for everyone about once a second",
            }
            self.error(Code.RATE_LIMITED, what[kind])
        return False

    def freeze(self) -> None:
        """Take no more messages: the server is stopping and writes what it acknowledged."""
        self.frozen = True

    def shutdown(self) -> None:
        """Close because the server is stopping."""
        self.leave_reason = "server_shutdown"
        self.kick(Close.GOING_AWAY, "server shutting down")

    # -- the three loops ---------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until either side closes it."""
        if self.first is None:
            await self.ws.accept()
        self.hub.connections.add(self)
        self.hub.metrics.connections.inc()
        try:
            await until_one_ends(self._read(), self._write(), self._keepalive())
        finally:
            self._depart()
            self.hub.connections.discard(self)
            self.hub.metrics.connections.dec()

    async def _read(self) -> None:
        while True:
            msg, self.first = self.first or await self.ws.receive(), None
            if msg["type"] == "websocket.disconnect":
                if self.leave_reason == "disconnected" and msg.get("code") not in CLEAN_CLOSES:
                    # No close frame: the network dropped, the participant did not go.
                    self.leave_reason = "lost"
                return
            self.last_heard = self.hub.now()
            if self.closing is not None or self.frozen:
                continue
            await self._on_frame(msg.get("text"), msg.get("bytes"))

    async def _write(self) -> None:
        while True:
            item = await self.out.get()
            if isinstance(item, _CloseRequest):
                with contextlib.suppress(Exception):
                    await self.ws.close(item.code, item.reason)
                return
            if isinstance(item, _LatestSlot):
                latest = self.latest.pop(item.key, None)
                if latest is None:
                    continue
                item = latest
            await self.ws.send_text(self.hub.encode(item))

    async def _keepalive(self) -> None:
        s = self.hub.settings
        tick = min(s.ping_interval, s.ping_timeout, s.handshake_timeout) / 4
        while self.closing is None:
            await asyncio.sleep(tick)
            now = self.hub.now()
            if self.participant is None and now - self.opened_at >= s.handshake_timeout:
                self.error(Code.HANDSHAKE_REQUIRED, "no hello within the handshake timeout")
                self.kick(Close.HANDSHAKE_TIMEOUT, "handshake timeout")
            elif now - self.last_heard >= s.ping_timeout:
                self.leave_reason = "timeout"
                self.kick(Close.TIMEOUT, "keepalive timeout")
            elif now - self.last_ping >= s.ping_interval:
                self.last_ping = now
                self.push({"type": "ping", "ts": now})

    # -- one frame ---------------------------------------------------------------------------

    async def _on_frame(self, text: str | None, data: bytes | None) -> None:
        now = self.hub.now()
        if not self.bucket.take(now):
            self.hub.metrics.messages.labels(type="dropped").inc()
            # One error a second is enough to tell a flooding client; more would add to the flood.
            if now - self.last_rate_error >= 1.0:
                self.last_rate_error = now
                self.error(Code.RATE_LIMITED, "too many messages; slow down")
            return
        try:
            if text is None:
                raise ProtocolError(Code.BINARY_NOT_SUPPORTED, "binary frames are not accepted")
            s = self.hub.settings
            # A held frame (a JPEG) may be larger than any other message, and nothing else.
            cap = max(s.max_message, s.max_held_frame)
            size = len(text) if len(text) > cap else len(text.encode())  # bytes ≥ characters
            if size > cap:
                raise ProtocolError(
                    Code.MESSAGE_TOO_LARGE, f"messages are limited to {s.max_message} bytes"
                )
            message = parse(
                text, size, lambda t: s.max_held_frame if t == "hold_frame" else s.max_message
            )
        except ProtocolError as e:
            self.hub.metrics.messages.labels(type="invalid").inc()
            self.error(e.code, e.message, ref=e.ref, **e.details)
            return
        self.hub.metrics.messages.labels(type=message.type).inc()
        if self.participant is None and message.type not in PRE_HANDSHAKE:
            self.error(Code.HANDSHAKE_REQUIRED, "send hello first", ref=message.id)
            return
        try:
            await HANDLERS[message.type](self, message)
            if self.room is not None and message.type not in ("pointer", "ping", "pong"):
                self.hub.persist(self.room)
        except (SessionError, MediaError) as e:
            self.error(e.code, e.message, ref=message.id)
            if e.code in (SessionCode.FORBIDDEN, SessionCode.IN_LOBBY):
                self.audit(message.type, "denied", code=e.code)
        except Exception:
            log.exception("handler for %s failed", message.type)
            self.error(Code.INTERNAL, "the server could not handle this message", ref=message.id)

    def audit(self, action: str, outcome: str = "ok", **fields: Any) -> None:
        """Audit an action taken through this connection."""
        p, g = self.participant, self.grant
        self.hub.audit.record(
            action,
            outcome,
            room=g.room if g else None,
            identity=g.identity if g else None,
            role=p.role.value if p else None,
            participant=p.id if p else None,
            **fields,
        )

    def _depart(self) -> None:
        if self.room is None or self.participant is None:
            return
        if self.leave_reason in AWAY_REASONS and self.hub.settings.reconnect_grace > 0:
            # A dropped connection (a handover, a tunnel, a dead Wi-Fi) is not a goodbye: the
            # participant, its streams and its subscriptions wait for it to come back.
            if self.room.away(self.participant.id, self.leave_reason, self.hub.now(), self):
                self.audit("away", code=self.leave_reason)
                self.hub.refresh_gauges()
            return
        left = self.room.leave(self.participant.id, self.leave_reason, self.hub.now(), client=self)
        if left is not None:
            self.hub.spawn(self.media.close_participant(left.id, self.leave_reason))
            self.audit("leave", code=self.leave_reason)
            self.hub.refresh_gauges()
            self.hub.persist(self.room)
