"""The publish and subscribe command-line tools, on the Python client."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
from aiortc import RTCPeerConnection
from aiortc.mediastreams import MediaStreamTrack
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    wait_exponential,
)

from teleconsult.media import stamp
from teleconsult.media.synthetic import UltrasoundTrack

from .file_source import file_tracks
from .media import MediaClient, Published, Subscription
from .signaling import FINAL_CLOSES, RequestFailed, SignalingClient


def open_source(source: str, size: tuple[int, int], fps: float) -> list[MediaStreamTrack]:
    """Return the tracks of a source: "synthetic", a video file, or a capture device path."""
    if source == "synthetic":
        return [UltrasoundTrack(size[0], size[1], fps)]
    if not source.startswith("/dev/video"):
        return file_tracks(source)
    from aiortc.contrib.media import MediaPlayer

    player = MediaPlayer(
        source,
        format="v4l2",
        options={"video_size": f"{size[0]}x{size[1]}", "framerate": str(fps)},
    )
    return [t for t in (player.video, player.audio) if t is not None]


# Reconnect attempts: at once, then every quarter second up to one, so that a station is back
# within a second or two of its network; each attempt bounded, as a silent path never answers.
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 0.5
# Under a silent path a TCP handshake waits for its SYN to be sent again (after 1 s): an
# attempt bounded at 1.5 s, half a second apart, puts a SYN on the wire at least every second.
CONNECT_TIMEOUT = 1.5


async def connect_again(
    new_client: Callable[[], SignalingClient], deadline: float | None
) -> SignalingClient | None:
    """Connect until it works (None once the deadline passes); a refusal raises JoinRefused."""

    def past_deadline() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    async def once() -> SignalingClient:
        client = new_client()
        try:
            await client.connect(timeout=CONNECT_TIMEOUT)
        except BaseException:
            await client.close()
            raise
        return client

    if past_deadline():
        return None
    retrying = AsyncRetrying(
        retry=retry_if_exception_type((OSError, ConnectionError, TimeoutError)),
        wait=wait_exponential(multiplier=BACKOFF_FIRST, max=BACKOFF_MAX),
        stop=lambda _: past_deadline(),
    )
    try:
        return await retrying(once)
    except RetryError:
        return None


def watch_connection(pc: RTCPeerConnection) -> asyncio.Event:
    """Return an event set when a peer connection's path is lost (failed or closed)."""
    lost = asyncio.Event()

    @pc.on("connectionstatechange")
    def _changed() -> None:
        if pc.connectionState in ("failed", "closed"):
            lost.set()

    return lost


class _Station:
    """A station's stream, kept published across every loss of its network."""

    def __init__(
        self,
        open_tracks: Callable[[], list[MediaStreamTrack]],
        video_source: str,
        label: str,
        codec: str | None,
        deadline: float | None,
        consented: bool = False,
    ) -> None:
        self.open_tracks = open_tracks
        self.video_source = video_source
        self.label = label
        self.codec = codec
        self.deadline = deadline
        self.consented = consented
        self.stream_id: str | None = None
        self.kept = False  # the server still knows our stream
        self.media: MediaClient | None = None

    def running(self) -> bool:
        """Tell whether the time to publish has not passed."""
        return self.deadline is None or time.monotonic() < self.deadline

    async def serve(self, client: SignalingClient) -> None:
        """Publish over one signaling connection until it, or the time, ends."""
        media = await self._adopt(client)
        try:
            while self.running():
                published = await self._published(media)
                if not await _until_lost(
                    client, published.pc, published.id, self.deadline, self.consented
                ):
                    break  # the signaling connection is gone: make it again
                if client.stale:
                    # The media path died and the server is late too: the network went.
                    # A new connection beats waiting out TCP's backoff on the old one.
                    client.give_up("silent")
                    break
        except (ConnectionError, RequestFailed, TimeoutError):
            pass  # lost while publishing: start again
        finally:
            await client.close()

    async def _adopt(self, client: SignalingClient) -> MediaClient:
        """Take a new signaling connection; media that still flows is kept across it."""
        if self.media is None:
            self.media = MediaClient(client)
        media = self.media
        moved = media.signaling.gave_up == "address"
        media.signaling = client
        described = {s["id"]: s for s in client.welcome.get("streams", [])}
        self.kept = self.stream_id in described
        lost = self.kept and described[self.stream_id or ""].get("state") == "reconnecting"
        if self.stream_id in media.published and (moved or lost):
            # The media must go again: this machine's address changed (a handover, and the
            # media path left from it too), or the server lost it while we were away.
            await media.published[self.stream_id or ""].pc.close()
        return media

    async def _published(self, media: MediaClient) -> Published:
        """Return our live publication, publishing (again, under the same id) if need be."""
        published = media.published.get(self.stream_id or "")
        dead = published is None or published.pc.connectionState in ("failed", "closed")
        if published is not None and self.kept and not dead:
            return published
        feeds = [
            (t, self.video_source if t.kind == "video" else "microphone", self.label)
            for t in self.open_tracks()
        ]
        replace = self.stream_id if self.kept else None
        if published is not None and not self.kept:
            media.published.pop(published.id, None)
            await published.pc.close()
        published = await media.publish(feeds, video_codec=self.codec, replace=replace)
        self.stream_id, self.kept = published.id, True
        print(json.dumps({"published": published.id, "feeds": published.feeds}), flush=True)
        return published


