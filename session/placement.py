"""Which node a new room goes to: the least-loaded live node that is not draining."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Load:
    """What a node reports in each heartbeat."""

    rooms: int = 0
    up_tracks: int = 0
    down_tracks: int = 0
    cpu: float = 0.0  # percent of one core over the last heartbeat interval
    draining: bool = False

    def score(self) -> float:
        """Return a comparable load: forwarded tracks and CPU, with rooms to break ties."""
        # A down track costs about what an up track does (one packet in, one out); CPU covers
        # what the counts miss (recording, TURN, a busy signaling channel).
        return self.down_tracks + self.up_tracks + self.cpu + 0.5 * self.rooms

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
    # Ties go to this node (its clients need no relay); the claim in the store settles races.
    return min(open_nodes, key=lambda n: (open_nodes[n].score(), n != fallback, n))
