"""Bandwidth and keyframe-request decisions for one published track, with time passed in."""

from __future__ import annotations

import statistics


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
