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
# A 20 ms Opus packet of silence (CELT, stereo, no energy), to fill where the publisher sent
# nothing; at most an hour of it at once.
OPUS_SILENCE = bytes([0xFC, 0xFF, 0xFE])
OPUS_FRAME = 960
MAX_SILENCE = 3600 * 48000
# One-second clusters, flushed as written, bound what a crash loses (a file cut short stays
# readable up to its last whole cluster); closing writes the duration and the cues that let a
# player show the length and seek.
MUX_OPTIONS = {"cluster_time_limit": "1000", "flush_packets": "1"}
# The most picture size changes listed for a track (a browser changes size with its uplink).
MAX_SIZES = 200
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
        self.width: int | None = None  # the largest picture of the track
        self.height: int | None = None
        self.sizes: list[tuple[float, int, int]] = []  # (seconds into the file, width, height)
        self.last_arrival = 0.0

    def write(self, frame: Frame, arrival: float, restart: bool = False) -> None:
        """Append one frame that arrived at `arrival` (the file starts at a keyframe; earlier
        frames are skipped); `restart` says its timestamps are a new source's."""
        if self.container is None:
            if not frame.keyframe:
                return
            self._open(frame)
        assert self.stream is not None and self.container is not None
        if self.first_ts is None:
            self.first_ts = frame.timestamp
        else:
            step = (frame.timestamp - self.last_ts) % (1 << 32)
            if restart or step >= 1 << 31 or step > 10 * self.clock_rate:
                # Another source (a simulcast layer, a restarted encoder) or a clock jump: its
                # timestamps say nothing of the time between, the arrival does.
                step = round((arrival - self.last_arrival) * self.clock_rate)
            if self.codec == "OPUS" and step > 2 * OPUS_FRAME:
                # A muted or silent microphone sends nothing: a browser plays an audio file's
                # packets back to back, so the gap is filled or every voice ends too soon.
                self._silence(step)
            self.pts += max(1, step)  # never two frames at one time: players refuse that
        self.last_ts = frame.timestamp
        self.last_arrival = arrival
        if frame.keyframe and self.codec != "OPUS":
            self._note_size(frame)
        packet = av.Packet(frame.data)
        packet.pts = packet.dts = self.pts
        packet.time_base = fractions.Fraction(1, self.clock_rate)
        packet.stream = self.stream
        packet.is_keyframe = frame.keyframe
        self.container.mux(packet)
        self.frames += 1

    def _silence(self, step: int) -> None:
        """Write silent packets over the gap before the next frame."""
        assert self.container is not None and self.stream is not None
        filled = OPUS_FRAME
        while filled < step and filled <= MAX_SILENCE:
            packet = av.Packet(OPUS_SILENCE)
            packet.pts = packet.dts = self.pts + filled
            packet.time_base = fractions.Fraction(1, self.clock_rate)
            packet.stream = self.stream
            self.container.mux(packet)
            filled += OPUS_FRAME

    def _note_size(self, frame: Frame) -> None:
        size = vp8_size(frame.data) if self.codec == "VP8" else h264_size(frame.data)
        if size is None or (self.sizes and self.sizes[-1][1:] == size):
            return
        if len(self.sizes) < MAX_SIZES:
            self.sizes.append((round(self.duration, 3), *size))
        if size[0] * size[1] > (self.width or 0) * (self.height or 0):
            self.width, self.height = size

    def _open(self, frame: Frame) -> None:
        fmt, _ = CONTAINER[self.codec]
        width = height = 0
        if self.codec != "OPUS":
            size = vp8_size(frame.data) if self.codec == "VP8" else h264_size(frame.data)
            width, height = size or (0, 0)
        # From a template, so that PyAV copies parameters instead of opening an encoder.
        source = template(self.codec, frame.data, width, height, OPUS_HEAD)
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
