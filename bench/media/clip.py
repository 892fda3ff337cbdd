"""Pre-encoded clips, so a benchmark's publisher spends no CPU encoding while we measure."""

from __future__ import annotations

from pathlib import Path

from teleconsult.client import replay
from teleconsult.client.replay import opus_clip

CACHE = Path(__file__).resolve().parent.parent / "results" / "cache"

__all__ = ["opus_clip", "vp8_clip"]


def vp8_clip(
    width: int, height: int, fps: int, bitrate: int, seconds: int, gop: int
) -> list[bytes]:
    """Return VP8 frames of the synthetic ultrasound source, cached with the results."""
    return replay.vp8_clip(width, height, fps, bitrate, seconds, gop, CACHE)
