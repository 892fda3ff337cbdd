"""Recently sent packets of one subscriber's track, kept to answer its NACKs."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class PacketCache(Generic[T]):
    """A ring of the last `size` packets, looked up by sequence number."""

    def __init__(self, size: int = 512) -> None:
        self.size = size
        # Two rings, not one of (seq, packet) tuples: a put for every copy sent would make a
        # tuple that lives on, and each such object brings Python's cyclic collector closer
        # to a pass (a pause on the forwarding path).
        self._seqs: list[int] = [-1] * size
        self._packets: list[T | None] = [None] * size

    def put(self, seq: int, packet: T) -> None:
        """Remember a packet sent with this sequence number."""
        slot = seq % self.size
        self._seqs[slot] = seq
        self._packets[slot] = packet

    def get(self, seq: int) -> T | None:
        """Return the packet sent with this sequence number, if still kept."""
        slot = seq % self.size
        return self._packets[slot] if self._seqs[slot] == seq else None
