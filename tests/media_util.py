"""Media sources and sinks for tests: real aiortc tracks on loopback."""

from __future__ import annotations

import asyncio
import fractions
import math
import time

import av
import numpy as np
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack


class PatternTrack(VideoStreamTrack):
    """Video whose frames show a bright bar that moves one step a frame over a dark field."""

    def __init__(self, width: int = 320, height: int = 240) -> None:
        super().__init__()
        self.width, self.height = width, height
        self.count = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        img = np.full((self.height, self.width, 3), 16, dtype=np.uint8)
        x = (self.count * 8) % (self.width - 16)
        img[:, x : x + 16] = 235
        self.count += 1
        frame = av.VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class ToneTrack(AudioStreamTrack):
    """A 440 Hz tone, 20 ms frames of 48 kHz mono."""

    def __init__(self) -> None:
        super().__init__()
        self.sample = 0
        self.start: float | None = None

    async def recv(self) -> av.AudioFrame:
        n = 960
        if self.start is None:
            self.start = time.monotonic()
        else:
            await asyncio.sleep(max(0.0, self.start + self.sample / 48000 - time.monotonic()))
        t = (np.arange(n) + self.sample) / 48000
        tone = (0.3 * 32767 * np.sin(2 * math.pi * 440 * t)).astype(np.int16)
        out = av.AudioFrame.from_ndarray(tone.reshape(1, -1), format="s16", layout="mono")
        out.sample_rate = 48000
        out.pts, out.time_base = self.sample, fractions.Fraction(1, 48000)
        self.sample += n
        return out


async def receive(track: MediaStreamTrack, count: int, timeout: float = 10.0) -> list[av.Frame]:
    """Decode `count` frames from a received track, or fail after `timeout` seconds."""
    frames: list[av.Frame] = []
    deadline = time.monotonic() + timeout
    while len(frames) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"decoded {len(frames)} of {count} frames in {timeout} s")
        frames.append(await asyncio.wait_for(track.recv(), left))
    return frames


def bar_position(frame: av.VideoFrame) -> int:
    """Return the x of the bright bar a PatternTrack frame shows (from the decoded picture)."""
    gray = frame.to_ndarray(format="gray")
    return int(np.argmax(gray.mean(axis=0) > 128))


def tone_level(frames: list[av.AudioFrame]) -> float:
    """Return the RMS of decoded audio (0 for silence)."""
    data = np.concatenate([f.to_ndarray().astype(np.float64).ravel() for f in frames])
    return float(np.sqrt(np.mean(data**2)))
