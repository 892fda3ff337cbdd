"""What one subscriber's path carries, estimated by the sender from transport-wide feedback.

In the manner of Google congestion control (draft-ietf-rmcat-gcc-02): packets are grouped by
send time, the trend of their one-way delay variation is compared with an adaptive threshold
(over-use, normal, under-use), and an AIMD controller moves the rate; a loss-based bound caps
it. No I/O and no clock of its own: times are passed in, in microseconds.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass

# Packets sent within this long of a group's first are one group (a frame's burst).
BURST_US = 5_000
# The trend is the slope of the smoothed delay over this many groups.
TREND_WINDOW = 20
SMOOTHING = 0.9
TREND_GAIN = 4.0
# The adaptive threshold (ms): its bounds, and how fast it follows the trend up and down.
THRESHOLD_START, THRESHOLD_MIN, THRESHOLD_MAX = 12.5, 6.0, 600.0
K_UP, K_DOWN = 0.0087, 0.039
# Over-use is declared when the trend stays above the threshold for this long.
OVERUSE_US = 10_000
# AIMD: multiplicative increase per second far from the last known maximum; decrease factor.
INCREASE_PER_S = 1.08
# Until the path first over-uses, the rate doubles each second (what a browser's start-up
# probes find in a direct call); what arrives still bounds it (1.5 times, below).
START_INCREASE_PER_S = 2.0
BETA = 0.85
# Loss-based bound: back off above 10 % loss. Below, random loss (a radio link) is left to
# NACK and FEC, and congestion to the delay trend, which sees a queue before it overflows.
LOSS_HIGH = 0.10
ACKED_WINDOW_US = 500_000
# Reported packets kept for measuring a probe (a few seconds at several Mbit/s).
RECENT_RESULTS = 4096
# Loss is judged over this much feedback, and this many packets at least: a short window's
# random losses are not congestion.
LOSS_WINDOW_US = 1_000_000
LOSS_MIN_PACKETS = 50


class Usage(enum.Enum):
    """What the delay trend says about the path."""

    NORMAL = "normal"
    OVERUSING = "overusing"
    UNDERUSING = "underusing"


@dataclass(frozen=True)
class Result:
    """A packet as the feedback reports it: sent when and how big, and when it arrived."""

    sent_us: int
    size: int
    arrived_us: int | None  # None: lost


class Trendline:
    """Over-use detection from the trend of the delay between groups of packets."""

    def __init__(self) -> None:
        self._group: tuple[int, int, int] | None = None  # first send, last send, last arrival
        self._previous: tuple[int, int] | None = None  # last send and arrival of the group before
        self._accumulated = 0.0
        self._smoothed = 0.0
        self._points: deque[tuple[float, float]] = deque(maxlen=TREND_WINDOW)
        self._first_arrival: int | None = None
        self._deltas = 0
        self.threshold = THRESHOLD_START
        self._last_update: int | None = None
        self._over_us = 0.0
        self._over_count = 0
        self._trend = 0.0
        self.usage = Usage.NORMAL

    def add(self, sent_us: int, arrived_us: int) -> Usage:
        """Take one received packet (in the order sent); return the path's state."""
        if self._group is None:
            self._group = (sent_us, sent_us, arrived_us)
            return self.usage
        first, _, _ = self._group
        if sent_us - first <= BURST_US:
            self._group = (first, max(sent_us, self._group[1]), max(arrived_us, self._group[2]))
            return self.usage
        # The group is complete: compare it with the one before.
        _, last_sent, last_arrival = self._group
        if self._previous is not None:
            send_delta = last_sent - self._previous[0]
            arrival_delta = last_arrival - self._previous[1]
            self._update(arrival_delta - send_delta, last_arrival)
        self._previous = (last_sent, last_arrival)
        self._group = (sent_us, sent_us, arrived_us)
        return self.usage

    def _update(self, delay_delta_us: int, arrival_us: int) -> None:
        if self._first_arrival is None:
            self._first_arrival = arrival_us
        self._deltas = min(self._deltas + 1, 60)
        self._accumulated += delay_delta_us / 1000
        self._smoothed = SMOOTHING * self._smoothed + (1 - SMOOTHING) * self._accumulated
        self._points.append(((arrival_us - self._first_arrival) / 1000, self._smoothed))
        trend = self._trend
        if len(self._points) == TREND_WINDOW:
            trend = _slope(self._points)
        modified = min(self._deltas, 60) * trend * TREND_GAIN
        self._detect(modified, trend, arrival_us)
        self._adapt(modified, arrival_us)
        self._trend = trend

    def _detect(self, modified: float, trend: float, now_us: int) -> None:
        elapsed = 0 if self._last_update is None else now_us - self._last_update
        if modified > self.threshold:
            self._over_us += elapsed
            self._over_count += 1
            if self._over_us > OVERUSE_US and self._over_count > 1 and trend >= self._trend:
                self._over_us, self._over_count = 0, 0
                self.usage = Usage.OVERUSING
        elif modified < -self.threshold:
            self._over_us, self._over_count = 0, 0
            self.usage = Usage.UNDERUSING
        else:
            self._over_us, self._over_count = 0, 0
            self.usage = Usage.NORMAL

    def _adapt(self, modified: float, now_us: int) -> None:
        if self._last_update is None:
            self._last_update = now_us
        if abs(modified) > self.threshold + 15:
            self._last_update = now_us  # a spike (a route change, say) does not move it
            return
        k = K_DOWN if abs(modified) < self.threshold else K_UP
        dt_ms = min((now_us - self._last_update) / 1000, 100.0)
        self.threshold += k * (abs(modified) - self.threshold) * dt_ms
        self.threshold = min(max(self.threshold, THRESHOLD_MIN), THRESHOLD_MAX)
        self._last_update = now_us


