"""Export a recorded session for teaching: the main feed with its annotations burned in."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, TextIO

import av
import cv2
import numpy as np
from tqdm import tqdm

from teleconsult.session.roles import PATIENT_SOURCES

PATIENT = {s.value for s in PATIENT_SOURCES}
POINTER_HOLD = 1.0  # seconds a pointer stays on screen after its last move
BAR_FORMAT = "{desc} {bar} {percentage:3.0f}% [{elapsed}<{remaining}]"


class ExportError(ValueError):
    """An export that cannot be made, said in one line."""


@dataclass(frozen=True)
class Mask:
    """A rectangle blacked out (the patient details header), in fractions of the picture, so
    that it covers the same part of it whatever size the browser sent at the time."""

    x: float
    y: float
    w: float
    h: float

    @classmethod
    def parse(cls, text: str, native: tuple[int, int] | None = None) -> Mask:
        """Parse "x,y,w,h": fractions of the picture (0.0-1.0, with a decimal point), or pixels
        of the source's native size (`native`, its largest picture), as whole numbers."""
        parts = text.split(",")
        try:
            if len(parts) != 4:
                raise ValueError
            if any("." in p for p in parts):
                x, y, w, h = (float(p) for p in parts)
            else:
                if native is None:
                    raise ExportError(f"a mask in pixels needs the picture's size: {text!r}")
                px, py, pw, ph = (int(p) for p in parts)
                x, y, w, h = px / native[0], py / native[1], pw / native[0], ph / native[1]
        except ExportError:
            raise
        except ValueError:
            raise ExportError(
                f"a mask is x,y,w,h as fractions (0,0,1,0.2) or pixels (0,0,640,100): {text!r}"
            ) from None
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x >= 1 or y >= 1:
            raise ExportError(f"a mask needs a positive size inside the picture: {text!r}")
        return cls(x, y, min(w, 1 - x), min(h, 1 - y))

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """Return the rectangle in pixels of a picture of this size, rounded outwards."""
        x0, y0 = math.floor(self.x * width), math.floor(self.y * height)
        x1 = math.ceil((self.x + self.w) * width)
        y1 = math.ceil((self.y + self.h) * height)
        return x0, y0, x1 - x0, y1 - y0


def find_session(data_dir: Path, session: str) -> Path:
    """Return the folder of a recorded session by its id."""
    for manifest in (data_dir / "recordings").glob(f"*/{session}/manifest.json"):
        return manifest.parent
    raise ExportError(f"no recorded session {session!r} under {data_dir / 'recordings'}")


