"""A node's media in worker processes: publishers placed on workers, rooms spanning them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .aioice_adapter import host_addresses
from .datagrams import INGRESS
from .demux import UFRAG_ALPHABET
from .histogram import Histogram
from .ipc import LEG, Args, Channel, MediaCall, frames
from .nodeport import NodePort, hand_pair
from .sfu import MediaError, Sfu, offered_media

log = logging.getLogger("teleconsult.media")

# A subscription goes to a worker already carrying its stream unless that worker carries this
# many more video copies than the least loaded one: then the stream is brought there as well.
# Below it a room stays on one worker: a leg costs each packet a receive more, which 16 viewers
# of 1080p (about a tenth of a core) do not repay.
SPAN = 16
# What an audio copy weighs against a video copy: about its share of the packets.
AUDIO = 0.125
# Seconds a worker has to answer a request, and a request for its stats.
CALL_TIMEOUT = 30.0
STATS_TIMEOUT = 2.0
# Seconds before a worker that stopped is started again.
RESTART_AFTER = 1.0
# A copy of a stream that nobody on its worker watches (or nobody records, in the server's own
# process) is closed after this many seconds, as an idle cascade leg between nodes is.
IDLE_LEG = 10.0


def default_count() -> int:
    """Return how many workers use every core this process may run on."""
    return len(os.sched_getaffinity(0))


class Worker:
    """One media worker process, driven over a socket pair."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, channel: Channel) -> None:
        self.name = name
        self.proc = proc
        self.channel = channel
        self.copies = 0.0  # subscriber tracks placed here, weighed (legs included)
        self.ups = 0  # streams published here, brought copies included

    @property
    def load(self) -> float:
        """How busy the worker is, for placement."""
        return self.copies + self.ups

    async def call(self, method: str, timeout: float = CALL_TIMEOUT, **args: Any) -> Any:
        """Ask the worker's SFU to act and return its result."""
        return await self.channel.call(method, args, timeout)

    def tell(self, method: str, **args: Any) -> None:
        """Ask the worker's SFU to act, without waiting."""
        self.channel.spawn_call(method, args, CALL_TIMEOUT)


class Here:
    """The SFU of the server's own process, where the recorder takes its streams from."""

    name = "main"

    def __init__(self, sfu: Sfu) -> None:
        self.sfu = sfu
        self.calls = MediaCall(sfu)
        self.copies = 0.0
        self.ups = 0

    async def call(self, method: str, **args: Any) -> Any:
        """Ask the SFU to act, the way a worker is asked."""
        return await self.calls.serve(method, args)

    def tell(self, method: str, **args: Any) -> None:
        """Ask the SFU to act, without waiting."""
        task = asyncio.ensure_future(self.call(method, **args))
        task.add_done_callback(_log_failure)


Place = Worker | Here


@dataclass
class Placed:
    """Where a stream is published, and where copies of it were brought."""

    origin: Worker
    participant_id: str
    weights: dict[str, float]  # feed -> what a copy of it weighs
    copies: dict[str, asyncio.Future[None]] = field(default_factory=dict)  # place -> leg ready

    def weight(self, feeds: list[str] | None) -> float:
        """Return what a subscription to some feeds (all when None) weighs."""
        return sum(w for f, w in self.weights.items() if feeds is None or f in feeds)


@dataclass
class Down:
    """Where a subscription is served."""

    worker: Worker
    stream_id: str
    weight: float
    subscriber_id: str


@dataclass
class Leg:
    """A subscription of one place to a stream of another, so that the stream spans both."""

    stream_id: str
    origin: Worker
    target: Place
    weight: float


