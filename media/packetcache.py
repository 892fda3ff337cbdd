"""Recently sent packets of one subscriber's track, kept to answer its NACKs."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class PacketCache(Generic[T]):
    """A ring of the last `size` packets, looked up by sequence number."""

    def __init__(self, size: int = 512) -> None:
        self.size = size
        self._slots: list[tuple[int, T] | None] = [None] * size

    def put(self, seq: int, packet: T) -> None:
        """Remember a packet sent with this sequence number."""
        self._slots[seq % self.size] = (seq, packet)

    def get(self, seq: int) -> T | None:
        """Return the packet sent with this sequence number, if still kept."""
        slot = self._slots[seq % self.size]
        if slot is not None and slot[0] == seq:
            return slot[1]
        return None
