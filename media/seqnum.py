"""RTP sequence numbers as counters that never wrap, and the duplicates among them."""

from __future__ import annotations

from enum import Enum

SEQ_MOD = 1 << 16
# RFC 3550 appendix A.1: a jump forward up to MAX_DROPOUT is loss, one back up to MAX_MISORDER
# is reordering; anything further is a source that restarted its numbering.
MAX_DROPOUT = 3000
MAX_MISORDER = 100
# How far back duplicates are told apart; older packets are too late to be of use.
WINDOW = 2048


class Verdict(Enum):
    """What to do with an incoming packet."""

    NEW = "new"  # forward it
    DUPLICATE = "duplicate"  # seen already (a retransmission that crossed its original)
    STALE = "stale"  # older than anything still useful
    RESTART = "restart"  # the numbering jumped: a new start point is needed


class SequenceTracker:
    """Extends one source's 16-bit sequence numbers and judges each packet (RFC 3550 A.1)."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self.highest: int | None = None  # extended
        self._bad: int | None = None  # the 16-bit number that would confirm a restart
        # The extended number each slot last held; None, never a number: a packet reordered
        # across the wrap before a source's first one has a negative extended number, and -1
        # as "empty" once made the packet just before the first (at 65535) a duplicate.
        self._slots: list[int | None] = [None] * window

    def push(self, seq: int) -> tuple[Verdict, int]:
        """Judge one packet's sequence number; return the verdict and its extended number."""
        if self.highest is None:
            return self._restart(seq)
        delta = (seq - self.highest) % SEQ_MOD
        if delta < MAX_DROPOUT:
            ext = self.highest + delta
        elif delta >= SEQ_MOD - MAX_MISORDER - self.window:
            ext = self.highest - (SEQ_MOD - delta)
        elif seq == self._bad:
            # Two packets in a row after the jump: the source did restart its numbering.
            return self._restart(seq)
        else:
            self._bad = (seq + 1) % SEQ_MOD
            return Verdict.STALE, -1
        self._bad = None
        if ext <= self.highest - self.window:
            return Verdict.STALE, ext
        slot = ext % self.window
        if self._slots[slot] == ext:
            return Verdict.DUPLICATE, ext
        self._slots[slot] = ext
        if ext > self.highest:
            self.highest = ext
        return Verdict.NEW, ext

    def _restart(self, seq: int) -> tuple[Verdict, int]:
        # Extended numbers go on increasing across a restart, so later comparisons stay valid;
        # the low 16 bits stay the packet's own.
        ext = seq if self.highest is None else (self.highest // SEQ_MOD + 2) * SEQ_MOD + seq
        self.highest = ext
        self._bad = None
        self._slots = [None] * self.window
        self._slots[ext % self.window] = ext
        return Verdict.RESTART, ext
