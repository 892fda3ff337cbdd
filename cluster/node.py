"""A node's part in a cluster: heartbeats, room placement, and signaling relayed over Redis.

Each room has one host node, which owns its state and runs its handlers. A client may reach any
node: when its room is hosted elsewhere, this node pipes the client's frames over Redis to the
host and the host's frames back (the client sees one WebSocket). The client's media stays on
the node it reached: the host asks that node's SFU over the bus (RemoteMedia). A stream wanted
on a node other than its publisher's is cascaded there once, node to node over WebRTC, and fanned
out locally; keyframe requests, NACKs and bandwidth estimates travel back up the same leg.
Heartbeats carry each node's load with a TTL; a room whose host stops beating is claimed by the
next node a client reaches, and rebuilt there from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from teleconsult.media.sfu import MediaError
from teleconsult.session.placement import Load, choose
from teleconsult.signaling.access import Link
from teleconsult.signaling.connection import Connection, Socket, until_one_ends
from teleconsult.signaling.errors import Close
from teleconsult.signaling.http_api import admin_op
from teleconsult.signaling.ratelimit import TokenBucket
from teleconsult.signaling.recordings_api import find_session, with_links
from teleconsult.signaling.tokens import TokenError, verify

from .bus import Bus, Call, CloseClient, Down, Gone, Message, Open, Reply, Up

if TYPE_CHECKING:
    from teleconsult.signaling.hub import Hub

log = logging.getLogger("teleconsult.cluster")

# A node that does not answer a media request within this long is taken for unreachable.
CALL_TIMEOUT = 10.0
# The participant id a cascaded stream is published under on the node it was pulled to.
CASCADE = "cascade:"
# A cascade leg with no subscriber (and no recorder) here for this long is closed.
IDLE_LEG = 10.0


class RelayedSocket:
    """The host's end of a client connection that reached another node."""

    def __init__(self, cluster: Cluster, cid: str, edge: str) -> None:
        self.cluster = cluster
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
        self.cluster.send(self.edge, Down(cids=[self.cid], text=data))

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        """Ask the edge to close the client's WebSocket."""
        self.cluster.send(self.edge, CloseClient(cid=self.cid, code=code, reason=reason))

    def gone(self) -> None:
        """The client or its edge node went away."""
        self.inbox.put_nowait({"type": "websocket.disconnect", "code": 1006})


@dataclass
class Pipe:
    """The edge's end: a client's WebSocket whose room is hosted on another node."""

    ws: Socket
    host: str
    out: asyncio.Queue[tuple[str, Any, Any]] = field(default_factory=asyncio.Queue)


