"""Which NACKed packets to send again: none a second time before its first resend could arrive."""

from __future__ import annotations

# A packet resent less than this long ago (or the round trip, if longer) is not resent again:
# receivers repeat a NACK for everything still missing, and answering each repeat puts the
# same packets on a path that is already losing them (the retransmissions would feed the loss).
MIN_WAIT = 0.02  # seconds
SLOTS = 1024  # resends remembered, by sequence number: as many as the packet cache keeps


class ResendGuard:
    """Remembers when each recent sequence number was resent."""

    def __init__(self) -> None:
        self._seqs = [-1] * SLOTS
        self._at = [0.0] * SLOTS
        self.suppressed = 0

    def allow(self, seq: int, now: float, rtt: float | None) -> bool:
        """Tell whether packet `seq` may be resent at `now`, and if so note that it was."""
        slot = seq % SLOTS
        if self._seqs[slot] == seq and now - self._at[slot] < max(MIN_WAIT, rtt or 0.0):
            self.suppressed += 1
            return False
        self._seqs[slot], self._at[slot] = seq, now
        return True
