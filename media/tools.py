"""The publish and subscribe command-line tools, on the Python client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import av
from aiortc.mediastreams import MediaStreamTrack

from signaling.client import FINAL_CLOSES, JoinRefused, RequestFailed, SignalingClient

from . import stamp
from .client import MediaClient, Subscription
from .synthetic import UltrasoundTrack


def open_source(source: str, size: tuple[int, int], fps: float) -> list[MediaStreamTrack]:
    """Return the tracks of a source: "synthetic", a video file, or a capture device path."""
    if source == "synthetic":
        return [UltrasoundTrack(size[0], size[1], fps)]
    from aiortc.contrib.media import MediaPlayer

    if source.startswith("/dev/video"):
        player = MediaPlayer(
            source,
            format="v4l2",
            options={"video_size": f"{size[0]}x{size[1]}", "framerate": str(fps)},
        )
    else:
        player = MediaPlayer(source, loop=True)
    return [t for t in (player.video, player.audio) if t is not None]


async def publish(
    new_client: Callable[[], SignalingClient],
    open_tracks: Callable[[], list[MediaStreamTrack]],
    video_source: str,
    label: str,
    codec: str | None,
    duration: float | None,
) -> None:
    """Publish until the duration passes; after a drop, reconnect and publish again.

    A station at a clinic must not need a person to restart it when the network blinks or the
    server's node is lost: any close that is not final (FINAL_CLOSES) is followed by a new
    connection, with backoff, and the sources are opened again. A refusal raises JoinRefused.
    """
    deadline = None if duration is None else time.monotonic() + duration
    backoff = 0.5
    while deadline is None or time.monotonic() < deadline:
        client = new_client()
        try:
            await client.connect()
        except JoinRefused:
            raise
        except (OSError, ConnectionError, TimeoutError):
            await asyncio.sleep(backoff)
            backoff = min(5.0, backoff * 2)
            continue
        backoff = 0.5
        media = MediaClient(client)
        tracks: list[MediaStreamTrack] = []
        try:
            tracks = open_tracks()
            feeds = [
                (t, video_source if t.kind == "video" else "microphone", label) for t in tracks
            ]
            stream = await media.publish(feeds, video_codec=codec)
            print(json.dumps({"published": stream.id, "feeds": stream.feeds}), flush=True)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            with contextlib.suppress(TimeoutError, ConnectionError):
                await client.wait_closed(timeout=1e9 if left is None else left)
        except (ConnectionError, RequestFailed):
            pass  # lost while publishing: start again
        finally:
            await media.close()
            await client.close()
            for t in tracks:
                t.stop()  # a capture device is let go, and opened again on the next connection
        if client.close_code in FINAL_CLOSES:
            return


@dataclass
class FeedStats:
    """What a subscriber measured on one video feed."""

    frames: int = 0
    latencies: list[float] = field(default_factory=list)
    first_frame_after: float | None = None

    def summary(self) -> dict[str, Any]:
        """Return counts and latency percentiles in milliseconds."""
        lat = sorted(self.latencies)
        out: dict[str, Any] = {"frames": self.frames}
        if lat:
            out["latency_ms_p50"] = round(statistics.median(lat), 1)
            out["latency_ms_p95"] = round(lat[int(0.95 * (len(lat) - 1))], 1)
        if self.first_frame_after is not None:
            out["first_frame_ms"] = round(self.first_frame_after * 1000, 1)
        return out


async def _consume(track: MediaStreamTrack, stats: FeedStats, started: float) -> None:
    while True:
        try:
            frame = await track.recv()
        except Exception:
            return
        now_ms = time.time() * 1000
        stats.frames += 1
        if stats.first_frame_after is None:
            stats.first_frame_after = time.monotonic() - started
        if isinstance(frame, av.VideoFrame):
            read = stamp.read(frame.to_ndarray(format="gray"))
            if read is not None and abs(now_ms - read[0]) < 60_000:
                stats.latencies.append(now_ms - read[0])


async def subscribe(client: SignalingClient, duration: float | None, show: bool) -> dict[str, Any]:
    """Receive every stream of the room (and those added later); return per-feed statistics."""
    media = MediaClient(client)
    feeds: dict[str, FeedStats] = {}
    tasks: list[asyncio.Task[None]] = []

    async def take(stream_id: str) -> None:
        started = time.monotonic()
        sub: Subscription = await media.subscribe(stream_id)
        for feed_id, track in sub.tracks.items():
            feeds[feed_id] = FeedStats()
            tasks.append(asyncio.create_task(_consume(track, feeds[feed_id], started)))

    for s in client.welcome.get("streams", []):
        await take(s["id"])
    deadline = None if duration is None else time.monotonic() + duration
    last_print = time.monotonic()
    try:
        while deadline is None or time.monotonic() < deadline:
            try:
                event = await client.recv(timeout=0.5)
            except TimeoutError:
                event = None
            except ConnectionError:
                break
            if event is not None and event["type"] == "stream_added":
                await take(event["stream"]["id"])
            if show and time.monotonic() - last_print >= 1.0:
                last_print = time.monotonic()
                print(json.dumps({k: v.summary() for k, v in feeds.items()}), flush=True)
    finally:
        for t in tasks:
            t.cancel()
        await media.close()
    return {k: v.summary() for k, v in feeds.items()}
