"""This node's recorders: started and stopped for their rooms, told stopped once their files
are whole, resumed as the next segment when a room moves here, deleted after retention."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from teleconsult.media.sfu import Sfu
from teleconsult.recording.recorder import Recorder
from teleconsult.session.participant import Event
from teleconsult.session.room import Room
from teleconsult.session.rooms import Rooms

from .audit import AuditLog
from .config import Settings
from .metrics import Metrics
from .plane import MediaPlane

log = logging.getLogger("teleconsult.recording")

# Seconds a stopped recording's files may take to be finished before the stop is told anyway.
CLOSE_WAIT = 10.0


class Node(Protocol):
    """What recording needs of its node (`hub.Hub`)."""

    settings: Settings
    node: str
    sfu: Sfu
    rooms: Rooms
    audit: AuditLog
    metrics: Metrics
    clock: Callable[[], float]
    loop: asyncio.AbstractEventLoop

    def now(self) -> float:
        """Return the time."""

    def persist(self, room: Room) -> None:
        """Queue the room's membership state for the store."""

    def journal(self, room_id: str, what: str, payload: Any) -> None:
        """Queue a change for the store."""

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a coroutine in the background."""

    @property
    def plane(self) -> MediaPlane:
        """Which node's media serves what; brings a stream from another node (`pull`)."""


class Recordings:
    """The recorders of one node, by room."""

    def __init__(self, hub: Node) -> None:
        self.hub = hub
        self.recorders: dict[str, Recorder] = {}
        self._finishing: set[Recorder] = set()  # stopped, their files still being written
        self._announcing: set[asyncio.Task[None]] = set()

    def start(self, room: Room, session_id: str | None = None, segment: int = 1) -> str:
        """Start the recorder of a room (or its next segment); returns the session's id."""
        hub = self.hub
        recorder = Recorder(
            room,
            hub.sfu,
            hub.settings.data_dir / "recordings",
            hub.clock,
            self._failed,
            session_id,
            segment,
            self._written,
        )
        recorder.start()
        self.recorders[room.id] = recorder
        room.recording.segment = segment
        room.recording_started(recorder.session_id, hub.now())
        hub.persist(room)
        if not all(hub.plane.in_process(s) for s in room.streams.values()):
            hub.spawn(self.record_remote(room))
        return recorder.session_id

    def resume(self, room: Room) -> None:
        """Go on recording a room whose node is gone, as a new segment of the same session."""
        self.start(room, room.recording.session_id, room.recording.segment + 1)
        self.hub.audit.record("record_start", room=room.id, actor="server", code="resumed")

    async def record_remote(self, room: Room) -> None:
        """Bring the streams published on other nodes, or forwarded by media workers, here for
        the recorder, then record them."""
        hub = self.hub
        for stream in list(room.streams.values()):
            if not hub.plane.in_process(stream):
                try:
                    await hub.plane.bring_here(room, stream.id)
                except Exception:
                    log.warning("a stream could not be brought to the recorder")
        recorder = self.recorders.get(room.id)
        if recorder is not None:
            recorder.refresh()

    def stop(self, room: Room, actor_id: str | None) -> None:
        """Stop a room's recorder; everyone is told once its files are complete."""
        recorder = self.recorders.get(room.id)
        event = room.stop_recording(actor_id, announce=recorder is None)
        if recorder is not None:
            del self.recorders[room.id]
            self._finish(recorder)
            task = asyncio.ensure_future(self._announce_when_written(room, recorder, event))
            self._announcing.add(task)
            task.add_done_callback(self._announcing.discard)

    def drop(self, room_id: str) -> bool:
        """Stop a room's recorder without telling the room (it ended or moved); True if one ran."""
        recorder = self.recorders.pop(room_id, None)
        if recorder is not None:
            self._finish(recorder)
        return recorder is not None

    def drop_all(self) -> None:
        """Stop every recorder (the node is stopping)."""
        for room_id in list(self.recorders):
            self.drop(room_id)

    async def written(self, timeout: float) -> None:
        """Wait until every stopped recorder's files are complete, and told (or the timeout)."""
        await asyncio.gather(*(r.finished(timeout) for r in list(self._finishing)))
        if self._announcing:
            await asyncio.wait(list(self._announcing), timeout=timeout)

    def _finish(self, recorder: Recorder) -> None:
        recorder.stop()
        self._finishing.add(recorder)
        self.hub.spawn(self._forget_when_written(recorder))

    async def _forget_when_written(self, recorder: Recorder) -> None:
        await recorder.finished(3600.0)  # a bound, not a wait anyone expects
        self._finishing.discard(recorder)

    async def _announce_when_written(self, room: Room, recorder: Recorder, event: Event) -> None:
        # Who hears "stopped" may fetch the files at once: they are whole by then, unless the
        # disk is so slow that saying nothing for longer would be worse.
        if not await recorder.finished(CLOSE_WAIT):
            log.warning("a recording's files were still being written when its stop was told")
        room.announce(event)

    def _written(self, recorder: Recorder, m: Event) -> None:
        # The cluster's registry of recorded sessions: any node can list and find them.
        entry = {
            "session_id": recorder.dir.name,
            "segment_of": m["session_id"] if recorder.segment > 1 else None,
            "room": m["room"],
            "title": m["title"],
            "started_at": m["started_at"],
            "stopped_at": m["stopped_at"],
            "tracks": len(m["tracks"]),
            "node": self.hub.node,
        }
        self.hub.journal(m["room"], "recording", entry)

    def _failed(self, room_id: str, error: str) -> None:
        hub = self.hub
        room = hub.rooms.get(room_id)
        hub.metrics.errors.labels(code="recording_failed").inc()
        hub.audit.record(
            "record_stop", "failed", room=room_id, actor="server", code="recording_failed"
        )
        if room is None:
            return
        for p in room.joined():
            p.client.push(
                {
                    "type": "error",
                    "code": "recording_failed",
                    "message": "recording stopped: the disk could not be written; "
                    "the session goes on",
                }
            )
        if room.recording.active:
            self.stop(room, None)

    def apply_retention(self, now: float) -> list[str]:
        """Delete recorded sessions older than the retention period; returns their ids.

        It runs in a worker thread: what it tells the journal goes through the event loop.
        """
        hub = self.hub
        days = hub.settings.retention_days
        root = hub.settings.data_dir / "recordings"
        if days is None or not root.is_dir():
            return []
        live = {r.session_id for r in self.recorders.values()}
        removed = []
        for manifest in root.glob("*/*/manifest.json"):
            try:
                data = json.loads(manifest.read_text())
            except (OSError, ValueError):
                continue
            ended = data.get("stopped_at") or data.get("started_at", now)
            if data.get("session_id") in live or now - ended < days * 86400:
                continue
            shutil.rmtree(manifest.parent, ignore_errors=True)
            room_id = data.get("room") or manifest.parent.parent.name
            hub.loop.call_soon_threadsafe(hub.journal, room_id, "unrecord", manifest.parent.name)
            removed.append(data["session_id"])
            hub.audit.record(
                "recording_delete",
                room=data.get("room"),
                actor="server",
                target=data["session_id"],
                code="retention",
            )
        return removed
