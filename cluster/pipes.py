"""Client WebSockets carried over the bus between the node they reached and their room's host."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from teleconsult.signaling.connection import Connection, Socket, until_one_ends
from teleconsult.signaling.errors import Close
from teleconsult.signaling.ratelimit import TokenBucket
from teleconsult.signaling.tokens import TokenError, verify

from .bus import CloseClient, Down, Gone, Message, Open, Up

if TYPE_CHECKING:
    from teleconsult.signaling.hub import Hub


class RelayedSocket:
    """The host's end of a client connection that reached another node."""

    def __init__(self, send: Callable[[str, Message], None], cid: str, edge: str) -> None:
        self.send = send
        self.cid = cid
        self.edge = edge
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def accept(self) -> None:
        """The edge has accepted the WebSocket already."""

    async def receive(self) -> dict[str, Any]:
        """Return the next frame the edge passed on."""
        return await self.inbox.get()

    async def send_text(self, data: str) -> None:
        """Pass a frame to the edge, in order."""
        self.send(self.edge, Down(cids=[self.cid], text=data))

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Ask the edge to close the client's WebSocket."""
        self.send(self.edge, CloseClient(cid=self.cid, code=code, reason=reason))

    def gone(self) -> None:
        """The client or its edge node went away."""
        self.inbox.put_nowait({"type": "websocket.disconnect", "code": 1006})


@dataclass
class Pipe:
    """The edge's end: a client's WebSocket whose room is hosted on another node."""

    ws: Socket
    host: str
    out: asyncio.Queue[tuple[str, Any, Any]] = field(default_factory=asyncio.Queue)

    def close(self, code: int, reason: str | None) -> None:
        """Close the client's WebSocket once what was queued before is sent."""
        self.out.put_nowait(("close", code, reason))


