"""A video file as a camera: its frames, looped, at its own frame rate."""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Iterator
from pathlib import Path

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

CLOCK = 90000
# A file whose stream states no rate (a raw stream, some y4m) plays at this one.
DEFAULT_FPS = 30.0


class FileTrack(MediaStreamTrack):
    """Sends a file's video frames over and over, timestamps going on across each loop."""

    kind = "video"

    def __init__(self, path: str, fps: float | None = None) -> None:
        super().__init__()
        self.path = path
        try:
            with av.open(path) as container:
                if not container.streams.video:
                    raise ValueError(f"{path} has no video stream")
                stated = container.streams.video[0].average_rate
        except av.FFmpegError as e:
            raise ValueError(f"cannot read {path}: {' '.join(str(e).split())}") from None
        self.fps = fps or float(stated or DEFAULT_FPS)
        self._frames = self._decode()
        self._first = next(self._frames, None)  # a file none of whose frames decodes says so now
        if self._first is None:
            raise ValueError(f"no frame of {path} could be decoded")
        self._sent = 0
        self._start: float | None = None

    def _decode(self) -> Iterator[av.VideoFrame]:
        """Every frame of the file, from the start again after the last."""
        while True:
            decoded = 0
            with av.open(self.path) as container:
                for packet in container.demux(video=0):
                    try:
                        frames = packet.decode()
                    except av.FFmpegError:
                        continue  # a damaged frame: the next one decodes
                    for frame in frames:
                        decoded += 1
                        yield frame
            if not decoded:
                return

    async def recv(self) -> av.VideoFrame:
        """Return the next frame when its time comes."""
        if self.readyState != "live":
            raise MediaStreamError
        if self._first is not None:
            frame, self._first = self._first, None
        else:
            # Decoding takes milliseconds of CPU: off the loop that carries the media.
            got = await asyncio.to_thread(_next, self._frames)
            if got is None:
                raise MediaStreamError
            frame = got
        now = time.monotonic()
        if self._start is None:
            self._start = now
        due = self._start + self._sent / self.fps
        if due > now:
            await asyncio.sleep(due - now)
        frame.pts = round(self._sent * CLOCK / self.fps)
        frame.time_base = fractions.Fraction(1, CLOCK)
        self._sent += 1
        return frame


def _next(frames: Iterator[av.VideoFrame]) -> av.VideoFrame | None:
    return next(frames, None)


def file_tracks(path: str) -> list[MediaStreamTrack]:
    """Return the tracks of a video file (its picture), or say why it cannot be sent."""
    if not Path(path).is_file():
        raise ValueError(f"no such file: {path}")
    return [FileTrack(path)]
