"""Map a published RTP stream's sequence numbers and timestamps into one subscriber's space."""

from __future__ import annotations

SEQ_MOD = 1 << 16
TS_MOD = 1 << 32


def seq_newer(a: int, b: int) -> bool:
    """Tell whether sequence number a comes after b, with wrap-around."""
    return a != b and (a - b) % SEQ_MOD < SEQ_MOD // 2


class Rewriter:
    """Keeps a subscriber's sequence and timestamp continuous across starts and source changes."""

    def __init__(self, seq_start: int, ts_start: int, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self.next_seq = seq_start % SEQ_MOD
        self.last_ts = (ts_start - 1) % TS_MOD
        self.last_time: float | None = None
        self.seq_offset = 0
        self.ts_offset = 0
        self.start_seq: int | None = None
        self.highest_in: int | None = None

    def rebase(self, in_seq: int, in_ts: int, now: float) -> None:
        """Start (or restart, after a source change) with this incoming packet."""
        if self.last_time is None:
            out_ts = (self.last_ts + 1) % TS_MOD
        else:
            # Advance the clock by the time that passed, so players keep pace across the gap.
            elapsed = max(1, int((now - self.last_time) * self.clock_rate))
            out_ts = (self.last_ts + elapsed) % TS_MOD
        self.seq_offset = (self.next_seq - in_seq) % SEQ_MOD
        self.ts_offset = (out_ts - in_ts) % TS_MOD
        self.start_seq = in_seq
        self.highest_in = in_seq

    def map(self, in_seq: int, in_ts: int, now: float) -> tuple[int, int] | None:
        """Return the subscriber's (sequence, timestamp), or None for a packet before the start."""
        if self.start_seq is None or self.highest_in is None:
            raise RuntimeError("rebase before mapping")
        if seq_newer(self.start_seq, in_seq):
            return None
        out_seq = (in_seq + self.seq_offset) % SEQ_MOD
        out_ts = (in_ts + self.ts_offset) % TS_MOD
        if seq_newer(in_seq, self.highest_in) or in_seq == self.highest_in:
            self.highest_in = in_seq
            self.next_seq = (out_seq + 1) % SEQ_MOD
            self.last_ts = out_ts
            self.last_time = now
        return out_seq, out_ts