def main_track(manifest: dict[str, Any], feed: str | None) -> dict[str, Any]:
    """Pick the feed to export: the one asked for, else the first patient image, else any video."""
    videos = [t for t in manifest["tracks"] if t["kind"] == "video" and t["start"] is not None]
    if feed is not None:
        videos = [t for t in videos if t["feed"] == feed]
    if not videos:
        raise ExportError("the session has no such recorded video feed")
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
            if e.get("type") == "snapshot":  # what the room showed when the recording began
                channel = e.get("channel") or {}
                self.shapes = {
                    a["id"]: a for a in channel.get("annotations", []) if a.get("feed") == self.feed
                }
                continue
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
    masks: list[str],
    feed: str | None = None,
    progress: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Write an MP4 of the main feed with annotations burned in and masks applied.

    It is written beside `out` and renamed at the end: a failed export leaves nothing there.
    """
    manifest, track = _open_manifest(folder, feed)
    size = _native_size(folder / track["file"], track)
    boxes = [Mask.parse(m, size) for m in masks]
    part = out.with_name(f".{out.name}.part")
    try:
        result = _export(folder, part, manifest, track, size, boxes, progress)
        os.replace(part, out)
    except (av.FFmpegError, OSError) as e:
        part.unlink(missing_ok=True)
        raise ExportError(f"export failed: {_one_line(e)}") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return {"out": str(out), **result}


def preview(
    folder: Path, out: Path, masks: list[str], at: float, feed: str | None = None
) -> dict[str, Any]:
    """Write one PNG of the export as it would look `at` seconds into the feed, the masks
    outlined: a check of the masks before a long export."""
    manifest, track = _open_manifest(folder, feed)
    size = _native_size(folder / track["file"], track)
    boxes = [Mask.parse(m, size) for m in masks]
    notes = Annotations(_channel_log(folder, manifest), track["feed"])
    shown = None
    try:
        with av.open(str(folder / track["file"])) as source:
            for frame in _frames(source):
                shown = frame
                if float(frame.time or 0.0) >= at:
                    break
    except av.FFmpegError as e:
        raise ExportError(f"preview failed: {_one_line(e)}") from None
    if shown is None:
        raise ExportError("the recorded feed has no picture to show")
    t = float(shown.time or 0.0)
    img = _burned(shown, notes.at(track["start"] + t), boxes, size)
    x0, y0, fw, fh = _fit(shown.width, shown.height, size)
    for box in boxes:  # on the picture, wherever it was fitted
        x, y, w, h = box.box(fw, fh)
        cv2.rectangle(img, (x0 + x, y0 + y), (x0 + x + w - 1, y0 + y + h - 1), (0, 0, 255), 2)
    if not cv2.imwrite(str(out), img):
        raise ExportError(f"could not write {out}")
    return {"out": str(out), "feed": track["feed"], "time": round(t, 3), "size": list(size)}


def _open_manifest(folder: Path, feed: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"the session's manifest cannot be read: {_one_line(e)}") from None
    return manifest, main_track(manifest, feed)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _native_size(path: Path, track: dict[str, Any]) -> tuple[int, int]:
    """The picture size of the export: the largest the source sent (the recording notes it;
    an older recording is read for it)."""
    if track.get("sizes") and track.get("width") and track.get("height"):
        return int(track["width"]), int(track["height"])
    best = (0, 0)
    try:
        with av.open(str(path)) as source:
            for frame in _frames(source):
                if frame.width * frame.height > best[0] * best[1]:
                    best = (frame.width, frame.height)
                if track.get("width") and frame.time and frame.time > 2.0:
                    break  # a recording that notes no changes: its first pictures say it
    except av.FFmpegError as e:
        raise ExportError(f"the recorded feed cannot be read: {_one_line(e)}") from None
    if best == (0, 0):
        raise ExportError("the recorded feed has no picture")
    return best[0] // 2 * 2, best[1] // 2 * 2  # libx264 wants even sizes


def _export(
    folder: Path,
    out: Path,
    manifest: dict[str, Any],
    track: dict[str, Any],
    size: tuple[int, int],
    masks: list[Mask],
    progress: Callable[[float], None] | None,
) -> dict[str, Any]:
    notes = Annotations(_channel_log(folder, manifest), track["feed"])
    total = max(float(track.get("duration") or 0.0), 1e-6)
    frames = 0
    last_pts = -1
    voices: list[_Voice] = []
    with (
        av.open(str(folder / track["file"])) as source,
        av.open(str(out), "w", format="mp4", options={"movflags": "+faststart"}) as sink,
    ):
        stream: Any = sink.add_stream("libx264", rate=30)
        stream.pix_fmt = "yuv420p"
        stream.width, stream.height = size
        # Milliseconds in the encoder too: at its default 1/30 s, frames of a browser's
        # variable rate fall on one tick and the muxer refuses them.
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"crf": "20", "preset": "veryfast"}
        voices = _voices(folder, manifest, track)
        mixer = Mixer(voices) if voices else None
        sound: Any = None
        if mixer is not None:
            sound = sink.add_stream("aac", rate=RATE)
            sound.layout = "stereo"
        try:
            for frame in _frames(source):
                t = float(frame.time or 0.0)
                # Milliseconds, each frame after the last: a browser sends frames 1 ms apart.
                pts = max(round(t * 1000), last_pts + 1)
                last_pts = pts
                img = _burned(frame, notes.at(track["start"] + t), masks, size)
                out_frame = av.VideoFrame.from_ndarray(img, format="bgr24")
                out_frame.pts, out_frame.time_base = pts, Fraction(1, 1000)
                for packet in stream.encode(out_frame):
                    sink.mux(packet)
                if mixer is not None:
                    for chunk in mixer.until(t):
                        sink.mux(sound.encode(chunk))
                frames += 1
                if progress is not None:
                    progress(min(0.99, t / total))
            if not frames:
                raise ExportError("the recorded feed has no picture")
            for packet in stream.encode(None):
                sink.mux(packet)
            if mixer is not None:
                sink.mux(sound.encode(None))
        finally:
            if mixer is not None:
                mixer.close()
    if progress is not None:
        progress(1.0)
    return {
        "feed": track["feed"],
        "frames": frames,
        "size": list(size),
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


def _fit(width: int, height: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where a picture of this size goes in the export's (x, y, w, h): scaled, shape kept."""
    scale = min(size[0] / width, size[1] / height)
    fw, fh = max(2, round(width * scale)), max(2, round(height * scale))
    return (size[0] - fw) // 2, (size[1] - fh) // 2, fw, fh


def _burned(
    frame: av.VideoFrame, shown: tuple[Any, ...], masks: list[Mask], size: tuple[int, int]
) -> np.ndarray:
    """Return the picture at the export's size (fitted, its shape kept) with the annotations
    shown at its time drawn and the masks blacked, as BGR."""
    picture: np.ndarray = frame.to_ndarray(format="bgr24")
    x0, y0, fw, fh = _fit(frame.width, frame.height, size)
    if (fw, fh) == (frame.width, frame.height) and (x0, y0) == (0, 0):
        img = picture
    else:
        # A smaller picture (the browser lowered its size) scaled up into the same place.
        img = np.zeros((size[1], size[0], 3), np.uint8)
        img[y0 : y0 + fh, x0 : x0 + fw] = cv2.resize(
            picture, (fw, fh), interpolation=cv2.INTER_LINEAR
        )
    view = img[y0 : y0 + fh, x0 : x0 + fw]
    draw(view, *shown)
    for m in masks:
        x, y, mw, mh = m.box(fw, fh)
        view[y : y + mh, x : x + mw] = 0
    return np.ascontiguousarray(img, dtype=np.uint8)


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
    """Decode the video, skipping what cannot be (a damaged frame) and frames out of time."""
    last = -1.0
    for packet in source.demux(video=0):
        try:
            decoded = packet.decode()
        except av.FFmpegError:
            continue  # the decoder picks up again at the next frame it can read
        for frame in decoded:
            t = float(frame.time or 0.0)
            if t <= last:  # one frame per time; a restart may leave one twice
                continue
            last = t
            yield frame


def bar(stream: TextIO = sys.stderr) -> Callable[[float], None]:
    """Return a progress callback drawing a bar on a terminal (percent of the feed exported)."""
    meter = tqdm(total=100, desc="exporting", unit="%", file=stream, bar_format=BAR_FORMAT)

    def show(done: float) -> None:
        pct = int(done * 100)
        if pct > meter.n:
            meter.update(pct - meter.n)
        if pct >= 100:
            meter.close()

    return show
