"""One track's frames into one WebM/Matroska file, muxed by PyAV without re-encoding."""

from __future__ import annotations

import fractions
from pathlib import Path
from typing import Any

import av

from .frames import Frame
from .geometry import h264_size, vp8_size
from .templates import template

# Opus identification header (RFC 7845): version 1, 2 channels, 312 samples pre-skip, 48 kHz.
OPUS_HEAD = (
    b"OpusHead"
    + bytes([1, 2])
    + (312).to_bytes(2, "little")
    + (48000).to_bytes(4, "little")
    + bytes(3)
)
# Live mode writes clusters of unknown size, so a file cut short by a crash stays readable;
# one-second clusters, flushed as written, bound what a crash loses.
MUX_OPTIONS = {"live": "1", "cluster_time_limit": "1000", "flush_packets": "1"}
CONTAINER = {
    "VP8": ("webm", ".webm"),
    "OPUS": ("webm", ".webm"),
    "H264": ("matroska", ".mkv"),
}


def extension(codec: str) -> str:
    """Return the file extension a codec is recorded with."""
    return CONTAINER[codec.upper()][1]


class TrackFile:
    """Writes a track's encoded frames as they are; opens the file at the first keyframe."""

    def __init__(self, path: Path, codec: str, clock_rate: int) -> None:
        self.path = path
        self.codec = codec.upper()
        self.clock_rate = clock_rate
        self.container: av.container.OutputContainer | None = None
        self.stream: av.stream.Stream | None = None
        self.first_ts: int | None = None
        self.pts = 0
        self.last_ts = 0
        self.frames = 0
        self.width: int | None = None
        self.height: int | None = None

    def write(self, frame: Frame) -> None:
        """Append one frame (the file starts at a keyframe; earlier frames are skipped)."""
        if self.container is None:
            if not frame.keyframe:
                return
            self._open(frame)
        assert self.stream is not None and self.container is not None
        if self.first_ts is None:
            self.first_ts = frame.timestamp
        else:
            step = (frame.timestamp - self.last_ts) % (1 << 32)
            if step >= 1 << 31 or step > 10 * self.clock_rate:
                # The source restarted its clock: keep the file's time going, one frame on.
                step = self.clock_rate // 30
            self.pts += step
        self.last_ts = frame.timestamp
        packet = av.Packet(frame.data)
        packet.pts = packet.dts = self.pts
        packet.time_base = fractions.Fraction(1, self.clock_rate)
        packet.stream = self.stream
        packet.is_keyframe = frame.keyframe
        self.container.mux(packet)
        self.frames += 1

    def _open(self, frame: Frame) -> None:
        fmt, _ = CONTAINER[self.codec]
        if self.codec != "OPUS":
            size = vp8_size(frame.data) if self.codec == "VP8" else h264_size(frame.data)
            self.width, self.height = size or (0, 0)
        # From a template, so that PyAV copies parameters instead of opening an encoder.
        source = template(self.codec, frame.data, self.width or 0, self.height or 0, OPUS_HEAD)
        self.container = av.open(str(self.path), "w", format=fmt, options=MUX_OPTIONS)
        stream: Any = self.container.add_stream_from_template(source)
        source.container.close()
        stream.time_base = fractions.Fraction(1, self.clock_rate)
        self.stream = stream

    @property
    def duration(self) -> float:
        """Return the seconds of media written."""
        return self.pts / self.clock_rate

    def close(self) -> None:
        """Finish the file (cues and sizes); a file never closed is still playable."""
        if self.container is not None:
            self.container.close()
            self.container = None