class Workers:
    """The media of one node, forwarded by worker processes (the Media the rooms use)."""

    def __init__(
        self,
        count: int,
        here: Sfu,
        on_up_closed: Callable[[str, str], None],
        on_down_closed: Callable[[str, str], None],
        argv: list[str],
        media_port: int | None = None,
        media_tcp_port: int | None = None,
    ) -> None:
        self.count = count
        self.media_port = media_port
        self.media_tcp_port = media_tcp_port
        # The node's media ports, which every worker shares, held here.
        self.node_port: NodePort | None = None
        if media_port is not None or media_tcp_port is not None:
            if count > len(UFRAG_ALPHABET):
                raise ValueError(f"at most {len(UFRAG_ALPHABET)} media workers share a port")
            self.node_port = NodePort(media_port, media_tcp_port)
        self.here = Here(here)
        # The server's own SFU receives nothing but legs brought for the recorder: their ends
        # are this pool's business, not the rooms'.
        here.on_up_closed = self._here_closed
        here.on_down_closed = None
        here.on_speaking = None
        # Who speaks, as the worker carrying a microphone's stream tells (set by the plane).
        self.on_speaking: Callable[[str, str, bool], None] | None = None
        self.on_up_closed = on_up_closed
        self.on_down_closed = on_down_closed
        self.argv = argv  # the worker's own options (announce, logging)
        self.workers: list[Worker] = []
        self.streams: dict[str, Placed] = {}
        self.downs: dict[str, Down] = {}
        self.legs: dict[str, Leg] = {}
        self.forward_delay = Histogram()
        self.restarts = 0
        self._stats: dict[str, dict[str, Any]] = {}
        self._idle_since: dict[tuple[str, str], float] = {}
        self._closing = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker (a media port taken stops the start here, saying which)."""
        if self.node_port is not None:
            await self.node_port.open(host_addresses())
        self.workers = list(await asyncio.gather(*(self._spawn(i) for i in range(self.count))))
        log.info("media forwarded by %d worker processes (pids %s)", self.count, self.pids())
        self._background(self._close_idle_copies_forever())

    async def close(self) -> None:
        """Close every worker's peer connections, then stop the workers by their PIDs."""
        self._closing = True
        # The readers stay until the workers are stopped: they carry the replies to "close".
        await asyncio.gather(*(self._stop(w) for w in self.workers), return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        if self.node_port is not None:
            self.node_port.close()

    def pids(self) -> list[int]:
        """Return the workers' process ids."""
        return [w.proc.pid for w in self.workers]

    async def _spawn(self, index: int) -> Worker:
        ours, theirs = socket.socketpair()
        argv, fds = list(self.argv), [theirs.fileno()]
        if self.media_port is not None:
            argv += ["--media-port", str(self.media_port)]
        if self.media_tcp_port is not None:
            argv += ["--media-tcp-port", str(self.media_tcp_port)]
        hand = their_hand = None
        if self.node_port is not None:
            hand, their_hand = hand_pair()
            argv += ["--index", str(index), "--hand-fd", str(their_hand.fileno())]
            fds.append(their_hand.fileno())
            for address, sock in self.node_port.sockets.items():
                argv += ["--media-socket", f"{address}={sock.fileno()}"]
                fds.append(sock.fileno())
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "teleconsult.worker",
                "--fd",
                str(theirs.fileno()),
                *argv,
                pass_fds=fds,
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            theirs.close()
            if their_hand is not None:
                their_hand.close()
        if self.node_port is not None and hand is not None:
            self.node_port.attach(index, hand)
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        name = f"w{index}"
        worker = Worker(name, proc, Channel(reader, writer))
        self._background(self._read(worker))
        return worker

    async def _stop(self, worker: Worker) -> None:
        with contextlib.suppress(MediaError, OSError):
            await asyncio.wait_for(worker.call("close"), 5.0)
        worker.channel.close()
        with contextlib.suppress(ProcessLookupError):
            worker.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(worker.proc.wait(), 5.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                worker.proc.kill()
            await worker.proc.wait()

    async def _read(self, worker: Worker) -> None:
        async for event in frames(worker.channel):
            try:
                self._event(worker, event)
            except Exception:
                log.exception("an event of media worker %s was not handled", worker.name)
        if not self._closing:
            await self._lost(worker)

    async def _lost(self, worker: Worker) -> None:
        """A worker stopped: end what it carried, then start another in its place."""
        code = await worker.proc.wait()
        log.error("media worker %s (pid %d) stopped with %s", worker.name, worker.proc.pid, code)
        if self.node_port is not None:
            self.node_port.detach(self.workers.index(worker))
        for stream_id, placed in list(self.streams.items()):
            if placed.origin is worker:
                self._ended(stream_id)
                self.on_up_closed(stream_id, "node_lost")
            else:
                placed.copies.pop(worker.name, None)
        for down_id, down in list(self.downs.items()):
            if down.worker is worker:
                del self.downs[down_id]
                self.on_down_closed(down_id, "failed")
        for down_id, leg in list(self.legs.items()):
            if leg.target is worker:
                del self.legs[down_id]
                leg.origin.copies -= leg.weight
                leg.origin.tell("unsubscribe", down_id=down_id, reason="failed")
        await asyncio.sleep(RESTART_AFTER)
        if self._closing:
            return
        index = self.workers.index(worker)
        self.workers[index] = await self._spawn(index)
        self.restarts += 1

    def _background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- what workers report -----------------------------------------------------------------

    def _event(self, worker: Worker, event: Args) -> None:
        if "speaking" in event:
            if self.on_speaking is not None:
                self.on_speaking(str(event["speaking"]), str(event["feed"]), bool(event["on"]))
            return
        what, item, reason = event["closed"], event["id"], event["reason"]
        if what == "up":
            if event.get("leg"):
                worker.ups -= 1
                self._copy_gone(item, worker)
                return
            placed = self.streams.get(item)
            if placed is not None and reason not in ("interrupted", "resumed"):
                self._ended(item)
            self.on_up_closed(item, reason)
            return
        leg = self.legs.pop(item, None)
        if leg is not None:
            leg.origin.copies -= leg.weight
            self._copy_gone(leg.stream_id, leg.target)
            return
        down = self.downs.pop(item, None)
        if down is not None:
            down.worker.copies -= down.weight
        self.on_down_closed(item, reason)

    def _here_closed(self, stream_id: str, reason: str) -> None:
        self.here.ups -= 1
        self._copy_gone(stream_id, self.here)

    def _copy_gone(self, stream_id: str, place: Place) -> None:
        placed = self.streams.get(stream_id)
        if placed is not None:
            placed.copies.pop(place.name, None)

    def _ended(self, stream_id: str) -> None:
        """A stream ended at its origin: the copies brought elsewhere go too."""
        placed = self.streams.pop(stream_id, None)
        if placed is None:
            return
        placed.origin.ups -= 1
        for name in placed.copies:
            self._place(name).tell("unpublish", stream_id=stream_id, reason="unpublished")

    def _place(self, name: str) -> Place:
        if name == self.here.name:
            return self.here
        return next(w for w in self.workers if w.name == name)

    # -- the Media protocol ------------------------------------------------------------------

    async def publish(
        self,
        stream_id: str,
        participant_id: str,
        offer: str,
        feed_ids: dict[str, str],
        replace: bool = False,
    ) -> tuple[str, dict[str, str]]:
        """Accept a publisher's offer on the least loaded worker (a replacement on its own)."""
        if replace:
            placed = self.streams.get(stream_id)
            if placed is None:
                raise MediaError("no_such_stream", "you publish no stream with this id")
            got = await placed.origin.call(
                "publish",
                stream_id=stream_id,
                participant_id=participant_id,
                offer=offer,
                feed_ids=feed_ids,
                replace=True,
            )
            return str(got[0]), dict(got[1])
        if stream_id in self.streams:
            raise MediaError("stream_exists", "a stream with this id is published")
        worker = min(self.workers, key=lambda w: w.load)
        kinds = {m.mid: m.kind for m in offered_media(offer)}
        weights = {f: 1.0 if kinds.get(mid) == "video" else AUDIO for mid, f in feed_ids.items()}
        self.streams[stream_id] = Placed(worker, participant_id, weights)
        worker.ups += 1
        try:
            got = await worker.call(
                "publish",
                stream_id=stream_id,
                participant_id=participant_id,
                offer=offer,
                feed_ids=feed_ids,
            )
        except MediaError:
            if self.streams.get(stream_id) is not None:
                self.streams.pop(stream_id)
                worker.ups -= 1
            raise
        return str(got[0]), dict(got[1])

    async def unpublish(self, stream_id: str, reason: str) -> None:
        """Close a stream where it is published, and its copies on other workers."""
        placed = self.streams.get(stream_id)
        if placed is not None:
            placed.origin.tell("unpublish", stream_id=stream_id, reason=reason)

    async def subscribe(
        self,
        down_id: str,
        subscriber_id: str,
        stream_id: str,
        feeds: list[str] | None = None,
        voices: int | None = None,
    ) -> tuple[str, dict[str, str]]:
        """Offer a stream from a worker that carries it, bringing it to a less loaded worker
        first when those that carry it are busier than it by SPAN copies.

        A subscriber's later subscriptions go where its first is (the stream brought there),
        so that one worker sees every voice it hears and sends it only the loudest.
        """
        placed = self.streams.get(stream_id)
        if placed is None:
            raise MediaError("no_such_stream", "no such stream")
        carrying = [placed.origin] + [
            w for w in self.workers if w.name in placed.copies and w is not placed.origin
        ]
        worker = min(carrying, key=lambda w: w.load)
        idlest = min(self.workers, key=lambda w: w.load)
        if idlest.load + SPAN < worker.load:
            worker = idlest
        home = next(
            (d.worker for d in self.downs.values() if d.subscriber_id == subscriber_id), None
        )
        if home is not None and home in self.workers:
            worker = home
        # Counted at once, so that subscribers arriving together are spread as they choose.
        weight = placed.weight(feeds)
        worker.copies += weight
        try:
            if worker is not placed.origin:
                await self._bring(stream_id, placed, worker)  # or wait for the leg under way
            got = await worker.call(
                "subscribe",
                down_id=down_id,
                subscriber_id=subscriber_id,
                stream_id=stream_id,
                feeds=feeds,
                voices=voices,
            )
        except MediaError:
            worker.copies -= weight
            raise
        self.downs[down_id] = Down(worker, stream_id, weight, subscriber_id)
        return str(got[0]), dict(got[1])

    async def answer(self, down_id: str, subscriber_id: str, sdp: str) -> None:
        """Pass a subscriber's answer to the worker of its subscription."""
        await self._worker_of(down_id).call(
            "answer", down_id=down_id, subscriber_id=subscriber_id, sdp=sdp
        )

    async def unsubscribe(self, down_id: str, reason: str) -> None:
        """Close a subscription on its worker."""
        down = self.downs.get(down_id)
        if down is not None:
            down.worker.tell("unsubscribe", down_id=down_id, reason=reason)

    async def pause(
        self, down_id: str, subscriber_id: str, feeds: list[str] | None, paused: bool
    ) -> None:
        """Pause or resume feeds of a subscription on its worker."""
        await self._worker_of(down_id).call(
            "pause", down_id=down_id, subscriber_id=subscriber_id, feeds=feeds, paused=paused
        )

    async def close_participant(self, participant_id: str, reason: str) -> None:
        """Close what a participant publishes or receives, on every worker."""
        for w in self.workers:
            w.tell("close_participant", participant_id=participant_id, reason=reason)

    async def lost(self, participant_id: str) -> None:
        """Drop a participant's media paths on every worker."""
        for w in self.workers:
            w.tell("lost", participant_id=participant_id)

    def mute(self, participant_id: str, kind: str, muted: bool) -> None:
        """Mute a participant's tracks on every worker."""
        for w in self.workers:
            w.tell("mute", participant_id=participant_id, kind=kind, muted=muted)

    def _worker_of(self, down_id: str) -> Worker:
        down = self.downs.get(down_id)
        if down is None:
            raise MediaError("no_such_stream", "no such subscription")
        return down.worker

    # -- streams spanning workers ------------------------------------------------------------

    async def bring_here(self, stream_id: str) -> None:
        """Bring a stream into the server's own SFU, for the recorder."""
        placed = self.streams.get(stream_id)
        if placed is not None:
            await self._bring(stream_id, placed, self.here)

    async def _bring(self, stream_id: str, placed: Placed, target: Place) -> None:
        pending = placed.copies.get(target.name)
        if pending is None:
            # Subscribers arriving together share one leg.
            pending = asyncio.ensure_future(self._leg(stream_id, placed, target))
            placed.copies[target.name] = pending
            pending.add_done_callback(_log_failure)
        try:
            await asyncio.shield(pending)
        except MediaError:
            if placed.copies.get(target.name) is pending:
                del placed.copies[target.name]
            raise

    async def _leg(self, stream_id: str, placed: Placed, target: Place) -> None:
        # The origin subscribes the target like any subscriber; the target takes the leg in
        # like a publisher's stream, under the same id, and fans it out to its subscribers.
        down_id = Sfu.new_id("d")
        origin = placed.origin
        # Counted at once, as a subscription is.
        leg = Leg(stream_id, origin, target, placed.weight(None))
        origin.copies += leg.weight
        target.ups += 1
        try:
            offer, mids = await origin.call(
                "subscribe",
                down_id=down_id,
                subscriber_id=LEG + target.name,
                stream_id=stream_id,
                feeds=None,
                nearby=True,
            )
        except MediaError:
            origin.copies -= leg.weight
            target.ups -= 1
            raise
        self.legs[down_id] = leg
        try:
            answer, _ = await target.call(
                "publish",
                stream_id=stream_id,
                participant_id=LEG + origin.name,
                offer=offer,
                feed_ids=mids,
                resumable=False,
                nearby=True,
            )
        except MediaError:
            target.ups -= 1
            origin.tell("unsubscribe", down_id=down_id, reason="refused")
            raise
        await origin.call(
            "answer", down_id=down_id, subscriber_id=LEG + target.name, sdp=str(answer)
        )

    def close_idle_copies(self, now: float) -> None:
        """Close the copies of streams that nobody where they were brought has used for
        IDLE_LEG seconds: each costs its origin a copy."""
        watched = {(d.stream_id, d.worker.name) for d in self.downs.values()}
        recorded = {
            u.id for u in self.here.sfu.ups.values() if any(t.taps for t in u.tracks.values())
        }
        for stream_id, placed in self.streams.items():
            for name, ready in list(placed.copies.items()):
                used = (stream_id, name) in watched or (
                    name == self.here.name and stream_id in recorded
                )
                key = (stream_id, name)
                if used or not ready.done():
                    self._idle_since.pop(key, None)
                elif now - self._idle_since.setdefault(key, now) >= IDLE_LEG:
                    del self._idle_since[key]
                    del placed.copies[name]
                    self._place(name).tell("unpublish", stream_id=stream_id, reason="idle_leg")
        live = {(s, n) for s, p in self.streams.items() for n in p.copies}
        for key in set(self._idle_since) - live:
            del self._idle_since[key]

    async def _close_idle_copies_forever(self) -> None:
        while True:
            await asyncio.sleep(IDLE_LEG / 4)
            try:
                self.close_idle_copies(time.monotonic())
            except Exception:
                log.exception("idle copies of streams were not closed")

    # -- statistics --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Return every worker's counters as last read (`read_stats`)."""
        ups: list[dict[str, Any]] = []
        downs: list[dict[str, Any]] = []
        held, wait, worst = 0, 0.0, 0.0
        for name, s in sorted(self._stats.items()):
            # A leg is the pool's own business: each stream and subscriber is shown once.
            ups += [
                {**u, "worker": name} for u in s["up"] if not u["participant_id"].startswith(LEG)
            ]
            downs += [
                {**d, "worker": name} for d in s["down"] if not d["subscriber_id"].startswith(LEG)
            ]
            held += s["load"]["held"]
            wait = max(wait, s["load"]["queue_wait"] or 0.0)
            worst = max(worst, s["load"]["queue_wait_worst"] or 0.0)
        load = {"held": held, "queue_wait": wait, "queue_wait_worst": worst}
        # Dropped on the node's ports: by the server (nobody's, `nodeport`) and each worker.
        dropped = Counter(INGRESS.dropped)
        for s in self._stats.values():
            dropped.update(s.get("dropped", {}))
        return {
            "up": ups,
            "down": downs,
            "load": load,
            "workers": len(self.workers),
            "dropped": dict(dropped),
        }

    async def read_stats(self) -> None:
        """Read every worker's counters now."""
        got = await asyncio.gather(
            *(w.call("stats", STATS_TIMEOUT) for w in self.workers), return_exceptions=True
        )
        counts = [0] * len(self.forward_delay.counts)
        total, n = 0.0, 0
        for w, s in zip(self.workers, got, strict=True):
            if isinstance(s, dict):
                self._stats[w.name] = s
            delay = self._stats.get(w.name, {}).get("forward_delay")
            if delay is not None:
                counts = [a + b for a, b in zip(counts, delay["counts"], strict=True)]
                total += delay["total"]
                n += delay["n"]
        self.forward_delay.counts, self.forward_delay.total, self.forward_delay.n = counts, total, n


def _log_failure(task: asyncio.Future[Any]) -> None:
    if task.cancelled():
        return
    e = task.exception()
    if e is not None and not isinstance(e, MediaError):
        log.error("a media request failed: %r", e)
