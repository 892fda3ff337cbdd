"""Bandwidth and keyframe-request decisions for one published track, with time passed in."""

from __future__ import annotations

import statistics
from collections import deque


class Throttle:
    """Lets an action through at most once per interval."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.last: float | None = None

    def ready(self, now: float) -> bool:
        """Tell whether the action may run now, and if so note that it did."""
        if self.last is not None and now - self.last < self.interval:
            return False
        self.last = now
        return True


class RateMeter:
    """A stream's rate over a sliding window, counted in buckets: a window holding a few of a
    GOP's keyframe bursts reads steady, where a short one swings with each keyframe."""

    def __init__(self, window: float = 2.0, buckets: int = 8) -> None:
        self.bucket = window / buckets
        self._buckets = buckets
        self._full: deque[int] = deque(maxlen=buckets)  # bytes of each completed bucket
        self._bytes = 0
        self._start: float | None = None
        self.rate = 0  # bits/s; from two buckets on

    def add(self, size: int, now: float) -> None:
        """Count `size` bytes sent or received at `now` (seconds)."""
        if self._start is None:
            self._start = now
        passed = int((now - self._start) / self.bucket)
        if passed > 0:
            # Bounded by the window: a longer silence only empties it.
            for _ in range(min(passed, self._buckets + 1)):
                self._full.append(self._bytes)
                self._bytes = 0
            self._start += passed * self.bucket
            if len(self._full) >= 2:
                self.rate = int(sum(self._full) * 8 / (len(self._full) * self.bucket))
        self._bytes += size


class RateAggregator:
    """Turns subscribers' REMB estimates into one target for the publisher."""

    def __init__(self, floor: int = 300_000, max_age: float = 5.0, weak: float = 0.5) -> None:
        self.floor = floor
        self.max_age = max_age
        # A subscriber below this share of the median is a weak link: it may suffer loss,
        # but it does not pull everyone else's picture down with it.
        self.weak = weak
        self._reports: dict[str, tuple[int, float]] = {}

    def report(self, subscriber: str, bitrate: int, now: float) -> None:
        """Record a subscriber's latest estimate in bits per second."""
        self._reports[subscriber] = (bitrate, now)

    def forget(self, subscriber: str) -> None:
        """Drop a subscriber that left."""
        self._reports.pop(subscriber, None)

    def target(self, now: float, upstream: int | None = None) -> int | None:
        """Return the bitrate to ask of the publisher, or None with no fresh estimate."""
        rates = [b for b, at in self._reports.values() if now - at <= self.max_age]
        if not rates:
            return upstream
        median = statistics.median(rates)
        wanted = max(self.floor, min(r for r in rates if r >= self.weak * median))
        # The publisher's own link to us caps everything, floor or not.
        return wanted if upstream is None else min(wanted, upstream)
