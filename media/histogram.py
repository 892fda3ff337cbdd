"""A fixed-bucket histogram of durations, cheap enough to record every forwarded packet."""

from __future__ import annotations

import bisect

# Upper bounds in seconds, from 50 microseconds to 100 milliseconds.
BOUNDS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)


class Histogram:
    """Counts durations into buckets; reports quantiles as bucket upper bounds."""

    def __init__(self, bounds: tuple[float, ...] = BOUNDS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.n = 0

    def record(self, seconds: float) -> None:
        """Count one duration."""
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds
        self.n += 1

    def quantile(self, q: float) -> float:
        """Return the upper bound of the bucket holding the q-quantile (inf past the last)."""
        if self.n == 0:
            return 0.0
        rank = q * self.n
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return self.bounds[i] if i < len(self.bounds) else float("inf")
        return float("inf")

    def cumulative(self) -> list[tuple[float, int]]:
        """Return (upper bound, count at or below it) pairs, ending with infinity."""
        out, seen = [], 0
        for bound, c in zip((*self.bounds, float("inf")), self.counts, strict=True):
            seen += c
            out.append((bound, seen))
        return out