def _slope(points: deque[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    num = sum((x - mean_x) * (y - mean_y) for x, y in points)
    den = sum((x - mean_x) ** 2 for x, _ in points)
    return num / den if den else 0.0


class Acked:
    """The rate at which the receiver got packets, over the last half second of arrivals."""

    def __init__(self) -> None:
        self._arrivals: deque[tuple[int, int]] = deque()
        self._bytes = 0
        self._first: int | None = None

    def add(self, arrived_us: int, size: int) -> None:
        """Count a packet that arrived."""
        if self._first is None:
            self._first = arrived_us
        self._arrivals.append((arrived_us, size))
        self._bytes += size
        while self._arrivals and self._arrivals[0][0] < arrived_us - ACKED_WINDOW_US:
            self._bytes -= self._arrivals.popleft()[1]

    def bitrate(self) -> int | None:
        """Return bits per second, or None before half a second of arrivals."""
        if self._first is None or self._arrivals[-1][0] - self._first < ACKED_WINDOW_US:
            return None
        # Over the whole window, not from its first arrival: frames come in bursts, and the
        # time from a burst's first packet to the last one's would undercount.
        return int(self._bytes * 8 * 1_000_000 / ACKED_WINDOW_US)


class Estimator:
    """One subscriber's estimate: the delay-based rate, bounded by the loss-based one."""

    def __init__(
        self, start: int = 1_000_000, floor: int = 100_000, ceiling: int = 20_000_000
    ) -> None:
        self.floor, self.ceiling = floor, ceiling
        self.delay_rate = float(start)
        self.loss_rate = float(ceiling)
        self.trendline = Trendline()
        self.acked = Acked()
        self._last_change: int | None = None
        self._last_loss_change: int | None = None
        # The rate at which the path last over-used (an estimate of its capacity).
        self._max_kbps: float | None = None
        self._max_var = 0.4
        self.loss = 0.0
        self.congested_at: int | None = None  # when the path last over-used or lost much (µs)
        self._losses: deque[tuple[int, int, int]] = deque()  # (time, lost, reported)
        # The latest packets reported, for measuring what a probe's burst delivered.
        self._recent: deque[Result] = deque(maxlen=RECENT_RESULTS)
        self._seen_acked = False

    @property
    def target(self) -> int:
        """Return the rate this subscriber may be sent, in bits per second."""
        return int(min(max(min(self.delay_rate, self.loss_rate), self.floor), self.ceiling))

    def on_feedback(self, results: list[Result], now_us: int) -> int:
        """Take one feedback's packets (in the order sent); return the new target."""
        usage = self.trendline.usage
        received = 0
        self._recent.extend(results)
        for r in results:
            if r.arrived_us is None:
                continue
            received += 1
            self.acked.add(r.arrived_us, r.size)
            usage = self.trendline.add(r.sent_us, r.arrived_us)
        if results:
            self._losses.append((now_us, len(results) - received, len(results)))
            while self._losses[0][0] < now_us - LOSS_WINDOW_US:
                self._losses.popleft()
            lost = sum(x[1] for x in self._losses)
            reported = sum(x[2] for x in self._losses)
            self.loss = lost / reported
            if reported >= LOSS_MIN_PACKETS:
                self._loss_based(now_us)
        self._delay_based(usage, now_us)
        return self.target

    probes = True  # a probe's burst is measured from the feedback

    @property
    def ready(self) -> bool:
        """Tell whether feedback has covered enough arrivals for the target to mean anything."""
        return self._seen_acked

    @property
    def started(self) -> bool:
        """Tell whether the path has over-used (or lost much) at least once."""
        return self.congested_at is not None

    def congested(self, now_us: int, within_us: int = 10_000_000) -> bool:
        """Tell whether the path showed congestion (a growing queue, heavy loss) lately."""
        return self.congested_at is not None and now_us - self.congested_at <= within_us

    @property
    def queueing(self) -> bool:
        """Tell whether the delay is growing: a queue is building on the path."""
        return self.trendline.usage is Usage.OVERUSING

    def delivered(self, start_s: float, end_s: float) -> int | None:
        """Return the rate at which the later half of the packets sent between two times
        arrived (bits/s), once feedback covers them all; None before, or with too few to
        tell. Lost ones count as not delivered."""
        start, end = int(start_s * 1e6), int(end_s * 1e6)
        if not self._recent or self._recent[-1].sent_us < end:
            return None  # feedback has not reached the end of the window yet
        burst = sorted((r for r in self._recent if start <= r.sent_us <= end),
                       key=lambda r: r.sent_us)  # fmt: skip
        # Its later half only: a shaper's token bucket lets the first part of a burst through
        # at once, whatever its rate; what comes after the bucket is empty shows the rate.
        later = burst[len(burst) // 2 :]
        got = sorted((r.arrived_us, r.size) for r in later if r.arrived_us is not None)
        if len(got) < 5:
            return None
        span = got[-1][0] - got[0][0]
        sent_span = later[-1].sent_us - later[0].sent_us
        # The first packet's bytes arrived before the span starts; a burst that arrives
        # faster than it left says nothing more than how fast it left.
        delivered = sum(size for _, size in got[1:]) * 8 * 1_000_000
        return int(delivered / max(span, sent_span, 1))

    def carried(self, rate: int) -> None:
        """Note that the path was shown to carry `rate` (a probe arrived whole): go on from it,
        until a queue or loss says otherwise."""
        self.delay_rate = max(self.delay_rate, float(rate))
        self.loss_rate = max(self.loss_rate, float(rate))
        self._max_kbps = None

    def _delay_based(self, usage: Usage, now_us: int) -> None:
        acked = self.acked.bitrate()
        since = 0.0 if self._last_change is None else (now_us - self._last_change) / 1e6
        self._last_change = now_us
        if acked is not None and not self._seen_acked:
            self._seen_acked = True
            if usage is Usage.NORMAL:
                # What already arrives, the path carries: the climb starts from where it
                # would be bounded anyway, not from a guess a layer or two below.
                self.delay_rate = max(self.delay_rate, 1.5 * acked + 10_000)
        if usage is Usage.OVERUSING:
            self.congested_at = now_us
            if acked is not None:
                self._note_max(acked)
                self.delay_rate = min(self.delay_rate, BETA * acked)
            else:
                self.delay_rate *= BETA
            return
        if usage is Usage.UNDERUSING:
            return  # hold: queues are draining
        before = self.delay_rate
        if self._near_max(acked):
            # Close to where the path broke before: creep, about a packet per 200 ms.
            self.delay_rate += 1200 * 8 * 5 * min(since, 1.0)
        else:
            growth = INCREASE_PER_S if self.started else START_INCREASE_PER_S
            self.delay_rate *= growth ** min(since, 1.0)
        if acked is not None:
            # No climb far past what the path has been shown to carry; but what less arrives
            # (a lower layer sent, a keyframe-less second) is no reason to come down: only a
            # queue or loss is.
            shown = 1.5 * acked + 10_000
            if self.delay_rate > shown:
                self.delay_rate = max(before, shown)

    def _note_max(self, acked: int) -> None:
        kbps = acked / 1000
        if self._max_kbps is not None and kbps < self._max_kbps - 3 * self._sigma():
            self._max_kbps = None  # the path got worse: this is its new maximum
        if self._max_kbps is None:
            self._max_kbps = kbps
            return
        alpha = 0.05
        self._max_kbps = (1 - alpha) * self._max_kbps + alpha * kbps
        norm = max(self._max_kbps, 1.0)
        self._max_var = (1 - alpha) * self._max_var + alpha * (self._max_kbps - kbps) ** 2 / norm
        self._max_var = min(max(self._max_var, 0.4), 2.5)

    def _sigma(self) -> float:
        return math.sqrt(self._max_var * (self._max_kbps or 0.0))

    def _near_max(self, acked: int | None) -> bool:
        """Tell whether what arrives is about where the path over-used before."""
        if self._max_kbps is None or acked is None:
            return False
        kbps, sigma = acked / 1000, self._sigma()
        if kbps > self._max_kbps + 3 * sigma:
            self._max_kbps = None  # the path got better: search again
            return False
        return kbps > self._max_kbps - 3 * sigma

    def _loss_based(self, now_us: int) -> None:
        since = 1.0 if self._last_loss_change is None else (now_us - self._last_loss_change) / 1e6
        if self.loss > LOSS_HIGH:
            self.congested_at = now_us
            if since >= 0.3:  # at most once per round of feedback and reaction
                base = min(self.loss_rate, self.delay_rate)
                self.loss_rate = base * (1 - 0.5 * self.loss)
                self._last_loss_change = now_us
                # The next decision reads the loss after this one: the window's older losses
                # would cut the rate again for what it has just cut it for.
                self._losses.clear()
        else:
            self.loss_rate = max(self.loss_rate, self.delay_rate)