async def publish(
    new_client: Callable[[], SignalingClient],
    open_tracks: Callable[[], list[MediaStreamTrack]],
    video_source: str,
    label: str,
    codec: str | None,
    duration: float | None,
    consented: bool = False,
) -> None:
    """Publish until the duration passes, healing every loss of the way by itself.

    A station at a clinic must not need a person when the network blinks, changes address or
    goes silent for a while, or when the server's node is lost: a dead signaling connection
    (noticed within the server's ping timeout, or at once when this machine's address goes)
    is made again; media whose path was lost is published again under the same stream id,
    so viewers keep their subscription and see a pause. Only a final close (FINAL_CLOSES)
    ends it; a refusal raises JoinRefused. With `consented`, the person who started it said the
    patient consented to recording, and a moderator's request to record is answered yes.
    """
    deadline = None if duration is None else time.monotonic() + duration
    station = _Station(open_tracks, video_source, label, codec, deadline, consented)
    try:
        while station.running():
            client = await connect_again(new_client, deadline)
            if client is None:
                return
            await station.serve(client)
            if client.close_code in FINAL_CLOSES:
                return
    finally:
        if station.media is not None:
            await station.media.close()


async def _until_lost(
    client: SignalingClient,
    pc: RTCPeerConnection,
    stream_id: str,
    deadline: float | None,
    consented: bool = False,
) -> bool:
    """Wait until the media path is lost (True), or the signaling one or the time (False).

    The server saying it lost the stream's media counts as lost: this side may not have
    noticed yet. Events are read as they come, so none pile up over hours; a request for
    the patient's consent is answered as the station was told at its start.
    """
    lost = watch_connection(pc)
    while not lost.is_set():
        if deadline is not None and time.monotonic() >= deadline:
            return False
        try:
            event = await client.recv(timeout=0.25)
        except TimeoutError:
            continue
        except ConnectionError:
            return False
        if event.get("type") == "consent_requested":
            await client.send({"type": "consent", "confirmed": consented})
        if (
            event.get("type") == "stream_state"
            and event.get("stream_id") == stream_id
            and event.get("state") == "reconnecting"
        ):
            return True
    return not client.closed


@dataclass
class FeedStats:
    """What a subscriber measured on one video feed."""

    frames: int = 0
    # The latest 10,000 (a tool may run for hours).
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    first_frame_after: float | None = None
    last_at: float | None = None  # wall time of the latest frame
    pauses: int = 0

    def summary(self) -> dict[str, Any]:
        """Return counts and latency percentiles in milliseconds."""
        lat = sorted(self.latencies)
        out: dict[str, Any] = {"frames": self.frames, "pauses": self.pauses}
        if lat:
            out["latency_ms_p50"] = round(statistics.median(lat), 1)
            out["latency_ms_p95"] = round(lat[int(0.95 * (len(lat) - 1))], 1)
        if self.first_frame_after is not None:
            out["first_frame_ms"] = round(self.first_frame_after * 1000, 1)
        return out


# A picture that stops for longer than this and comes back is reported as a pause.
PAUSE = 0.5


async def _consume(feed_id: str, track: MediaStreamTrack, stats: FeedStats, started: float) -> None:
    while True:
        try:
            frame = await track.recv()
        except Exception:
            return
        now = time.time()
        now_ms = now * 1000
        stats.frames += 1
        if stats.first_frame_after is None:
            stats.first_frame_after = time.monotonic() - started
        read = None
        if isinstance(frame, av.VideoFrame):
            read = stamp.read(frame.to_ndarray(format="gray"))
            if read is not None and abs(now_ms - read[0]) < 60_000:
                stats.latencies.append(now_ms - read[0])
        if stats.last_at is not None and now - stats.last_at > PAUSE:
            # The picture came back: say when, after how long, and when this frame was taken.
            stats.pauses += 1
            event = {"feed": feed_id, "paused_s": round(now - stats.last_at, 3), "at": now}
            if read is not None:
                event["captured_ms"] = read[0]
            print(json.dumps({"resumed": event}), flush=True)
        stats.last_at = now