class Pipes:
    """The WebSockets this node carries: to hosts elsewhere (pipes) and from edges (relayed)."""

    def __init__(
        self,
        hub: Hub,
        send: Callable[[str, Message], None],
        host_for: Callable[[str], Awaitable[str]],
        spawn: Callable[[Awaitable[None]], None],
    ) -> None:
        self.hub = hub
        self.send = send
        self.host_for = host_for
        self.spawn = spawn
        self.pipes: dict[str, Pipe] = {}
        self.relayed: dict[str, RelayedSocket] = {}

    # -- host side ---------------------------------------------------------------------------

    def on_open(self, msg: Open) -> None:
        """Serve a client that reached another node, as if it had reached this one."""
        rs = RelayedSocket(self.send, msg.cid, msg.edge)
        self.relayed[msg.cid] = rs
        frame = {"type": "websocket.receive", "text": msg.text}
        conn = Connection(rs, self.hub, frame, msg.edge, msg.turn)

        async def serve() -> None:
            try:
                await conn.run()
            finally:
                self.relayed.pop(msg.cid, None)

        self.spawn(serve())

    def on_up(self, msg: Up) -> None:
        """Hand a client's frame to its connection here."""
        rs = self.relayed.get(msg.cid)
        if rs is not None:
            frame = {"bytes": b""} if msg.binary else {"text": msg.text}
            rs.inbox.put_nowait({"type": "websocket.receive", **frame})

    def on_gone(self, msg: Gone) -> None:
        """A relayed client went away."""
        rs = self.relayed.get(msg.cid)
        if rs is not None:
            rs.gone()

    # -- edge side ---------------------------------------------------------------------------

    def on_down(self, msg: Down) -> None:
        """Pass a host's frame to every client of this node it is for."""
        for cid in msg.cids:
            pipe = self.pipes.get(cid)
            if pipe is not None:
                pipe.out.put_nowait(("text", msg.text, None))

    def on_close(self, msg: CloseClient) -> None:
        """Close a client's WebSocket as its host asked."""
        pipe = self.pipes.get(msg.cid)
        if pipe is not None:
            pipe.close(msg.code, msg.reason)

    async def serve(self, ws: Socket) -> None:
        """Serve a client WebSocket here, or pipe it to the node hosting its room."""
        await ws.accept()
        try:
            first = await asyncio.wait_for(ws.receive(), self.hub.settings.handshake_timeout)
        except TimeoutError:
            first = {"type": "websocket.receive", "text": None, "bytes": b""}
        room = self._room_of(first.get("text"))
        # A stopping node serves the hello itself, to refuse it: the room is being handed over.
        node = self.hub.node
        host = node if room is None or self.hub.draining else await self.host_for(room)
        if host == node or first.get("type") != "websocket.receive":
            await Connection(ws, self.hub, first).run()
            return
        await self._pipe(ws, first["text"], host)

    # -- failures ----------------------------------------------------------------------------

    def drop_dead(self, live: Iterable[str]) -> None:
        """Close what is carried to or from nodes no longer alive."""
        alive = set(live)
        for cid, pipe in list(self.pipes.items()):
            if pipe.host not in alive:
                # The host died: the client reconnects, and its room is rebuilt on a live node.
                pipe.close(Close.MOVED, "the session moves to another node")
                self.pipes.pop(cid, None)
        for rs in list(self.relayed.values()):
            if rs.edge not in alive:
                rs.gone()

    def undelivered(self, msg: Message) -> None:
        """A client's frame that reached no host, or a host's that reached no edge: hang up.

        A client whose frames did not reach its room's host is made to reconnect (its channel
        resumes exactly); a client of another node whose events did not reach it is taken for
        dropped on the host (it reconnects too, when its pings go unanswered).
        """
        if isinstance(msg, Open | Up | Gone):
            pipe = self.pipes.get(msg.cid)
            if pipe is not None:
                pipe.close(Close.MOVED, "the room's node is unreachable")
        elif isinstance(msg, Down | CloseClient):
            for cid in msg.cids if isinstance(msg, Down) else [msg.cid]:
                rs = self.relayed.get(cid)
                if rs is not None:
                    rs.gone()

    def close_all(self) -> None:
        """Tell every piped client to reconnect: this node stops."""
        for pipe in self.pipes.values():
            pipe.close(Close.GOING_AWAY, "server shutting down")

    # -- the pipe ------------------------------------------------------------------------------

    async def _pipe(self, ws: Socket, first: str, host: str) -> None:
        cid = secrets.token_hex(8)
        pipe = Pipe(ws, host)
        self.pipes[cid] = pipe
        self.hub.metrics.connections.inc()
        # The client's media will be on this node: so will the TURN servers it is given.
        turn = self.hub.turn_urls()
        self.send(host, Open(cid=cid, edge=self.hub.node, text=first, turn=turn))
        try:
            await until_one_ends(self._pipe_up(cid, pipe), self._pipe_down(pipe))
        finally:
            if self.pipes.pop(cid, None) is not None:
                self.send(host, Gone(cid=cid))
            self.hub.metrics.connections.dec()

    async def _pipe_up(self, cid: str, pipe: Pipe) -> None:
        s = self.hub.settings
        limit = max(s.max_message, s.max_held_frame)  # a held frame is the largest message
        # The host limits the client's rate and says so; a flood beyond twice that limit is
        # dropped here rather than carried through Redis to be dropped there.
        bucket = TokenBucket(2 * s.rate, 2 * s.burst, self.hub.now())
        while True:
            msg = await pipe.ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            if not bucket.take(self.hub.now()):
                continue
            text = msg.get("text")
            if text is None:
                self.send(pipe.host, Up(cid=cid, binary=True))
                continue
            # The host checks every frame; it need not be sent megabytes to refuse them.
            self.send(pipe.host, Up(cid=cid, text=text[: limit + 1]))

    async def _pipe_down(self, pipe: Pipe) -> None:
        queue_size = self.hub.settings.queue_size
        while True:
            kind, a, b = await pipe.out.get()
            if kind == "close":
                with contextlib.suppress(Exception):
                    await pipe.ws.close(a, b)
                return
            if pipe.out.qsize() >= queue_size:
                with contextlib.suppress(Exception):
                    await pipe.ws.close(Close.TOO_SLOW, "not reading fast enough")
                return
            await pipe.ws.send_text(a)

    def _room_of(self, text: str | None) -> str | None:
        """Return the room of a hello with a valid token for it; None leaves it to this node."""
        if not text or len(text) > self.hub.settings.max_message:
            return None
        try:
            msg = json.loads(text)
            grant = verify(self.hub.keys.token_secret, msg["token"], self.hub.now())
        except (ValueError, TypeError, KeyError, TokenError):
            return None  # refused here, with the codes of any refusal
        # Only a client entitled to the room may cause a placement (or a relay).
        return grant.room if msg.get("type") == "hello" and msg.get("room") == grant.room else None
