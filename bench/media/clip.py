"""Pre-encoded clips, so a benchmark's publisher spends no CPU encoding while we measure."""

from __future__ import annotations

import fractions
import math
import pickle
import time
from pathlib import Path

import av
import numpy as np

from teleconsult.media.synthetic import UltrasoundTrack

CACHE = Path(__file__).resolve().parent.parent / "results" / "cache"


def vp8_clip(
    width: int, height: int, fps: int, bitrate: int, seconds: int, gop: int
) -> list[bytes]:
    """Return VP8 frames of the synthetic ultrasound source (the first a keyframe)."""
    path = CACHE / f"vp8-{width}x{height}-{fps}-{bitrate}-{seconds}-{gop}.pickle"
    if path.exists():
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
    CACHE.mkdir(parents=True, exist_ok=True)
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
