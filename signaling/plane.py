"""The media plane as the rooms see it: which node's media serves a participant or a stream."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from teleconsult.media.sfu import INTERRUPTED, RESUMED, Media, Sfu
from teleconsult.media.workers import Workers
from teleconsult.session.participant import Participant
from teleconsult.session.room import Room
from teleconsult.session.rooms import Rooms
from teleconsult.session.streams import Stream

from .links import ClusterLink


class MediaPlane:
    """Routes media requests to this node's SFU or another node's, and takes their ends back
    to the rooms."""

    def __init__(self, rooms: Rooms, node: str, now: Callable[[], float]) -> None:
        self.rooms = rooms
        self.node = node
        self.now = now
        self.cluster: ClusterLink | None = None
        self.sfu: Sfu  # set by the hub, which makes the SFU with this plane's callbacks
        # This node's media workers, when it has them; the SFU above then takes in only the
        # streams brought to the recorder.
        self.workers: Workers | None = None

    @property
    def local(self) -> Media:
        """Return this node's media: its workers, or the SFU of this process."""
        return self.sfu if self.workers is None else self.workers

    def at(self, node: str | None) -> Media:
        """Return the media of a node: this one's, or another's over the cluster bus."""
        if node is None or node == self.node or self.cluster is None:
            return self.local
        return self.cluster.media_at(node)

    def of_stream(self, stream: Stream) -> Media:
        """Return the media a stream is published on (this node's, or its node's)."""
        return self.at(stream.node or None)

    def of(self, participant: Participant) -> Media:
        """Return the media serving a participant's connection."""
        media: Media = getattr(participant.client, "media", self.local)
        return media

    def in_process(self, stream: Stream) -> bool:
        """Tell whether a stream's packets reach this process (for the recorder's taps)."""
        return stream.node in ("", self.node) and self.workers is None

    async def bring_here(self, room: Room, stream_id: str) -> None:
        """Bring a stream into this process's SFU, from another node or a media worker."""
        stream = room.streams.get(stream_id)
        if stream is None:
            return
        if stream.node not in ("", self.node):
            await self.pull(self.node, room, stream_id)
        elif self.workers is not None:
            await self.workers.bring_here(stream_id)

    async def stats(self) -> dict[str, Any]:
        """Return this node's media counters, read now."""
        if self.workers is None:
            return self.sfu.stats()
        await self.workers.read_stats()
        return self.workers.stats()

    async def pull(self, node: str, room: Room, stream_id: str) -> None:
        """Make a published stream available on a node's SFU, cascading it if it is elsewhere."""
        stream = room.streams.get(stream_id)
        if self.cluster is not None and stream is not None and stream.node:
            await self.cluster.pull(node, stream_id, stream.node)

    def closed(self, what: str, item_id: str, reason: str) -> None:
        """Take the end (or interruption) of a stream or subscription, here or on its node."""
        (self.up_closed if what == "up" else self.down_closed)(item_id, reason)

    def room_of_stream(self, stream_id: str) -> Room | None:
        """Return the live room in which a stream is published."""
        for room in self.rooms.live():
            if stream_id in room.streams:
                return room
        return None

    def up_closed(self, stream_id: str, reason: str) -> None:
        """A stream's media ended, was lost or came back (the SFU's callback)."""
        room = self.room_of_stream(stream_id)
        if room is not None:
            if room.streams[stream_id].node not in ("", self.node):
                return  # a cascaded copy closed here; the stream itself goes on at its node
            if reason in (INTERRUPTED, RESUMED):
                # The publisher's media path was lost, or came back: the stream stays.
                room.stream_state(stream_id, reason == RESUMED, self.now())
                return
            room.remove_stream(stream_id, reason)
        elif self.cluster is not None:
            self.cluster.closed("up", stream_id, reason)

    def speaking(self, stream_id: str, feed_id: str, speaking: bool) -> None:
        """A microphone started or stopped speaking (the SFU's callback): its room is told."""
        room = self.room_of_stream(stream_id)
        if room is not None:
            room.speaking(stream_id, feed_id, speaking)
        elif self.cluster is not None:  # published here for a room another node hosts
            self.cluster.speaking(stream_id, feed_id, speaking)

    def down_closed(self, down_id: str, reason: str) -> None:
        """A subscription ended (the SFU's callback): its subscriber is told."""
        if reason in ("unsubscribed",):
            return  # it asked for this itself
        for room in self.rooms.live():
            for p in room.participants.values():
                if down_id in p.subscriptions:
                    p.subscriptions.discard(down_id)
                    p.client.push({"type": "unsubscribed", "stream": down_id, "reason": reason})
                    return
        if self.cluster is not None:
            self.cluster.closed("down", down_id, reason)
