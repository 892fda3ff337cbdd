"""Export a recorded session for teaching: the main feed with its annotations burned in."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, TextIO

import av
import cv2
import numpy as np

from teleconsult.session.roles import PATIENT_SOURCES

PATIENT = {s.value for s in PATIENT_SOURCES}
POINTER_HOLD = 1.0  # seconds a pointer stays on screen after its last move


@dataclass(frozen=True)
class Mask:
    """A rectangle (pixels of the main feed) blacked out, e.g. the patient details header."""

    x: int
    y: int
    w: int
    h: int

    @classmethod
    def parse(cls, text: str) -> Mask:
        """Parse "x,y,w,h"."""
        try:
            x, y, w, h = (int(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"a mask is x,y,w,h in pixels, not {text!r}") from None
        if w <= 0 or h <= 0 or x < 0 or y < 0:
            raise ValueError(f"a mask needs a positive size inside the picture: {text!r}")
        return cls(x, y, w, h)


def find_session(data_dir: Path, session: str) -> Path:
    """Return the folder of a recorded session by its id."""
    for manifest in (data_dir / "recordings").glob(f"*/{session}/manifest.json"):
        return manifest.parent
    raise ValueError(f"no recorded session {session!r} under {data_dir / 'recordings'}")


def main_track(manifest: dict[str, Any], feed: str | None) -> dict[str, Any]:
    """Pick the feed to export: the one asked for, else the first patient image, else any video."""
    videos = [t for t in manifest["tracks"] if t["kind"] == "video" and t["start"] is not None]
    if feed is not None:
        videos = [t for t in videos if t["feed"] == feed]
    if not videos:
        raise ValueError("the session has no such recorded video feed")
    return next((t for t in videos if t["source"] in PATIENT), videos[0])


class Annotations:
    """The annotations of one feed as they stood at any session time, from the channel log."""

    def __init__(self, log: list[dict[str, Any]], feed: str) -> None:
        self.log = log
        self.feed = feed
        self.next = 0
        self.shapes: dict[str, dict[str, Any]] = {}
        self.pointers: dict[str, tuple[float, dict[str, Any]]] = {}

    def at(self, t: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Advance to session time t (never backwards); return live shapes and pointers."""
        while self.next < len(self.log) and self.log[self.next]["t"] <= t:
            e = self.log[self.next]
            self.next += 1
            if e.get("type") == "pointer":
                self.pointers[e["author"]] = (e["t"], e)
                continue
            op = e.get("op")
            if op in ("arrow", "stroke", "ruler", "ellipse", "text") and e.get("feed") == self.feed:
                self.shapes[e["id"]] = e
            elif op in ("delete", "undo"):
                self.shapes.pop(e.get("target", ""), None)
            elif op == "clear":
                for i in e.get("removed", []):
                    self.shapes.pop(i, None)
        pointers = [
            p
            for when, p in self.pointers.values()
            if p.get("feed") == self.feed and p.get("points") and t - when <= POINTER_HOLD
        ]
        return sorted(self.shapes.values(), key=lambda s: s["seq"]), pointers


def _color(shape: dict[str, Any]) -> tuple[int, int, int]:
    hex_ = str((shape.get("style") or {}).get("color") or "#ffd400").lstrip("#")
    try:
        r, g, b = int(hex_[0:2], 16), int(hex_[2:4], 16), int(hex_[4:6], 16)
    except ValueError:
        r, g, b = 255, 212, 0
    return b, g, r