class _Viewer:
    """Every stream of a room, received across every loss of the network."""

    def __init__(self, deadline: float | None, show: bool) -> None:
        self.deadline = deadline
        self.show = show
        self.feeds: dict[str, FeedStats] = {}
        self.media: MediaClient | None = None
        # What is received, by stream id: the subscription and a task per feed.
        self.receiving: dict[str, tuple[Subscription, list[asyncio.Task[None]]]] = {}
        self.last_print = time.monotonic()

    def running(self) -> bool:
        """Tell whether the time to receive has not passed."""
        return self.deadline is None or time.monotonic() < self.deadline

    async def serve(self, client: SignalingClient) -> None:
        """Receive over one signaling connection until it, or the time, ends."""
        if self.media is None:
            self.media = MediaClient(client)
        if self.media.signaling.gave_up is not None:
            # This machine's address changed, or the network went silent: the media paths
            # left from it too, or lost frames no NACK brings back. A new subscription
            # starts at a keyframe at once; an old one waits for its decoder to ask.
            for sub, _ in self.receiving.values():
                await sub.pc.close()
        self.media.signaling = client
        try:
            await self._catch_up(client)
            while self.running():
                try:
                    event = await client.recv(timeout=0.5)
                except TimeoutError:
                    event = None
                if event is not None:
                    await self._on_event(event)
                await self._check_paths(client)
                if self.show and time.monotonic() - self.last_print >= 1.0:
                    self.last_print = time.monotonic()
                    print(json.dumps(self.summary()), flush=True)
        except (ConnectionError, RequestFailed):
            pass  # the signaling connection is gone: make it again
        finally:
            await client.close()

    def summary(self) -> dict[str, Any]:
        """Return each feed's statistics."""
        return {k: v.summary() for k, v in self.feeds.items()}

    async def close(self) -> None:
        """Stop receiving everything."""
        for stream_id in list(self.receiving):
            await self._drop(stream_id)
        if self.media is not None:
            await self.media.close()

    async def _catch_up(self, client: SignalingClient) -> None:
        """Receive what the room publishes now, as the welcome says, and nothing else."""
        live = {s["id"] for s in client.welcome.get("streams", [])}
        held_there = set(client.welcome.get("subscriptions", []))
        for stream_id in list(self.receiving):
            if stream_id not in live:
                await self._drop(stream_id)
        for stream_id in live:
            held = self.receiving.get(stream_id)
            if (
                held is None
                or held[0].id not in held_there  # the server ended it meanwhile
                or held[0].pc.connectionState in ("failed", "closed")
            ):
                await self._retake(stream_id)

    async def _on_event(self, event: dict[str, Any]) -> None:
        if event["type"] == "stream_added":
            await self._take(event["stream"]["id"])
        elif event["type"] == "stream_removed":
            await self._drop(event["stream_id"])
        elif event["type"] == "unsubscribed" and event["reason"] != "unpublished":
            # The server ended a subscription (its path failed): take it again.
            for stream_id, (sub, _) in list(self.receiving.items()):
                if sub.id == event["stream"]:
                    await self._retake(stream_id)

    async def _check_paths(self, client: SignalingClient) -> None:
        for stream_id, (sub, _) in list(self.receiving.items()):
            # Our own path to the server was lost: receive it again, over a new signaling
            # connection if the server is late too (the network went).
            if sub.pc.connectionState in ("failed", "closed"):
                if client.stale:
                    client.give_up("silent")
                    raise ConnectionError("the network went")
                await self._retake(stream_id)

    async def _take(self, stream_id: str) -> None:
        assert self.media is not None
        started = time.monotonic()
        try:
            sub = await self.media.subscribe(stream_id)
        except RequestFailed:
            return  # gone before we asked (published and withdrawn at once)
        tasks = []
        for feed_id, track in sub.tracks.items():
            stats = self.feeds.setdefault(feed_id, FeedStats())
            tasks.append(asyncio.create_task(_consume(feed_id, track, stats, started)))
        self.receiving[stream_id] = (sub, tasks)

    async def _drop(self, stream_id: str) -> None:
        assert self.media is not None
        held = self.receiving.pop(stream_id, None)
        if held is not None:
            sub, tasks = held
            for t in tasks:
                t.cancel()
            self.media.subscriptions.pop(sub.id, None)
            await sub.pc.close()

    async def _retake(self, stream_id: str) -> None:
        await self._drop(stream_id)
        await self._take(stream_id)


async def subscribe(
    new_client: Callable[[], SignalingClient], duration: float | None, show: bool
) -> dict[str, Any]:
    """Receive every stream of the room (and those added later); return per-feed statistics.

    Like `publish`, it heals by itself: the signaling connection is made again after any close
    that is not final, a subscription whose media path was lost is made again, and a stream
    that is gone (`no_such_stream`) is simply not received.
    """
    deadline = None if duration is None else time.monotonic() + duration
    viewer = _Viewer(deadline, show)
    try:
        while viewer.running():
            client = await connect_again(new_client, deadline)
            if client is None:
                break
            await viewer.serve(client)
            if client.close_code in FINAL_CLOSES:
                break
    finally:
        await viewer.close()
    return viewer.summary()
