"""Server-wide state of one node: rooms, secrets, audit trail, metrics and open connections."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any

from teleconsult.media.aioice_ports import open_media_ports, use_media_ports
from teleconsult.media.sfu import Sfu, gather_on
from teleconsult.media.workers import Workers, default_count
from teleconsult.session.channel import Channel
from teleconsult.session.participant import Event
from teleconsult.session.room import Room, RoomConfig
from teleconsult.session.rooms import Rooms
from teleconsult.session.store import MemoryStore, Store

from . import heap, ice, looplag
from .audit import AuditLog
from .config import Secrets, Settings, default_node_name, turn_secret
from .errors import Close, Code
from .journal import Journal
from .links import Attached, ClusterLink
from .metrics import Metrics
from .plane import MediaPlane
from .recordings import CLOSE_WAIT, Recordings
from .tasks import cancel_and_wait

log = logging.getLogger("teleconsult.hub")

# Seconds between returns of the C heap's free pages to the system (signaling/heap.py).
HEAP_TRIM_EVERY = 60.0


class Hub:
    """Holds what every connection and the HTTP API share."""

    def __init__(
        self,
        settings: Settings,
        keys: Secrets,
        clock: Callable[[], float] = time.time,
        store: Store | None = None,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.clock = clock
        self.rooms = Rooms(
            RoomConfig(
                max_participants=settings.max_participants, idle_timeout=settings.idle_timeout
            ),
            tombstone_ttl=settings.max_token_ttl,
            on_create=self._room_created,
        )
        self.store: Store = store if store is not None else MemoryStore(clock)
        self.node = settings.node or default_node_name(settings)
        # Every ordered channel operation and membership change, in order, to the store.
        self.journaled = Journal(self.store, self.node)
        self.stopping = False  # rooms are no longer this node's to write
        self.draining = False  # newcomers are refused
        self.audit = AuditLog(settings.data_dir / "audit.jsonl")
        self.metrics = Metrics()
        self.connections: set[Attached] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._encoded: dict[int, tuple[Event, str]] = {}
        self.recordings = Recordings(self)
        rewrite_to = gather_on(settings.announce)
        self.plane = MediaPlane(self.rooms, self.node, self.now)
        self.plane.sfu = Sfu(
            clock,
            rewrite_to,
            self.plane.up_closed,
            self.plane.down_closed,
            loudest=settings.loudest_voices,
        )
        self.plane.sfu.on_speaking = self.plane.speaking
        workers = settings.media_workers
        if workers is None:
            workers = default_count()
        if settings.redis:
            # A cluster node's cascades and heartbeat read its SFU directly: not yet workers.
            workers = 0
        self.turn_secret = turn_secret(settings, keys)
        self.turn = ice.builtin_turn(settings, self.turn_secret, clock)
        if self.turn is not None:
            self.metrics.watch_turn(self.turn)
        if workers:
            argv = ["--log-level", settings.log_level, "--log-format", settings.log_format]
            argv += ["--loudest", str(settings.loudest_voices)]
            if settings.announce:
                argv += ["--announce", settings.announce]
            self.plane.workers = Workers(
                workers,
                self.sfu,
                self.plane.up_closed,
                self.plane.down_closed,
                argv,
                media_port=settings.media_port,
                media_tcp_port=settings.media_tcp_port,
            )
            self.plane.workers.on_speaking = self.plane.speaking
            self.metrics.watch_media(self.plane.workers.stats, self.plane.workers.forward_delay)
        else:
            self.metrics.watch_media(self.sfu.stats, self.sfu.forward_delay)
        self.metrics.watch_processes(self._processes)
        # Shared by this process's connections when it forwards the media itself; with workers
        # each takes a port of its own, and this process makes only legs to them.
        if workers:
            use_media_ports(None, None)
        else:
            use_media_ports(settings.media_port, settings.media_tcp_port)
        self.cluster: ClusterLink | None = None  # joined by the app, when settings.redis is set

    def _processes(self) -> dict[str, int]:
        """This node's processes by name: the server, and its media workers."""
        workers = [] if self.plane.workers is None else self.plane.workers.workers
        return {"server": os.getpid(), **{w.name: w.proc.pid for w in workers}}

    @property
    def sfu(self) -> Sfu:
        """This node's SFU: one object, which the media plane routes to as well."""
        return self.plane.sfu

    @sfu.setter
    def sfu(self, sfu: Sfu) -> None:
        self.plane.sfu = sfu  # a benchmark swaps in another forwarding unit

    def join_cluster(self, cluster: ClusterLink) -> None:
        """Be a node of a cluster from now on (before `start`)."""
        self.cluster = cluster
        self.plane.cluster = cluster
        self.metrics.watch_cluster(cluster)

    def now(self) -> float:
        """Return the current time in seconds since the epoch."""
        return self.clock()

    @staticmethod
    def new_participant_id() -> str:
        """Return a fresh opaque participant id."""
        return "p-" + secrets.token_hex(6)

    def encode(self, event: Event) -> str:
        """Serialize an event once, however many connections send it."""
        key = id(event)
        hit = self._encoded.get(key)
        if hit is not None and hit[0] is event:
            return hit[1]
        text = json.dumps(event, separators=(",", ":"))
        # Keeping the event alive keeps its id from being reused while it is cached.
        self._encoded[key] = (event, text)
        if len(self._encoded) > 512:
            self._encoded.pop(next(iter(self._encoded)))
        return text

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a coroutine in the background, keeping a reference until it ends."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def refresh_gauges(self) -> None:
        """Bring the room and participant gauges up to date."""
        live = self.rooms.live()
        self.metrics.rooms.set(len(live))
        self.metrics.participants.set(sum(len(r.participants) for r in live))

    def end_room(self, room_id: str, reason: str, actor_id: str | None = None) -> Room:
        """End a room on purpose; the caller audits who did it."""
        live = self.rooms.get(room_id)
        gone = [(p.id, self.plane.of(p)) for p in live.participants.values()] if live else []
        recorded = self.recordings.drop(room_id)
        room = self.rooms.end(room_id, reason, self.now(), actor_id)
        self._forget(room_id, ended=True)
        if recorded:
            self.audit.record("record_stop", room=room_id, actor="server", code=reason)
        for pid, media in gone:
            self.spawn(media.close_participant(pid, reason))
        self.refresh_gauges()
        return room

    def relinquish(self, room_id: str) -> None:
        """Let another node have a room: its people reconnect and find it there."""
        room = self.rooms.drop(room_id)
        if room is None:
            return
        room.journal = None  # the other node's log is the room's history now
        self.journaled.drop(room_id)
        self.recordings.drop(room_id)
        for p in list(room.participants.values()):
            p.client.kick(Close.MOVED, "the session moved to another node")
            self.spawn(self.plane.of(p).close_participant(p.id, "moved"))
        self.audit.record("room_moved", room=room_id, actor="server")
        self.refresh_gauges()

    async def journal_written(self, timeout: float) -> None:
        """Wait until everything journaled so far is in the store (TimeoutError after)."""
        await self.journaled.written(timeout)

    def journal(self, room_id: str, what: str, payload: Any) -> None:
        """Queue a change for the store: "op", "state", "forget", "recording", "unrecord"."""
        self.journaled.put(room_id, what, payload)

    def _room_created(self, room: Room) -> None:
        room.journal = lambda event: self.journaled.op(room, event)

    def persist(self, room: Room) -> None:
        """Journal a room's membership state if it changed since it was last journaled."""
        if room.ended or self.stopping or self.rooms.get(room.id) is not room:
            return  # ended, or handed over to another node: not this node's to write
        self.journaled.state(room)

    async def revoke(
        self, grant_room: str, token_id: str, until: float, actor: str = "admin"
    ) -> int:
        """Refuse a token from now on, on every node, and cut this node's connections using it."""
        await self.store.revoke(token_id, until)
        self.audit.record("token_revoke", room=grant_room, actor=actor)
        if self.cluster is not None:
            for node in self.cluster.live:
                if node != self.node:
                    self.cluster.tell(node, "revoked", token_id=token_id)
        return self.cut_revoked(token_id)

    def cut_revoked(self, token_id: str) -> int:
        """Close the connections of this node that joined with a revoked token."""
        cut = 0
        for conn in list(self.connections):
            if conn.grant is not None and conn.grant.token_id == token_id:
                conn.error(Code.TOKEN_REVOKED, "this link was revoked")
                conn.kick(Close.UNAUTHORIZED, "token revoked")
                cut += 1
        return cut

    async def token_revoked(self, token_id: str) -> bool:
        """Tell whether a token was revoked (a store out of reach counts as not)."""
        try:
            return bool(token_id) and await self.store.is_revoked(token_id)
        except Exception:
            log.warning("cannot reach the store to check revocations")
            return False

    async def room_was_ended(self, room_id: str) -> bool:
        """Tell whether a room was ended on purpose, here or on any node of the cluster."""
        if self.rooms.was_ended(room_id):
            return True
        try:
            return self.cluster is not None and await self.store.was_ended(room_id)
        except Exception:
            return False

    async def restore(self, room_id: str) -> None:
        """Before a room opens on this node, bring it back from the store, if it is there."""
        if self.rooms.get(room_id) is not None or self.rooms.was_ended(room_id):
            return
        try:
            if await self.store.was_ended(room_id):
                # Ended on another node: refused here too.
                self.rooms.mark_ended(room_id, self.now())
                return
            events = await self.store.log(room_id)
            state = await self.store.load_state(room_id)
        except Exception:
            log.warning("cannot read a room from the store; starting it empty")
            return
        room = self.rooms.get(room_id)
        if room is not None or (not events and state is None):
            return  # opened meanwhile by another join, or nothing to restore
        room = self.rooms.open(room_id, self.now())
        room.channel = Channel.restore(events, room.channel.limits)
        if state is not None:
            if room.restore(state):
                self.recordings.resume(room)
            self.journaled.saved(room)  # what the store holds already

    def _forget(self, room_id: str, ended: bool = False) -> None:
        # Ended on purpose: refused everywhere for as long as a token for it may be valid.
        self.journal(room_id, "forget", self.settings.max_token_ttl if ended else None)

    def ice_servers(self, identity: str, urls: list[str] | None = None) -> list[dict[str, Any]]:
        """Return the ICE servers a participant gets on join, with fresh TURN credentials.

        `urls` are another node's TURN servers, for a client whose media is on that node.
        """
        urls = self.turn_urls() if urls is None else urls
        return ice.ice_servers(urls, self.turn_secret, identity, self.settings.turn_ttl, self.now())

    def turn_urls(self) -> list[str]:
        """Return the TURN servers of this node: external ones, or the built-in one."""
        return ice.turn_urls(self.settings, self.turn)

    def sweep(self) -> None:
        """Let go of those away too long, and of streams never resumed; end idle rooms."""
        now = self.now()
        for room in self.rooms.live():
            left, removed = room.expire(now, self.settings.reconnect_grace)
            for p in left:
                self.audit.record(
                    "leave",
                    room=room.id,
                    identity=p.identity,
                    role=p.role.value,
                    participant=p.id,
                    code=p.away_reason,
                )
                self.spawn(self.plane.of(p).close_participant(p.id, p.away_reason))
            for stream in removed:
                self.spawn(self.plane.of_stream(stream).unpublish(stream.id, "interrupted"))
            if left or removed:
                self.persist(room)
        for room in self.rooms.sweep(now):
            self.audit.record("room_end", room=room.id, code="idle", actor="server")
            self._forget(room.id)
            if self.recordings.drop(room.id):  # it stopped when the room ended
                self.audit.record("record_stop", room=room.id, actor="server", code="idle")
        self.refresh_gauges()

    async def start(self) -> None:
        """Start background work (and the built-in TURN server)."""
        self.loop = asyncio.get_running_loop()
        self.journaled.start()
        if self.plane.workers is not None:
            await self.plane.workers.start()
        else:
            await open_media_ports()  # a port in use stops the start here
        if self.turn is not None:
            await self.turn.start()
        if self.cluster is not None:
            await self.cluster.start()
        self._sweeper = asyncio.create_task(self._sweep_forever())
        self.spawn(looplag.watch(self.metrics.loop_lag.observe))

    async def drain(self) -> None:
        """Stop without losing anything: refuse newcomers, freeze, write, hand over, then close.

        Every operation a client saw acknowledged is in the store before its connection closes;
        on a single node running recordings are stopped and everyone is told; in a cluster they
        go on as the next segment on the node that takes the room.
        """
        if self.draining:
            return
        self.draining = True
        log.info("stopping: refusing new participants and handing rooms over")
        for conn in list(self.connections):
            conn.freeze()  # what it acknowledged is queued for the store; it takes no more
        for room in self.rooms.live():
            if self.cluster is None and room.recording.active:
                self.recordings.stop(room, None)  # `recording` stopped, to everyone
                self.audit.record(
                    "record_stop", room=room.id, actor="server", code="server_shutdown"
                )
            # The rooms as they are now are what the node taking them over (or this one,
            # restarted) must find; everyone leaving because the node stops is not history.
            self.persist(room)
            room.journal = None
        self.stopping = True
        self.recordings.drop_all()
        # Recordings are whole, and everyone told so, before any connection closes.
        await self.recordings.written(CLOSE_WAIT)
        # Everything queued reaches the store (5 s at most) before this node leaves the
        # cluster: the node that takes a room over must find it whole.
        with contextlib.suppress(TimeoutError):
            await self.journal_written(5.0)
        if self.cluster is not None:
            # The rooms are free for the other nodes before anyone is told to reconnect, so
            # that each client reconnects once, to the room on its new host.
            await self.cluster.hand_over()
        for conn in list(self.connections):
            conn.shutdown()  # a relayed client's close goes through the bus to its edge
        for _ in range(20):  # 2 s at most
            if not self.connections:
                break
            await asyncio.sleep(0.1)
        if self.cluster is not None:
            await self.cluster.stop()

    async def stop(self) -> None:
        """Drain if not yet done, then stop background work, media, TURN and the store."""
        await self.drain()
        if self._sweeper is not None:
            await cancel_and_wait([self._sweeper])
        await self.journaled.stop()
        await self.sfu.close()
        if self.plane.workers is not None:
            await self.plane.workers.close()
        if self.turn is not None:
            await self.turn.stop()
        await self.store.close()
        for task in list(self._tasks):
            task.cancel()
        self.audit.close()

    async def _sweep_forever(self) -> None:
        last_retention = last_trim = 0.0
        while True:
            await asyncio.sleep(self.settings.sweep_interval)
            self.sweep()
            if self.now() - last_trim >= HEAP_TRIM_EVERY:
                last_trim = self.now()
                heap.release()
            if self.now() - last_retention >= 3600:
                last_retention = self.now()
                await asyncio.to_thread(self.recordings.apply_retention, last_retention)
