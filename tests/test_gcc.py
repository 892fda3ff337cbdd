"""The per-subscriber estimate against a simulated bottleneck: it finds the path, backs off when
the path narrows, climbs back when it widens, and does not run from random loss."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from teleconsult.media.gcc import Estimator, Result, Usage

PACKET = 1200  # bytes
FPS = 30
FEEDBACK_US = 100_000
PROPAGATION_US = 20_000
MAX_QUEUE_US = 400_000  # a router's buffer: beyond this much queueing, packets are dropped


@dataclass
class Link:
    """A bottleneck: a FIFO drained at `capacity(t)` bits/s, tail-dropping, with random loss."""

    capacity: Callable[[int], int]
    loss: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    free_at: int = 0  # when the bottleneck finishes what is queued

    def send(self, at_us: int, size: int) -> int | None:
        """Return when a packet sent at `at_us` arrives, or None if it is lost."""
        start = max(at_us + PROPAGATION_US, self.free_at)
        if start - (at_us + PROPAGATION_US) > MAX_QUEUE_US or self.rng.random() < self.loss:
            return None
        self.free_at = start + int(size * 8 * 1_000_000 / self.capacity(at_us))
        return self.free_at


def run(
    link: Link, seconds: float, estimator: Estimator, source: int = 50_000_000
) -> list[tuple[float, int, float]]:
    """Send frames at min(target, source) for `seconds`; return (second, target, queueing ms)
    after each feedback."""
    trace = []
    pending: list[tuple[int, Result]] = []  # (arrival or send time, result)
    t = 0
    next_feedback = FEEDBACK_US
    frame_us = 1_000_000 // FPS
    owed = 0.0  # bytes the source has produced and not yet sent
    while t < seconds * 1_000_000:
        owed += min(estimator.target, source) / FPS / 8
        packets = int(owed // PACKET)
        owed -= packets * PACKET
        for k in range(packets):
            sent = t + k * 100  # a frame leaves as a burst
            arrived = link.send(sent, PACKET)
            pending.append(
                (arrived if arrived is not None else sent, Result(sent, PACKET, arrived))
            )
        t += frame_us
        while next_feedback <= t:
            # The receiver reports what arrived before now; the sender hears it a trip later.
            done = [p for p in pending if p[0] <= next_feedback]
            pending = [p for p in pending if p[0] > next_feedback]
            done.sort(key=lambda p: p[1].sent_us)
            target = estimator.on_feedback([r for _, r in done], next_feedback + PROPAGATION_US)
            queueing = max(0, link.free_at - next_feedback - PROPAGATION_US) / 1000
            trace.append((next_feedback / 1e6, target, queueing))
            next_feedback += FEEDBACK_US
    return trace


def at(trace: list[tuple[float, int, float]], start: float, end: float) -> list[int]:
    return [rate for second, rate, _ in trace if start <= second < end]


def test_it_finds_what_the_path_carries_and_keeps_queues_short() -> None:
    trace = run(Link(lambda t: 2_500_000), 30, Estimator(start=1_000_000))
    # It starts fast, as a browser's start-up probing does: there within 3 s.
    assert max(at(trace, 0, 3)) >= 2_000_000, at(trace, 0, 3)
    settled = at(trace, 15, 30)
    assert min(settled) >= 1_500_000 and max(settled) <= 3_200_000, settled
    # Delay-based: the queue at the bottleneck stays short once it has found the rate.
    assert max(q for s, _, q in trace if s >= 15) < 250


def test_a_narrowed_path_is_followed_down_within_two_seconds_and_back_up() -> None:
    def capacity(t: int) -> int:
        return 1_000_000 if 20_000_000 <= t < 40_000_000 else 2_500_000

    trace = run(Link(capacity), 60, Estimator(start=1_000_000))
    assert max(at(trace, 22, 40)) <= 1_150_000, at(trace, 20, 40)
    # Back up once the path is wide again (the multiplicative climb, about 8 % a second).
    assert max(at(trace, 40, 60)) >= 2_000_000, at(trace, 40, 60)


def test_random_loss_alone_does_not_pull_the_rate_down() -> None:
    # 5 % loss on a wide path, a 2 Mbit/s source: the estimate climbs as without loss, and
    # stays above what is sent.
    trace = run(Link(lambda t: 50_000_000, loss=0.05), 30, Estimator(start=1_000_000), 2_000_000)
    rates = at(trace, 0, 30)
    assert all(r >= 0.9 * max(rates[: i + 1]) for i, r in enumerate(rates)), rates
    assert min(at(trace, 15, 30)) >= 2_000_000


def test_heavy_loss_brings_the_rate_down() -> None:
    estimator = Estimator(start=2_000_000)
    trace = run(Link(lambda t: 50_000_000, loss=0.3), 10, estimator, 2_000_000)
    assert max(at(trace, 5, 10)) < 1_000_000
    assert estimator.loss > 0.1


def test_an_application_limited_sender_is_not_told_it_may_send_anything() -> None:
    # A 500 kbit/s layer on a 10 Mbit/s path: the estimate stays near what was shown to pass.
    trace = run(Link(lambda t: 10_000_000), 20, Estimator(start=300_000), 500_000)
    assert max(at(trace, 5, 20)) <= 1.5 * 500_000 * 1.1 + 10_000


def test_the_trend_says_overuse_only_when_delay_keeps_growing() -> None:
    estimator = Estimator()
    # Groups 33 ms apart arriving 33 ms apart: no trend.
    flat = [Result(i * 33_000, PACKET, i * 33_000 + 20_000) for i in range(100)]
    estimator.on_feedback(flat, 3_400_000)
    assert estimator.trendline.usage is Usage.NORMAL
    # Each group 3 ms later than the one before: a queue that keeps growing.
    growing = [Result(i * 33_000, PACKET, i * 36_000 + 20_000) for i in range(100, 200)]
    usages = set()
    for r in growing:
        assert r.arrived_us is not None
        usages.add(estimator.trendline.add(r.sent_us, r.arrived_us))
    assert Usage.OVERUSING in usages