def draw(img: np.ndarray, shapes: list[dict[str, Any]], pointers: list[dict[str, Any]]) -> None:
    """Burn shapes and pointers into a BGR picture, in place."""
    h, w = img.shape[:2]

    def px(p: list[float]) -> tuple[int, int]:
        return round(p[0] * w), round(p[1] * h)

    for s in shapes:
        pts = [px(p) for p in s.get("points", [])]
        color = _color(s)
        thick = max(2, int((s.get("style") or {}).get("width") or 3))
        op = s["op"]
        if op == "arrow" and len(pts) == 2:
            cv2.arrowedLine(img, pts[0], pts[1], color, thick, cv2.LINE_AA, tipLength=0.08)
        elif op == "stroke" and len(pts) >= 2:
            cv2.polylines(img, [np.array(pts, np.int32)], False, color, thick, cv2.LINE_AA)
        elif op == "ruler" and len(pts) == 2:
            cv2.line(img, pts[0], pts[1], color, thick, cv2.LINE_AA)
            length = s.get("length") or {}
            unit = length.get("unit", "")
            label = f"{length.get('value', '')} {'' if unit == 'frame' else unit}"
            mid = ((pts[0][0] + pts[1][0]) // 2 + 6, (pts[0][1] + pts[1][1]) // 2 - 6)
            cv2.putText(
                img, label.strip(), mid, cv2.FONT_HERSHEY_SIMPLEX, 0.6, color, 2, cv2.LINE_AA
            )
        elif op == "ellipse" and len(pts) == 2:
            center = ((pts[0][0] + pts[1][0]) // 2, (pts[0][1] + pts[1][1]) // 2)
            axes = (abs(pts[1][0] - pts[0][0]) // 2, abs(pts[1][1] - pts[0][1]) // 2)
            cv2.ellipse(img, center, axes, 0, 0, 360, color, thick, cv2.LINE_AA)
        elif op == "text" and pts:
            cv2.putText(
                img,
                str(s.get("text", "")),
                pts[0],
                cv2.FONT_HERSHEY_SIMPLEX,
                0.7,
                color,
                2,
                cv2.LINE_AA,
            )
    for p in pointers:
        cv2.circle(img, px(p["points"][0]), 9, (48, 59, 255), -1, cv2.LINE_AA)
        cv2.circle(img, px(p["points"][0]), 9, (255, 255, 255), 2, cv2.LINE_AA)


def export(
    folder: Path,
    out: Path,
    masks: list[Mask],
    feed: str | None = None,
    progress: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Write an MP4 of the main feed with annotations burned in and masks applied."""
    manifest = json.loads((folder / "manifest.json").read_text())
    track = main_track(manifest, feed)
    notes = Annotations(_channel_log(folder, manifest), track["feed"])
    total = max(track["duration"], 1e-6)
    frames = 0
    with (
        av.open(str(folder / track["file"])) as source,
        av.open(str(out), "w", format="mp4", options={"movflags": "+faststart"}) as sink,
    ):
        stream: Any = sink.add_stream("libx264", rate=30)
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        voices = _voices(folder, manifest, track)
        mixer = Mixer(voices) if voices else None
        sound: Any = None
        if mixer is not None:
            sound = sink.add_stream("aac", rate=RATE)
            sound.layout = "stereo"
        sized = False
        for frame in _frames(source):
            if not sized:
                # libx264 wants even sizes.
                stream.width, stream.height = frame.width // 2 * 2, frame.height // 2 * 2
                sized = True
            at = track["start"] + float(frame.time or 0.0)
            out_frame = _burned(frame, notes.at(at), masks, stream.width, stream.height)
            for packet in stream.encode(out_frame):
                sink.mux(packet)
            if mixer is not None:
                for chunk in mixer.until(float(frame.time or 0.0)):
                    sink.mux(sound.encode(chunk))
            frames += 1
            if progress is not None:
                progress(min(1.0, float(frame.time or 0.0) / total))
        for packet in stream.encode(None):
            sink.mux(packet)
        if mixer is not None:
            sink.mux(sound.encode(None))
            mixer.close()
    if progress is not None:
        progress(1.0)
    return {
        "out": str(out),
        "feed": track["feed"],
        "frames": frames,
        "masks": len(masks),
        "voices": len(voices),
    }


def _channel_log(folder: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the recording's channel operations in time order (none if it has no log)."""
    path = folder / manifest.get("channel_log", "channel.jsonl")
    if not path.exists():
        return []
    log = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(log, key=lambda e: e["t"])


def _voices(folder: Path, manifest: dict[str, Any], track: dict[str, Any]) -> list[_Voice]:
    """Every voice (the operator's, the expert's talk-back), placed on the picture's timeline."""
    return [
        _Voice(folder / t["file"], t["start"] - track["start"])
        for t in manifest["tracks"]
        if t["kind"] == "audio" and t["start"] is not None
    ]


def _burned(
    frame: av.VideoFrame, shown: tuple[Any, ...], masks: list[Mask], width: int, height: int
) -> av.VideoFrame:
    """Return a picture with the annotations shown at its time drawn and the masks blacked."""
    img = frame.to_ndarray(format="bgr24")
    draw(img, *shown)
    for m in masks:
        img[m.y : m.y + m.h, m.x : m.x + m.w] = 0
    img = img[:height, :width]
    out = av.VideoFrame.from_ndarray(np.ascontiguousarray(img, dtype=np.uint8), format="bgr24")
    out.pts = round(float(frame.time or 0.0) * 30)
    out.time_base = Fraction(1, 30)
    return out


RATE = 48000
BLOCK = 1024


class _Voice:
    """One recorded audio track, decoded on demand onto the export's timeline."""

    def __init__(self, path: Path, offset: float) -> None:
        self.container = av.open(str(path))
        self.frames = self.container.decode(audio=0)
        self.resampler = av.AudioResampler(format="fltp", layout="stereo", rate=RATE)
        self.offset = offset  # seconds from the exported video's first frame
        self.buffer = np.zeros((2, 0), np.float32)
        self.start = 0  # timeline sample index of buffer[:, 0]
        self.done = False

    def add_into(self, block: np.ndarray, at: int) -> None:
        """Add this voice's samples for timeline samples [at, at + len(block))."""
        end = at + block.shape[1]
        while not self.done and self.start + self.buffer.shape[1] < end:
            try:
                frame = next(self.frames)
            except (StopIteration, av.FFmpegError):
                self.done = True
                break
            for out in self.resampler.resample(frame):
                data = out.to_ndarray().astype(np.float32)
                first = round((self.offset + float(out.time or 0.0)) * RATE)
                if self.buffer.shape[1] == 0:
                    self.start = first
                gap = first - (self.start + self.buffer.shape[1])
                if gap > 0:  # silence where the track had none (a drop, a mute)
                    data = np.concatenate([np.zeros((2, gap), np.float32), data], axis=1)
                self.buffer = np.concatenate([self.buffer, data], axis=1)
        lo, hi = max(at, self.start), min(end, self.start + self.buffer.shape[1])
        if hi > lo:
            block[:, lo - at : hi - at] += self.buffer[:, lo - self.start : hi - self.start]
        keep = max(0, end - self.start)
        self.buffer, self.start = self.buffer[:, keep:], self.start + keep

    def close(self) -> None:
        self.container.close()


class Mixer:
    """Every voice of the session mixed onto the exported video's timeline."""

    def __init__(self, voices: list[_Voice]) -> None:
        self.voices = voices
        self.position = 0

    def until(self, seconds: float) -> list[av.AudioFrame]:
        """Return mixed frames covering the timeline up to `seconds`."""
        frames = []
        while self.position + BLOCK <= seconds * RATE:
            block = np.zeros((2, BLOCK), np.float32)
            for voice in self.voices:
                voice.add_into(block, self.position)
            np.clip(block, -1.0, 1.0, out=block)
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="stereo")
            frame.sample_rate = RATE
            frame.pts = self.position
            frame.time_base = Fraction(1, RATE)
            frames.append(frame)
            self.position += BLOCK
        return frames

    def close(self) -> None:
        for voice in self.voices:
            voice.close()


def _frames(source: av.container.InputContainer) -> Iterator[av.VideoFrame]:
    last = -1.0
    for frame in source.decode(video=0):
        t = float(frame.time or 0.0)
        if t <= last:  # one frame per output tick; drop duplicates a restart may leave
            continue
        last = t
        yield frame


def bar(stream: TextIO = sys.stderr) -> Callable[[float], None]:
    """Return a progress callback drawing a bar on a terminal."""
    shown = [-1]

    def show(done: float) -> None:
        pct = int(done * 100)
        if pct != shown[0]:
            shown[0] = pct
            filled = pct * 30 // 100
            stream.write(f"\rexporting [{'#' * filled}{'.' * (30 - filled)}] {pct:3d}%")
            if pct >= 100:
                stream.write("\n")
            stream.flush()

    return show
