"""Map a published RTP stream's sequence numbers and timestamps into one subscriber's space."""

from __future__ import annotations

SEQ_MOD = 1 << 16
TS_MOD = 1 << 32
# How much closer together frames replayed from a keyframe cache are put: a 2 s GOP at 90 kHz
# takes 703 ticks (8 ms), and frames stay apart up to 350 frames/s.
SQUEEZE = 256


class Rewriter:
    """Keeps a subscriber's sequence and timestamp continuous across starts and source changes.

    It maps extended (never wrapping) incoming sequence numbers, so a stream of any length
    compares correctly; only what goes on the wire is cut to 16 bits.
    """

    def __init__(self, seq_start: int, ts_start: int, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self.next_seq = seq_start  # extended: the subscriber's next new sequence number
        self.last_ts = (ts_start - 1) % TS_MOD
        self.last_time: float | None = None
        self.seq_offset = 0
        self.ts_offset = 0
        self.start: int | None = None
        self.highest: int | None = None
        # Frames replayed from a keyframe cache: how far before the live frame's incoming
        # time they reach, and the last incoming number this applies to (late packets of such
        # a frame, or a whole frame that arrived late, get the same squeezed time).
        self._squeeze_span = 0
        self._squeeze_live = (0, 0)  # the live frame's (incoming, outgoing) timestamp
        self._squeeze_until = 0

    def rebase(self, ext_seq: int, in_ts: int, now: float, ahead: int = 0) -> None:
        """Start (or restart, after a source change) with this incoming packet; its timestamp
        goes `ahead` ticks further, leaving room for that many before it."""
        if self.last_time is None:
            out_ts = (self.last_ts + 1 + ahead) % TS_MOD
        else:
            # Advance the clock by the time that passed, so players keep pace across the gap.
            elapsed = max(1, int((now - self.last_time) * self.clock_rate))
            out_ts = (self.last_ts + max(elapsed, 1 + ahead)) % TS_MOD
        self.seq_offset = self.next_seq - ext_seq
        self.ts_offset = (out_ts - in_ts) % TS_MOD
        self.start = ext_seq
        self.highest = ext_seq
        self._squeeze_span = 0

    def squeeze(self, first_ts: int, live_ts: int, until: int) -> None:
        """Give frames from incoming time `first_ts` up to the live frame's `live_ts` times just
        before it, SQUEEZE times closer together, for packets numbered up to `until`."""
        self._squeeze_span = (live_ts - first_ts) % TS_MOD
        self._squeeze_live = (live_ts, (live_ts + self.ts_offset) % TS_MOD)
        self._squeeze_until = until

    def map(self, ext_seq: int, in_ts: int, now: float) -> tuple[int, int] | None:
        """Return the subscriber's (sequence, timestamp), or None for a packet before the start."""
        if self.start is None or self.highest is None:
            raise RuntimeError("rebase before mapping")
        if ext_seq < self.start:
            return None
        out_seq = ext_seq + self.seq_offset
        out_ts = (in_ts + self.ts_offset) % TS_MOD
        if self._squeeze_span:
            if ext_seq > self._squeeze_until:
                self._squeeze_span = 0
            else:
                live_in, live_out = self._squeeze_live
                before = (live_in - in_ts) % TS_MOD
                if 0 < before <= self._squeeze_span:
                    out_ts = (live_out - -(-before // SQUEEZE)) % TS_MOD
        if ext_seq >= self.highest:
            self.highest = ext_seq
            self.next_seq = out_seq + 1
            self.last_ts = out_ts
            self.last_time = now
        return out_seq % SEQ_MOD, out_ts
