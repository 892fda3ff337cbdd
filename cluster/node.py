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
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from teleconsult.media.sfu import CASCADE, MediaError
from teleconsult.session.placement import Load, choose
from teleconsult.signaling.connection import Socket
from teleconsult.signaling.tasks import cancel_and_wait

from .bus import Bus, Call, CloseClient, Down, Gone, Message, Open, Reply, Up
from .pipes import Pipes
from .remote import MediaRequests, RemoteMedia

if TYPE_CHECKING:
    from teleconsult.signaling.hub import Hub

log = logging.getLogger("teleconsult.cluster")

# A node that does not answer a media request within this long is taken for unreachable.
CALL_TIMEOUT = 10.0
# A cascade leg with no subscriber (and no recorder) here for this long is closed.
IDLE_LEG = 10.0


class Cluster:
    """Membership of one node: heartbeat, placement, and the bus between nodes."""

    def __init__(self, hub: Hub) -> None:
        import redis.asyncio as redis

        self.hub = hub
        self.node = hub.node
        self.ttl = hub.settings.node_ttl
        self.redis = redis.from_url(hub.settings.redis or "")
        self.prefix = "teleconsult"
        self.live: dict[str, Load] = {}
        self.urls: dict[str, str] = {}  # the public address of each live node
        self.bus = Bus(self.redis, self.node, self.live, self._dispatch, self._dropped)
        self.carried = Pipes(hub, self.send, self.host_for, self._spawn)
        self.requests = MediaRequests(hub, self)
        self._handlers: dict[type[Message], Callable[[Any], None]] = {
            Open: self.carried.on_open,
            Up: self.carried.on_up,
            Gone: self.carried.on_gone,
            Call: lambda msg: self._spawn(self._answer(msg)),
            Reply: self._on_reply,
            Down: self.carried.on_down,
            CloseClient: self.carried.on_close,
        }
        self._tasks: list[asyncio.Task[None]] = []
        self._beat: asyncio.Task[None] | None = None
        self._stopped = False
        self._spawned: set[asyncio.Task[Any]] = set()
        self._cpu = (time.monotonic(), time.process_time())
        self._calls: dict[str, asyncio.Future[Any]] = {}
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
            await cancel_and_wait([self._beat])
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
        self.carried.close_all()
        for _ in range(20):
            if self.bus.idle() and not self.carried.pipes:
                break
            await asyncio.sleep(0.05)
        await cancel_and_wait([*self._tasks, *self._spawned])
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
        self.carried.drop_dead(self.live)

    # -- the bus -----------------------------------------------------------------------------

    def send(self, node: str, message: Message) -> None:
        """Queue a message for another node; messages leave in the order they were queued."""
        self.bus.send(node, message)

    def _dispatch(self, msg: Message) -> None:
        self._handlers[type(msg)](msg)

    def _on_reply(self, msg: Reply) -> None:
        fut = self._calls.get(msg.id)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def _dropped(self, node: str, msg: Message) -> None:
        """A message no node took: tell whoever it was for or from, so nothing is lost quietly.

        Carried WebSockets hang up (their clients reconnect); a request's caller hears at once
        that the node is unreachable.
        """
        if isinstance(msg, Call):
            fut = self._calls.get(msg.id or "")
            if msg.id is not None and fut is not None and not fut.done():
                error = ["node_unreachable", f"{node} is unreachable"]
                fut.set_result(Reply(id=msg.id, error=error))
        else:
            self.carried.undelivered(msg)

    # -- media on other nodes ----------------------------------------------------------------

    async def call(self, node: str, method: str, **args: Any) -> Any:
        """Ask a node's media to do something and return its result."""
        if node == self.node:
            return await self.requests.serve(method, args)
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
            self._spawn(self.requests.serve(method, args))
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
        self.requests.closed(what, item_id, reason)

    def speaking(self, stream_id: str, feed_id: str, speaking: bool) -> None:
        """Pass a microphone served here starting or stopping speaking to its room's host."""
        self.requests.speaking(stream_id, feed_id, speaking)

    async def _answer(self, msg: Call) -> None:
        try:
            result, error = await self.requests.serve(msg.method, msg.args), None
        except MediaError as e:
            result, error = None, [e.code, e.message]
        except Exception:
            log.exception("media request %s failed", msg.method)
            result, error = None, ["internal", "the node serving this media failed"]
        if msg.id is not None:
            self.send(msg.caller, Reply(id=msg.id, result=result, error=error))

    # -- clients ---------------------------------------------------------------------------

    async def serve(self, ws: Socket) -> None:
        """Serve a client WebSocket here, or pipe it to the node hosting its room."""
        await self.carried.serve(ws)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)
