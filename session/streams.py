"""Published streams and their feeds, as the room knows them (the media lives in media/)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .participant import Event
from .roles import PATIENT_SOURCES, Source

AUDIO_SOURCES = frozenset({Source.MICROPHONE})


@dataclass(frozen=True)
class Feed:
    """One published track: a probe or laparoscope image, a camera, a screen or a microphone."""

    id: str
    mid: str
    kind: str
    source: Source
    label: str
    codec: str
    width: int | None = None
    height: int | None = None
    pixel_spacing_mm: float | None = None

    def describe(self) -> Event:
        """Return the public description."""
        out: Event = {
            "id": self.id,
            "mid": self.mid,
            "kind": self.kind,
            "source": self.source.value,
            "label": self.label,
            "codec": self.codec,
        }
        for key in ("width", "height", "pixel_spacing_mm"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


@dataclass
class Stream:
    """The feeds one participant publishes over one connection."""

    id: str
    participant_id: str
    feeds: list[Feed] = field(default_factory=list)
    # The node whose SFU takes the publisher's media (in a cluster; "" on a single node).
    node: str = ""
    # When the publisher's media path was lost (None while it is live): the stream waits for
    # the publisher to publish it again, for the room's reconnect grace.
    interrupted_since: float | None = None

    def describe(self) -> Event:
        """Return the public description."""
        return {
            "id": self.id,
            "participant_id": self.participant_id,
            "feeds": [f.describe() for f in self.feeds],
            "state": "live" if self.interrupted_since is None else "reconnecting",
        }


def source_fits_kind(source: Source, kind: str) -> bool:
    """Tell whether a source can be carried by a track of this kind (audio or video)."""
    return (kind == "audio") == (source in AUDIO_SOURCES)


class Published(dict[str, Stream]):
    """A room's published streams by id, with the lookups the room's rules make."""

    def of(self, participant_id: str) -> list[Stream]:
        """Return the streams one participant publishes."""
        return [s for s in self.values() if s.participant_id == participant_id]

    def interrupted(self, participant_id: str, sources: list[Source]) -> Stream | None:
        """Return the participant's interrupted stream with exactly these feed sources, if any."""
        for stream in self.of(participant_id):
            if stream.interrupted_since is not None and sorted(
                f.source for f in stream.feeds
            ) == sorted(sources):
                return stream
        return None

    def stale(self, now: float, grace: float) -> list[str]:
        """Return the ids of streams interrupted for `grace` seconds or more."""
        return [
            s.id
            for s in self.values()
            if s.interrupted_since is not None and now - s.interrupted_since >= grace
        ]

    def feed(self, feed_id: object) -> Feed | None:
        """Return the published feed with this id, if any."""
        for stream in self.values():
            for feed in stream.feeds:
                if feed.id == feed_id:
                    return feed
        return None

    def has_patient_feed(self) -> bool:
        """Tell whether a probe or laparoscope image is published."""
        return any(f.source in PATIENT_SOURCES for s in self.values() for f in s.feeds)
