"""Which node a new room goes to: the least-loaded live node that is not draining."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# What a room weighs before its media arrives, in forwarded tracks.
ROOM_WEIGHT = 3.0
# A node keeps a new room that reached it unless another is lighter by more than this: a
# relay costs more than a small imbalance, and CPU readings jitter.
SLACK = 2.0


@dataclass(frozen=True)
class Load:
    """What a node reports in each heartbeat."""

    rooms: int = 0
    up_tracks: int = 0
    down_tracks: int = 0
    cpu: float = 0.0  # percent of one core over the last heartbeat interval
    draining: bool = False

    def score(self) -> float:
        """Return a comparable load: forwarded tracks, CPU, and rooms for what they will carry."""
        # A down track costs about what an up track does (one packet in, one out); CPU covers
        # what the counts miss (recording, TURN, a busy signaling channel); a room just opened
        # carries nothing yet but soon will (a probe feed, voices, an expert or two).
        return self.down_tracks + self.up_tracks + self.cpu + ROOM_WEIGHT * self.rooms

    def describe(self) -> dict[str, Any]:
        """Return the load as stored and listed."""
        return {
            "rooms": self.rooms,
            "up_tracks": self.up_tracks,
            "down_tracks": self.down_tracks,
            "cpu": round(self.cpu, 1),
            "draining": self.draining,
        }

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Load:
        """Read a stored load, tolerating missing fields."""
        return cls(
            rooms=int(raw.get("rooms", 0)),
            up_tracks=int(raw.get("up_tracks", 0)),
            down_tracks=int(raw.get("down_tracks", 0)),
            cpu=float(raw.get("cpu", 0.0)),
            draining=bool(raw.get("draining", False)),
        )


def choose(nodes: dict[str, Load], fallback: str) -> str:
    """Return the node for a new room; `fallback` (this node) when no live node may take one."""
    open_nodes = {n: load for n, load in nodes.items() if not load.draining}
    if not open_nodes:
        return fallback
    best = min(open_nodes, key=lambda n: (open_nodes[n].score(), n))
    here = open_nodes.get(fallback)
    if here is not None and here.score() <= open_nodes[best].score() + SLACK:
        return fallback  # the claim in the store settles two nodes choosing at once
    return best