class Cluster:
    """Membership of one node: heartbeat, placement, and the bus between nodes."""

    def __init__(self, hub: Hub) -> None:
        import redis.asyncio as redis

        self.hub = hub
        self.node = hub.node
        self.ttl = hub.settings.node_ttl
        self.redis = redis.from_url(hub.settings.redis or "")
        self.prefix = "teleconsult"
        self.pipes: dict[str, Pipe] = {}
        self.relayed: dict[str, RelayedSocket] = {}
        self.live: dict[str, Load] = {}
        self.urls: dict[str, str] = {}  # the public address of each live node
        self.bus = Bus(self.redis, self.node, self.live, self._dispatch, self._dropped)
        self._handlers: dict[type[Message], Callable[[Any], None]] = {
            Open: self._on_open,
            Up: self._on_up,
            Gone: self._on_gone,
            Call: lambda msg: self._spawn(self._answer(msg)),
            Reply: self._on_reply,
            Down: self._on_down,
            CloseClient: self._on_close,
        }
        self._tasks: list[asyncio.Task[None]] = []
        self._beat: asyncio.Task[None] | None = None
        self._stopped = False
        self._spawned: set[asyncio.Task[Any]] = set()
        self._cpu = (time.monotonic(), time.process_time())
        self._calls: dict[str, asyncio.Future[Any]] = {}
        self._pulls: dict[str, asyncio.Future[None]] = {}
        # Streams and subscriptions served here for rooms hosted elsewhere: id -> host.
        self.routes: dict[str, str] = {}
        self._idle_since: dict[str, float] = {}

    def legs_in(self) -> int:
        """Count the streams cascaded to this node from others."""
        return sum(1 for u in self.hub.sfu.ups.values() if u.participant_id.startswith(CASCADE))

    @property
    def published(self) -> int:
        """Bus messages published, for the metrics."""
        return self.bus.published

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Join the cluster: beat, listen and send."""
        self._beat = asyncio.create_task(self._beat_forever())
        self._tasks = [
            self._beat,
            asyncio.create_task(self.bus.listen_forever()),
            asyncio.create_task(self.bus.send_forever()),
        ]

    async def hand_over(self) -> None:
        """Stop beating and free this node's rooms; the bus stays up to close its clients."""
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._beat
        try:
            # Other nodes need not wait for the heartbeat to expire to take these rooms on.
            await self.hub.store.depart(self.node, [r.id for r in self.hub.rooms.live()])
        except Exception:
            log.warning("cannot reach the store to leave the cluster; the heartbeat expires")

    async def stop(self) -> None:
        """Leave the cluster; clients piped through here are told to reconnect."""
        if self._stopped:
            return
        self._stopped = True
        for pipe in self.pipes.values():
            pipe.out.put_nowait(("close", Close.GOING_AWAY, "server shutting down"))
        for _ in range(20):
            if self.bus.idle() and not self.pipes:
                break
            await asyncio.sleep(0.05)
        for task in [*self._tasks, *self._spawned]:
            task.cancel()
        for task in [*self._tasks, *self._spawned]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.hand_over()
        await self.redis.aclose()

    # -- placement ---------------------------------------------------------------------------

    def load(self) -> Load:
        """Measure this node's load for the heartbeat."""
        wall, cpu = time.monotonic(), time.process_time()
        then_wall, then_cpu = self._cpu
        self._cpu = (wall, cpu)
        sfu = self.hub.sfu
        return Load(
            rooms=len(self.hub.rooms),
            up_tracks=sum(len(u.tracks) for u in sfu.ups.values()),
            down_tracks=sum(len(d.tracks) for d in sfu.downs.values()),
            cpu=100.0 * (cpu - then_cpu) / max(wall - then_wall, 1e-3),
        )

    async def host_for(self, room_id: str) -> str:
        """Return the node that hosts a room, placing it on the least-loaded node if new."""
        if self.hub.rooms.get(room_id) is not None:
            return self.node
        store = self.hub.store
        try:
            host = await store.host(room_id)
            if host is not None:
                return host
            if await store.was_ended(room_id):
                return self.node  # refused right here; nothing to place
            nodes = await store.nodes()
            candidate = choose({n: load for n, (load, _) in nodes.items()}, self.node)
            return await store.claim(room_id, candidate)
        except Exception:
            # Redis out of reach: serve the room here rather than not at all.
            log.warning("cannot reach the store to place a room; serving it on this node")
            return self.node

    async def _beat_forever(self) -> None:
        info = {"url": self.hub.settings.base_url(), "pid": os.getpid()}
        failing = False
        while True:
            try:
                await self.hub.store.heartbeat(self.node, self.load(), self.ttl, info)
                # After a Redis restart the placements are gone: take back the rooms served here.
                for room in self.hub.rooms.live():
                    host = await self.hub.store.claim(room.id, self.node)
                    if host != self.node:
                        # This node was taken for dead (it froze, or lost Redis for longer than
                        # the TTL) and the room went on elsewhere: send its people there.
                        log.warning("a room live here moved to node %s; handing it over", host)
                        self.hub.relinquish(room.id)
                nodes = await self.hub.store.nodes()
                self.live = {n: load for n, (load, _) in nodes.items()}
                self.urls = {n: str(i["url"]) for n, (_, i) in nodes.items() if i.get("url")}
                if failing:
                    log.warning("the store is reachable again; node %s registered", self.node)
                failing = False
                self._drop_dead_peers()
                await self._close_idle_legs()
            except Exception:
                if not failing:
                    log.warning("cannot reach the store; media and local rooms go on")
                failing = True
            await asyncio.sleep(self.ttl / 3)

    async def _close_idle_legs(self) -> None:
        # The origin sends to this node as long as the leg is open: close it once nobody here
        # watches, so that a conference's edge does not draw bandwidth for nobody.
        now = time.monotonic()
        for gone in set(self._idle_since) - set(self.hub.sfu.ups):
            del self._idle_since[gone]
        for up in list(self.hub.sfu.ups.values()):
            if not up.participant_id.startswith(CASCADE):
                continue
            if up.downs or any(t.taps for t in up.tracks.values()):
                self._idle_since.pop(up.id, None)
                continue
            since = self._idle_since.setdefault(up.id, now)
            if now - since >= IDLE_LEG:
                self._idle_since.pop(up.id, None)
                await self.hub.sfu.unpublish(up.id, "idle_leg")

    def _drop_dead_peers(self) -> None:
        for room in self.hub.rooms.live():
            for stream in list(room.streams.values()):
                if stream.node and stream.node not in self.live and stream.node != self.node:
                    room.remove_stream(stream.id, "node_lost")
        for cid, pipe in list(self.pipes.items()):
            if pipe.host not in self.live:
                # The host died: the client reconnects, and its room is rebuilt on a live node.
                pipe.out.put_nowait(("close", Close.MOVED, "the session moves to another node"))
                self.pipes.pop(cid, None)
        for rs in list(self.relayed.values()):
            if rs.edge not in self.live:
                rs.gone()

    # -- the bus -----------------------------------------------------------------------------

    def send(self, node: str, message: Message) -> None:
        """Queue a message for another node; messages leave in the order they were queued."""
        self.bus.send(node, message)

    def _dispatch(self, msg: Message) -> None:
        self._handlers[type(msg)](msg)

    def _on_open(self, msg: Open) -> None:
        self._open_relayed(msg.cid, msg.edge, msg.text, msg.turn)

    def _on_up(self, msg: Up) -> None:
        rs = self.relayed.get(msg.cid)
        if rs is not None:
            frame = {"bytes": b""} if msg.binary else {"text": msg.text}
            rs.inbox.put_nowait({"type": "websocket.receive", **frame})

    def _on_gone(self, msg: Gone) -> None:
        rs = self.relayed.get(msg.cid)
        if rs is not None:
            rs.gone()

    def _on_reply(self, msg: Reply) -> None:
        fut = self._calls.get(msg.id)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def _on_down(self, msg: Down) -> None:
        for cid in msg.cids:  # one event for every client of this node that gets it
            pipe = self.pipes.get(cid)
            if pipe is not None:
                pipe.out.put_nowait(("text", msg.text, None))

    def _on_close(self, msg: CloseClient) -> None:
        pipe = self.pipes.get(msg.cid)
        if pipe is not None:
            pipe.out.put_nowait(("close", msg.code, msg.reason))

    def _dropped(self, node: str, msg: Message) -> None:
        """A message no node took: tell whoever it was for or from, so nothing is lost quietly.

        A client whose frames did not reach its room's host is made to reconnect (its channel
        resumes exactly); a client of another node whose events did not reach it is taken for
        dropped on the host (it reconnects too, when its pings go unanswered); a request's
        caller hears at once that the node is unreachable.
        """
        if isinstance(msg, Open | Up | Gone):
            pipe = self.pipes.get(msg.cid)
            if pipe is not None:
                pipe.out.put_nowait(("close", Close.MOVED, "the room's node is unreachable"))
        elif isinstance(msg, Down | CloseClient):
            for cid in msg.cids if isinstance(msg, Down) else [msg.cid]:
                rs = self.relayed.get(cid)
                if rs is not None:
                    rs.gone()
        elif isinstance(msg, Call) and msg.id is not None:
            fut = self._calls.get(msg.id)
            if fut is not None and not fut.done():
                fut.set_result(
                    Reply(id=msg.id, error=["node_unreachable", f"{node} is unreachable"])
                )

    # -- media on other nodes ----------------------------------------------------------------

    async def call(self, node: str, method: str, **args: Any) -> Any:
        """Ask a node's media to do something and return its result."""
        if node == self.node:
            return await self._serve(method, args)
        call_id = secrets.token_hex(8)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = fut
        self.send(node, Call(id=call_id, caller=self.node, method=method, args=args))
        try:
            reply = await asyncio.wait_for(fut, CALL_TIMEOUT)
        except TimeoutError:
            raise MediaError(
                "node_unreachable", "the node serving this media did not answer"
            ) from None
        finally:
            self._calls.pop(call_id, None)
        if reply.error is not None:
            raise MediaError(*reply.error)
        return reply.result

    def tell(self, node: str, method: str, **args: Any) -> None:
        """Ask a node's media to do something, without waiting for it."""
        if node == self.node:
            self._spawn(self._serve(method, args))
        else:
            self.send(node, Call(caller=self.node, method=method, args=args))

    def media_at(self, node: str) -> RemoteMedia:
        """Return another node's media, driven over the bus."""
        return RemoteMedia(self, node)

    async def pull(self, node: str, stream_id: str, origin: str) -> None:
        """Make a stream published on `origin` available on `node`'s SFU (a cascade leg)."""
        if node != origin:
            await self.call(node, "pull", stream_id=stream_id, origin=origin)

    def closed(self, what: str, item_id: str, reason: str) -> None:
        """Pass the end of a stream or subscription served here to its room's host."""
        host = self.routes.pop(item_id, None)
        if host is not None:
            self.tell(host, "closed", what=what, id=item_id, reason=reason)

    async def _answer(self, msg: Call) -> None:
        try:
            result, error = await self._serve(msg.method, msg.args), None
        except MediaError as e:
            result, error = None, [e.code, e.message]
        except Exception:
            log.exception("media request %s failed", msg.method)
            result, error = None, ["internal", "the node serving this media failed"]
        if msg.id is not None:
            self.send(msg.caller, Reply(id=msg.id, result=result, error=error))

    async def _serve(self, method: str, a: dict[str, Any]) -> Any:
        sfu = self.hub.sfu
        if method == "publish":
            self.routes[a["stream_id"]] = a["host"]
            return list(
                await sfu.publish(
                    a["stream_id"],
                    a["participant_id"],
                    a["offer"],
                    a["feed_ids"],
                    bool(a.get("replace", False)),
                )
            )
        if method == "subscribe":
            self.routes[a["down_id"]] = a["host"]
            return list(
                await sfu.subscribe(a["down_id"], a["subscriber_id"], a["stream_id"], a["feeds"])
            )
        if method == "answer":
            return await sfu.answer(a["down_id"], a["subscriber_id"], a["sdp"])
        if method == "unpublish":
            self.routes.pop(a["stream_id"], None)
            return await sfu.unpublish(a["stream_id"], a["reason"])
        if method == "unsubscribe":
            self.routes.pop(a["down_id"], None)
            return await sfu.unsubscribe(a["down_id"], a["reason"])
        if method == "close_participant":
            return await sfu.close_participant(a["participant_id"], a["reason"])
        if method == "lost":
            return await sfu.lost(a["participant_id"])
        if method == "mute":
            return sfu.mute(a["participant_id"], a["kind"], a["muted"])
        if method == "pull":
            return await self._pull(a["stream_id"], a["origin"])
        if method == "offer_leg":
            down_id = sfu.new_id("d")
            offer, mids = await sfu.subscribe(down_id, CASCADE + a["to"], a["stream_id"])
            return [down_id, offer, mids]
        if method == "answer_leg":
            return await sfu.answer(a["down_id"], CASCADE + a["to"], a["sdp"])
        if method == "closed":
            return self.hub.media_closed(a["what"], a["id"], a["reason"])
        if method == "recording":
            room, session = a["room"], a["session"]
            folder = find_session(self.hub, room, session)
            base = f"/api/recordings/{room}/{session}"
            holder = Link(a["identity"], a["token_id"])
            return None if folder is None else with_links(self.hub, folder, base, holder)
        if method == "stats":
            return self.hub.sfu.stats()
        if method == "revoked":
            return self.hub.cut_revoked(a["token_id"])
        if method == "admin":
            return list(admin_op(self.hub, a["op"], a["room"], a["data"]))
        raise MediaError("unknown_request", f"no media request {method!r}")

    async def _pull(self, stream_id: str, origin: str) -> None:
        if stream_id in self.hub.sfu.ups:
            return
        pending = self._pulls.get(stream_id)
        if pending is None:
            # Subscribers arriving together share one leg.
            pending = asyncio.ensure_future(self._cascade(stream_id, origin))
            self._pulls[stream_id] = pending
            pending.add_done_callback(lambda _: self._pulls.pop(stream_id, None))
        await asyncio.shield(pending)

    async def _cascade(self, stream_id: str, origin: str) -> None:
        # The origin subscribes this node like any subscriber; this node takes the leg in like
        # a publisher's stream, under the same id, and fans it out to its own subscribers.
        down_id, offer, mids = await self.call(
            origin, "offer_leg", stream_id=stream_id, to=self.node
        )
        try:
            answer, _ = await self.hub.sfu.publish(
                stream_id, CASCADE + origin, offer, mids, resumable=False
            )
        except MediaError:
            self.tell(origin, "unsubscribe", down_id=down_id, reason="refused")
            raise
        await self.call(origin, "answer_leg", down_id=down_id, to=self.node, sdp=answer)

    # -- host side ---------------------------------------------------------------------------

    def _open_relayed(self, cid: str, edge: str, first: str, turn: list[str] | None) -> None:
        rs = RelayedSocket(self, cid, edge)
        self.relayed[cid] = rs
        frame = {"type": "websocket.receive", "text": first}
        conn = Connection(rs, self.hub, frame, edge, turn)

        async def serve() -> None:
            try:
                await conn.run()
            finally:
                self.relayed.pop(cid, None)

        self._spawn(serve())

    # -- edge side ---------------------------------------------------------------------------

    async def serve(self, ws: Socket) -> None:
        """Serve a client WebSocket here, or pipe it to the node hosting its room."""
        await ws.accept()
        try:
            first = await asyncio.wait_for(ws.receive(), self.hub.settings.handshake_timeout)
        except TimeoutError:
            first = {"type": "websocket.receive", "text": None, "bytes": b""}
        room = self._room_of(first.get("text"))
        # A stopping node serves the hello itself, to refuse it: the room is being handed over.
        host = self.node if room is None or self.hub.draining else await self.host_for(room)
        if host == self.node or first.get("type") != "websocket.receive":
            await Connection(ws, self.hub, first).run()
            return
        await self._pipe(ws, first["text"], host)

    async def _pipe(self, ws: Socket, first: str, host: str) -> None:
        cid = secrets.token_hex(8)
        pipe = Pipe(ws, host)
        self.pipes[cid] = pipe
        self.hub.metrics.connections.inc()
        # The client's media will be on this node: so will the TURN servers it is given.
        self.send(host, Open(cid=cid, edge=self.node, text=first, turn=self.hub.turn_urls()))
        try:
            await until_one_ends(self._pipe_up(cid, pipe), self._pipe_down(pipe))
        finally:
            if self.pipes.pop(cid, None) is not None:
                self.send(host, Gone(cid=cid))
            self.hub.metrics.connections.dec()

    async def _pipe_up(self, cid: str, pipe: Pipe) -> None:
        s = self.hub.settings
        limit = s.max_message
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

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)


