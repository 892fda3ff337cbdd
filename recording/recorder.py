"""The recorder: a system participant of a room that writes every feed and the channel to disk.

It decides on the event loop (what to write, and when); a `DiskQueue` thread does every write,
so that a slow or full disk delays no packet of any room.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO

from aiortc.codecs import depayload
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from teleconsult.media.taps import Tappable, Tracks
from teleconsult.session.participant import Event
from teleconsult.session.roles import PATIENT_SOURCES, Role
from teleconsult.session.room import Room
from teleconsult.session.streams import Feed, Stream

from .disk import DiskQueue
from .frames import Frame, FrameAssembler
from .track_file import TrackFile, extension

SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
# How much earlier than its arrival a sender report may place a track's start.
SR_TRUST = 0.5


def safe_name(text: str, limit: int = 40) -> str:
    """Return text fit for a file name: letters, digits, '.', '_' and '-' only."""
    return SAFE.sub("-", text).strip("-.")[:limit] or "track"


@dataclass
class Recorded:
    """One published track being (or having been) written to one file."""

    index: int
    feed: Feed
    stream_id: str
    participant_id: str
    file: TrackFile
    assembler: FrameAssembler | None
    track: Tappable
    untap: Callable[[], None]
    first_arrival: float | None = None
    first_ts: int | None = None
    ended_at: float | None = None
    ssrc: int | None = None  # the source being written: another one starts again at a keyframe
    restart: bool = False  # the next frame written is a new source's


class Recorder:
    """Joins a room as the recorder and writes one file per track plus a manifest and a log."""

    def __init__(
        self,
        room: Room,
        sfu: Tracks,
        root: Path,
        clock: Callable[[], float],
        on_error: Callable[[str, str], None],
        session_id: str | None = None,
        segment: int = 1,
        on_manifest: Callable[[Recorder, Event], None] | None = None,
    ) -> None:
        self.room = room
        self.on_manifest = on_manifest
        self.sfu = sfu
        self.clock = clock
        self.on_error = on_error
        self.session_id = session_id or (
            time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
        )
        self.segment = segment
        # A later segment (the session went on on another node after a node loss) has a
        # folder of its own, so that on shared storage nothing of an earlier one is overwritten.
        folder = self.session_id if segment == 1 else f"{self.session_id}-s{segment}"
        self.dir = root / safe_name(room.id, 64) / folder
        self.started_at = 0.0
        self.stopped_at: float | None = None
        self.tracks: list[Recorded] = []
        self.participant_id = ""
        self.participants: dict[str, Event] = {}
        self.held: list[Event] = []  # frames held up for everyone, each kept as a JPEG file
        self._log: IO[str] | None = None  # the writer thread's, like every file
        self.disk: DiskQueue | None = None
        self.failed = ""

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Create the session folder, join the room and start on every published feed."""
        self.disk = DiskQueue(f"recorder-{self.session_id}", self._fail)
        self.disk.put(self._open_folder)
        self.started_at = self.clock()
        me = self.room.join(
            "recorder",
            "Recorder",
            Role.RECORDER,
            self,
            self.started_at,
            lambda: "p-rec-" + secrets.token_hex(4),
        )
        self.participant_id = me.id
        for p in self.room.joined():
            self.participants[p.id] = {
                "identity": p.identity,
                "name": p.name,
                "role": p.role.value,
                "joined": self._t(self.clock()),
            }
        # What the room shows now (annotations, recent chat) starts the log, so that a replay
        # from time 0 shows the arrow the first words refer to.
        snapshot = copy.deepcopy(self.room.channel.snapshot())  # named below: the room's own stay
        for entry in (*snapshot["annotations"], *snapshot["chat"]):
            self._name_author(entry)
        self._append({"t": 0.0, "type": "snapshot", "channel": snapshot})
        if self.room.held is not None:
            self._keep_held(self.room.held)
        for stream in self.room.streams.values():
            self._add_stream(stream)
        self.write_manifest()

    def stop(self) -> None:
        """Stop writing, finish every file and the manifest, and leave the room."""
        if self.stopped_at is not None:
            return
        self.stopped_at = self.clock()
        for rec in self.tracks:
            self._end_track(rec)
        self.write_manifest(finishing=True)
        if self.disk is not None:
            self.disk.put(self._close_log, finishing=True)
            self.disk.close()
        self.room.leave(self.participant_id, "recording_stopped", self.clock(), client=self)

    async def finished(self, timeout: float) -> bool:
        """Wait until everything stop() queued is on disk (True), or the timeout."""
        return self.disk is None or await self.disk.finished(timeout)

    def _open_folder(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._log = (self.dir / "channel.jsonl").open("a", buffering=1)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()

    # -- session.participant.Client ----------------------------------------------------------

    def push(self, event: Event) -> None:
        """Take what the room says: new and removed streams, people, and the channel."""
        if self.stopped_at is not None:
            return
        kind = event.get("type")
        if kind == "stream_added":
            stream = self.room.streams.get(event["stream"]["id"])
            if stream is not None:
                self._add_stream(stream)
                self.write_manifest()
        elif kind == "stream_removed":
            for rec in self.tracks:
                if rec.stream_id == event["stream_id"] and rec.ended_at is None:
                    self._end_track(rec)
            self.write_manifest()
        elif kind in ("op", "pointer"):
            entry = {"t": round(self._t(self.clock()), 3), **event}
            if kind == "op":
                self._name_author(entry)
            self._append(entry)
        elif kind == "frame_held":
            self._keep_held(event)
            self.write_manifest()
        elif kind == "frame_released":
            self._append({"t": round(self._t(self.clock()), 3), **event})
        elif kind == "joined":
            p = event["participant"]
            self.participants[p["id"]] = {
                "identity": p["identity"],
                "name": p["name"],
                "role": p["role"],
                "joined": self._t(self.clock()),
            }
        elif kind == "left" and event["participant_id"] in self.participants:
            self.participants[event["participant_id"]]["left"] = self._t(self.clock())
        elif kind == "role_changed" and event["participant_id"] in self.participants:
            self.participants[event["participant_id"]]["role"] = event["role"]
        elif kind == "consent_given":
            self.write_manifest()

    def _keep_held(self, event: Event) -> None:
        """Write a held frame to its own file and log it by name (the log stays small)."""
        feed = self.room.streams.feed(event["feed"])
        if feed is None or (
            feed.source in PATIENT_SOURCES and self.room.recording.consent is None
        ):
            return  # a patient's picture is kept only with consent, like the feed it is from
        name = f"held-{len(self.held) + 1}.jpg"
        data = base64.b64decode(event["image"])
        entry = {k: v for k, v in event.items() if k not in ("image", "ref")}
        entry.update(t=round(self._t(self.clock()), 3), file=name)
        self._name_author(entry)
        assert self.disk is not None
        if self.disk.put(partial(self._write_file, name, data), len(data)):
            self.held.append({k: entry[k] for k in ("id", "file", "t", "feed", "width", "height")})
            self._append(entry)

    def _write_file(self, name: str, data: bytes) -> None:
        (self.dir / name).write_bytes(data)

    def _name_author(self, entry: Event) -> None:
        """Add the author's name and role as the room shows them now."""
        shown = self.room.authors.get(str(entry.get("author")))
        if shown is not None:
            entry["author_name"], entry["author_role"] = shown["name"], shown["role"]

    def kick(self, code: int, reason: str) -> None:
        """The room ended: finish."""
        self.stop()

    # -- tracks ------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Start on feeds not yet recorded (after the operator's consent, patient feeds too)."""
        for stream in self.room.streams.values():
            self._add_stream(stream)
        self.write_manifest()

    def _add_stream(self, stream: Stream) -> None:
        taken = {(r.stream_id, r.feed.id) for r in self.tracks}
        for feed in stream.feeds:
            if (stream.id, feed.id) in taken:
                continue
            if feed.source in PATIENT_SOURCES and self.room.recording.consent is None:
                continue  # never a patient image without the operator's confirmation
            track = self.sfu.track(stream.id, feed.mid)
            if track is None:
                continue
            index = len(self.tracks) + 1
            name = f"{index:02d}-{feed.source.value}-{safe_name(feed.label or feed.kind)}"
            codec = track.codec
            tf = TrackFile(self.dir / (name + extension(codec.name)), codec.name, codec.clockRate)
            assembler = None
            if feed.kind == "video":
                assembler = FrameAssembler(codec.name, codec.clockRate, _depayloader(codec))
            rec = Recorded(
                index,
                feed,
                stream.id,
                stream.participant_id,
                tf,
                assembler,
                track,
                untap=lambda: None,
            )
            rec.untap = track.tap(self._tap_for(rec))
            self.tracks.append(rec)
            # Start on a keyframe now rather than at the encoder's next one.
            track.request_keyframe()

    def _tap_for(self, rec: Recorded) -> Callable[[RtpPacket, RTCRtpCodecParameters, bool], None]:
        def tap(packet: RtpPacket, codec: RTCRtpCodecParameters, key: bool) -> None:
            if self.failed:
                return
            if packet.ssrc != rec.ssrc:
                # Another source (a simulcast layer taking over, a publisher's new connection):
                # its numbering and clock are its own; go on from its keyframe.
                if rec.ssrc is not None:
                    rec.restart = True
                    if rec.assembler is not None:
                        rec.assembler = FrameAssembler(
                            codec.name, codec.clockRate, _depayloader(codec)
                        )
                rec.ssrc = packet.ssrc
            if rec.assembler is None:
                frames = [Frame(packet.payload, packet.timestamp, True)]
            else:
                frames = rec.assembler.push(
                    packet.sequence_number, packet.timestamp, bool(packet.marker), packet.payload
                )
                if rec.assembler.need_keyframe and rec.assembler.dropped:
                    rec.track.request_keyframe()
            now = self.clock()
            for frame in frames:
                if rec.first_ts is None and not frame.keyframe:
                    continue  # a file starts at a keyframe
                assert self.disk is not None
                write = partial(rec.file.write, frame, now, rec.restart)
                if not self.disk.put(write, len(frame.data)):
                    return
                rec.restart = False
                if rec.first_ts is None:
                    rec.first_arrival = now
                    rec.first_ts = frame.timestamp
                    # Where the track starts must survive a crash along with its file.
                    self.write_manifest()

        return tap

    def _end_track(self, rec: Recorded) -> None:
        rec.untap()
        if rec.ended_at is None:
            rec.ended_at = self.clock()
            if self.disk is not None:
                self.disk.put(rec.file.close, finishing=True)

    def _fail(self, error: OSError) -> None:
        # A full or slow disk ends the recording, not the session: tell the room, keep going.
        if self.failed:
            return
        self.failed = f"{type(error).__name__}: {error.strerror or error}"
        self.on_error(self.room.id, self.failed)

    # -- manifest and log --------------------------------------------------------------------

    def _t(self, wall: float) -> float:
        return wall - self.started_at

    def _append(self, entry: Event) -> None:
        if self.disk is None or self.failed:
            return
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        self.disk.put(partial(self._write_line, line), len(line))

    def _write_line(self, line: str) -> None:
        if self._log is not None:
            self._log.write(line)

    def _start_of(self, rec: Recorded) -> float | None:
        """Session time of a track's first frame, from the publisher's sender report if any."""
        if rec.first_arrival is None or rec.first_ts is None:
            return None
        arrived = self._t(rec.first_arrival)
        sr = rec.track.last_sr
        if sr is not None:
            wall, rtp = sr
            delta = ((rec.first_ts - rtp + (1 << 31)) % (1 << 32) - (1 << 31)) / rec.file.clock_rate
            sent = self._t(wall + delta)
            # A sender report aligns a publisher's tracks to within a frame, when its clock is
            # ours and it speaks of this source: a browser's clock may be hours off, and a
            # report may be of another simulcast layer. Else the arrival says it.
            if arrived - SR_TRUST <= sent <= arrived:
                return round(sent, 4)
        return round(arrived, 4)

    def _session(self) -> Event:
        """The description as the event loop knows it: the room, the people, the tracks (a
        copy: the writer thread reads it while the loop goes on changing its own)."""
        r = self.room.recording
        session: Event = {
            "version": 1,
            "session_id": self.session_id,
            "segment": self.segment,
            "room": self.room.id,
            "title": self.room.config.title,
            "started_at": self.started_at,
            "stopped_at": self.stopped_at,
            "started_by": r.started_by,
            "consent": r.consent,
            "participants": self.participants,
            "tracks": [
                {
                    "file": rec.file.path.name,
                    "feed": rec.feed.id,
                    "stream": rec.stream_id,
                    "participant_id": rec.participant_id,
                    "kind": rec.feed.kind,
                    "source": rec.feed.source.value,
                    "label": rec.feed.label,
                    "codec": rec.file.codec,
                    "clock_rate": rec.file.clock_rate,
                    "pixel_spacing_mm": rec.feed.pixel_spacing_mm,
                    "start": self._start_of(rec),
                    "first_rtp_timestamp": rec.first_ts,
                    "end": None if rec.ended_at is None else round(self._t(rec.ended_at), 4),
                }
                for rec in self.tracks
            ],
            "channel_log": "channel.jsonl",
            "held_frames": self.held,
            "error": self.failed or None,
        }
        return copy.deepcopy(session)

    def _with_files(self, session: Event) -> Event:
        """Add what only the files know (size of the picture, frames, length), in the writer."""
        for entry, rec in zip(session["tracks"], self.tracks, strict=False):
            f = rec.file
            entry.update(width=f.width, height=f.height, frames=f.frames)
            if f.sizes:
                entry["sizes"] = [list(size) for size in f.sizes]
            entry["duration"] = round(f.duration, 4)
        return session

    def write_manifest(self, finishing: bool = False) -> None:
        """Queue manifest.json to be written atomically (a crash leaves the old or the new
        one, whole), after the frames queued before it."""
        if self.disk is not None:
            self.disk.put(partial(self._write_manifest, self._session()), finishing=finishing)

    def _write_manifest(self, session: Event) -> None:
        path = self.dir / "manifest.json"
        tmp = path.with_suffix(".tmp")
        data = self._with_files(session)
        with tmp.open("w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        if self.on_manifest is not None and self.disk is not None:
            self.disk.tell(self.on_manifest, self, data)


def _depayloader(codec: RTCRtpCodecParameters) -> Callable[[bytes], bytes]:
    def strip(payload: bytes) -> bytes:
        return depayload(codec, payload)

    return strip
