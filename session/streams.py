"""Published streams and their feeds, as the room knows them (the media lives in media/)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .participant import Event
from .roles import Source

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