class RemoteMedia:
    """The media of a client that reached another node, driven from its room's host."""

    def __init__(self, cluster: Cluster, node: str) -> None:
        self.cluster = cluster
        self.node = node

    async def publish(
        self,
        stream_id: str,
        participant_id: str,
        offer: str,
        feed_ids: dict[str, str],
        replace: bool = False,
    ) -> tuple[str, dict[str, str]]:
        """Accept a publisher's offer on its node."""
        answer, codecs = await self.cluster.call(
            self.node,
            "publish",
            stream_id=stream_id,
            participant_id=participant_id,
            offer=offer,
            feed_ids=feed_ids,
            replace=replace,
            host=self.cluster.node,
        )
        return str(answer), dict(codecs)

    async def unpublish(self, stream_id: str, reason: str) -> None:
        """Close a stream on its node."""
        self.cluster.tell(self.node, "unpublish", stream_id=stream_id, reason=reason)

    async def subscribe(
        self, down_id: str, subscriber_id: str, stream_id: str, feeds: list[str] | None = None
    ) -> tuple[str, dict[str, str]]:
        """Offer a stream to a subscriber from the subscriber's node."""
        offer, mids = await self.cluster.call(
            self.node,
            "subscribe",
            down_id=down_id,
            subscriber_id=subscriber_id,
            stream_id=stream_id,
            feeds=feeds,
            host=self.cluster.node,
        )
        return str(offer), dict(mids)

    async def answer(self, down_id: str, subscriber_id: str, sdp: str) -> None:
        """Pass a subscriber's answer to its node."""
        await self.cluster.call(
            self.node, "answer", down_id=down_id, subscriber_id=subscriber_id, sdp=sdp
        )

    async def unsubscribe(self, down_id: str, reason: str) -> None:
        """Close a subscription on its node."""
        self.cluster.tell(self.node, "unsubscribe", down_id=down_id, reason=reason)

    async def close_participant(self, participant_id: str, reason: str) -> None:
        """Close a participant's media on its node."""
        self.cluster.tell(
            self.node, "close_participant", participant_id=participant_id, reason=reason
        )

    async def lost(self, participant_id: str) -> None:
        """Drop a participant's media paths on its node."""
        self.cluster.tell(self.node, "lost", participant_id=participant_id)

    def mute(self, participant_id: str, kind: str, muted: bool) -> None:
        """Mute a participant's tracks on its node."""
        self.cluster.tell(self.node, "mute", participant_id=participant_id, kind=kind, muted=muted)
