"""Pre-encoded media replayed at its rate: clients that load a server spend no CPU encoding."""

from __future__ import annotations

import asyncio
import fractions
import math
import pickle
import time
from pathlib import Path
from typing import Any, Protocol

import av
import numpy as np
from aiortc.mediastreams import MediaStreamTrack

from teleconsult.media.synthetic import UltrasoundTrack

KEY = 32  # bytes of a frame's data that identify it, sent and received


def vp8_clip(
    width: int, height: int, fps: int, bitrate: int, seconds: int, gop: int, cache: Path | None
) -> list[bytes]:
    """Return VP8 frames of the synthetic ultrasound source (the first a keyframe), encoded
    once into `cache` (a folder) when one is given."""
    path = (
        None
        if cache is None
        else cache / f"vp8-{width}x{height}-{fps}-{bitrate}-{seconds}-{gop}.pickle"
    )
    if path is not None and path.exists():
        frames: list[bytes] = pickle.loads(path.read_bytes())
        return frames
    source = UltrasoundTrack(width, height, fps)
    ctx = av.CodecContext.create("libvpx", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = fractions.Fraction(1, fps)
    ctx.framerate = fractions.Fraction(fps, 1)
    ctx.bit_rate = bitrate
    ctx.gop_size = gop
    ctx.options = {
        "deadline": "realtime",
        "cpu-used": "8",
        "lag-in-frames": "0",
        "error-resilient": "1",
        "rc_end_usage": "cbr",
        "kf_max_dist": str(gop),
    }
    frames = []
    base = int(time.time() * 1000)
    for n in range(fps * seconds):
        img = source.picture(n, base + n * 1000 // fps)
        frame = av.VideoFrame.from_ndarray(img, format="gray").reformat(format="yuv420p")
        frame.pts = n
        for packet in ctx.encode(frame):
            frames.append(bytes(packet))
    for packet in ctx.encode(None):
        frames.append(bytes(packet))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(frames))
    return frames


def opus_clip(seconds: int) -> list[bytes]:
    """Return 20 ms Opus packets of a 440 Hz tone."""
    ctx = av.CodecContext.create("libopus", "w")
    ctx.sample_rate = 48000
    ctx.layout = "stereo"
    ctx.format = "s16"
    ctx.bit_rate = 64000
    packets = []
    for n in range(seconds * 50):
        t = (np.arange(960) + n * 960) / 48000
        tone = (0.3 * 32767 * np.sin(2 * math.pi * 440 * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(
            np.repeat(tone, 2).reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = 48000
        frame.pts = n * 960
        packets += [bytes(p) for p in ctx.encode(frame)]
    return packets


class FrameLog(Protocol):
    """Where a replayed track notes each frame it sends: (identifying bytes, wall time)."""

    def append(self, item: tuple[str, float], /) -> None:
        """Note one frame."""


class ReplayTrack(MediaStreamTrack):
    """Sends pre-encoded frames at their rate; aiortc packetizes them without encoding.

    With a `log`, each frame's identifying bytes and wall send time are appended to it.
    """

    def __init__(
        self,
        kind: str,
        packets: list[bytes],
        rate: float,
        clock: int,
        log: FrameLog | None,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.packets = packets
        self.rate = rate
        self.clock = clock
        self.log = log
        self.n = 0
        self.start: float | None = None

    def again(self) -> ReplayTrack:
        """A new track of the same clip, from its first frame (a keyframe): for new media."""
        return ReplayTrack(self.kind, self.packets, self.rate, self.clock, self.log)

    async def recv(self) -> av.Packet[Any]:
        if self.start is None:
            self.start = time.monotonic()
        await asyncio.sleep(max(0.0, self.start + self.n / self.rate - time.monotonic()))
        data = self.packets[self.n % len(self.packets)]
        packet = av.Packet(data)
        packet.pts = int(self.n * self.clock / self.rate)
        packet.time_base = fractions.Fraction(1, self.clock)
        self.n += 1
        if self.log is not None:
            # A frame's first bytes open its first RTP packet, whatever the packetization.
            self.log.append((data[:KEY].hex(), time.time()))
        return packet
