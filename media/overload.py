"""When the node cannot keep up: how many video copies to hold back, from how long packets wait.

The forwarding runs on one event loop. When the work of every copy outgrows the CPU, packets
wait longer and longer in the sockets' queues (up to the kernel's buffer, about 0.4 s of a
1080p feed) and then drop at random, for every viewer. Holding back some viewers' video instead
(the slowest first, at a frame boundary, chosen by the SFU) bounds the wait for the others.

Time is passed in; nothing here reads a clock or a socket.
"""

from __future__ import annotations

import math

# Seconds between two decisions; a decision looks at the window since the last.
WINDOW = 0.5
# A window is behind when even its least-delayed read found the oldest packet waiting this
# long: a keyframe's burst makes some reads find a queue while the rest of the window reads at
# once, but when the loop cannot keep up every read finds one.
BEHIND = 0.025
# Windows behind in a row before the first copies are held: a one-off stall (a slow disk
# write) passes by itself.
BEHIND_WINDOWS = 2
# Caught up: a window whose least wait is under this, or that read no queue at all.
CAUGHT_UP = 0.005
# Each step holds this share of the copies still sent (at least one).
STEP = 0.1
# Seconds caught up before one held copy is sent again; doubled when that brought the node
# behind again soon after (so that a viewer does not flap), back to the first after a calm.
RESTORE_AFTER = 5.0
RESTORE_MOST = 60.0
RELAPSE = 10.0


class Overload:
    """Decides, window by window, how many video copies the node holds back."""

    def __init__(self) -> None:
        self.held = 0
        self.floor: float | None = None  # the least wait of the window so far
        self.worst = 0.0  # the longest, for the node's stats
        self.behind = 0  # windows behind in a row
        self.restore_after = RESTORE_AFTER
        self._caught_up_since: float | None = None
        self._restored_at: float | None = None
        self.last_floor = 0.0
        self.last_worst = 0.0

    def waited(self, seconds: float) -> None:
        """Note how long the oldest packet of a read from a socket's queue waited there."""
        if self.floor is None or seconds < self.floor:
            self.floor = seconds
        if seconds > self.worst:
            self.worst = seconds

    def step(self, now: float, copies: int) -> int:
        """Close the window; return how many of the node's `copies` (video, not paused by their
        subscriber) to hold."""
        self.held = min(self.held, copies)  # subscribers left
        sent = copies - self.held
        floor = self.floor or 0.0
        self.last_floor, self.last_worst = floor, self.worst
        self.floor, self.worst = None, 0.0
        if floor >= BEHIND:
            self._caught_up_since = None
            self.behind += 1
            if self.behind >= BEHIND_WINDOWS and sent > 0:
                if self._restored_at is not None and now - self._restored_at < RELAPSE:
                    # The last copy sent again brought this: wait longer before the next.
                    self.restore_after = min(self.restore_after * 2, RESTORE_MOST)
                self._restored_at = None
                self.held = min(copies, self.held + max(1, math.ceil(sent * STEP)))
                # The next step waits for this one's effect to show.
                self.behind = 0
            return self.held
        self.behind = 0
        if floor >= CAUGHT_UP:
            self._caught_up_since = None
            return self.held
        if self._caught_up_since is None:
            self._caught_up_since = now
        if self._restored_at is not None and now - self._restored_at > 6 * RELAPSE:
            self.restore_after = RESTORE_AFTER  # a long calm: forget the relapses
        if self.held and now - self._caught_up_since >= self.restore_after:
            self.held -= 1
            self._restored_at = self._caught_up_since = now
        return self.held


# The node's own: fed by every ICE socket's reads, stepped by the SFU.
LOAD = Overload()
