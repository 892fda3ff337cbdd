"""What a node's hub links to and knows only by these Protocols: its signaling connections and,
in a cluster, the cluster (implemented in `signaling.connection` and `cluster.node`)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol

from teleconsult.media.sfu import Media

from .tokens import Grant


class Attached(Protocol):
    """What the node does with one of its signaling connections (`connection.Connection`)."""

    grant: Grant | None

    def error(self, code: str, message: str, ref: str | None = None, **details: Any) -> None:
        """Send an error event."""

    def kick(self, code: int, reason: str) -> None:
        """Close after what is queued."""

    def freeze(self) -> None:
        """Take no more messages: the node is stopping."""

    def shutdown(self) -> None:
        """Close for the node's shutdown."""


class ClusterLink(Protocol):
    """What the node asks of its cluster (`cluster.Cluster`), when it has one."""

    @property
    def live(self) -> Collection[str]:
        """The nodes whose heartbeat is fresh."""

    async def start(self) -> None:
        """Join: beat, listen, send."""

    async def hand_over(self) -> None:
        """Free this node's rooms for the others."""

    async def stop(self) -> None:
        """Leave the cluster."""

    async def host_for(self, room_id: str) -> str:
        """Return the node hosting a room, placing it if none does."""

    async def call(self, node: str, method: str, **args: Any) -> Any:
        """Ask a node to do something and return its result."""

    def tell(self, node: str, method: str, **args: Any) -> None:
        """Ask a node to do something, without waiting."""

    async def pull(self, node: str, stream_id: str, origin: str) -> None:
        """Make a stream published on `origin` available on `node`."""

    def closed(self, what: str, item_id: str, reason: str) -> None:
        """Pass the end of a stream or subscription served here to its room's host."""

    def speaking(self, stream_id: str, feed_id: str, speaking: bool) -> None:
        """Pass a microphone served here starting or stopping speaking to its room's host."""

    def media_at(self, node: str) -> Media:
        """Return another node's media, driven over the bus."""
