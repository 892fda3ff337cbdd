"""Choosing a subscriber's simulcast layer: down at once, up after a probe the path carried."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from teleconsult.media.estimator import RateMeter
from teleconsult.media.gcc import Estimator, Result
from teleconsult.media.layers import (
    BURST_S,
    CALM_S,
    FOLLOWING_FLOOR,
    HEADROOM,
    HOLD_S,
    JUDGE_S,
    RETRY_S,
    Choice,
    LayerChooser,
)

from .test_gcc import FEEDBACK_US, FPS, MAX_QUEUE_US, PACKET, PROPAGATION_US, Link

RATES = [150_000, 500_000, 1_500_000]  # quarter, half and full size
FULL_PROBE = int(RATES[2] * HEADROOM)


@dataclass
class FakePath:
    """A path whose estimate, queue and delivered rate the test sets."""

    target: int
    queueing: bool = False
    arrived: int | None = None
    probes: bool = True

    def delivered(self, start_s: float, end_s: float) -> int | None:
        return self.arrived


def test_a_path_with_room_climbs_a_layer_at_a_time() -> None:
    chooser, path = LayerChooser(), FakePath(5_000_000)
    assert chooser.choose(RATES, path, 0.0) == Choice(1)
    assert chooser.choose(RATES, path, 0.1) == Choice(2)
    assert chooser.choose(RATES, path, 0.2) == Choice(2)


def test_a_narrowed_path_goes_down_at_once_to_what_fits() -> None:
    assert LayerChooser(start=2).choose(RATES, FakePath(400_000), 0.0) == Choice(0)
    assert LayerChooser(start=2).choose(RATES, FakePath(900_000), 0.0) == Choice(1)


def test_a_remb_path_keeps_its_layer_while_its_figure_follows_what_arrives() -> None:
    # A REMB receiver reports about what arrives: the full layer's rate, a little under or
    # over. Leaving on that would strand it lower for good, as nothing can be probed.
    chooser = LayerChooser(start=2)
    for i, share in enumerate([0.95, 1.0, 0.9, 1.1, 0.85]):
        assert chooser.choose(RATES, FakePath(int(RATES[2] * share), probes=False), i) == Choice(2)
    # Congested, it reports 0.85 of a narrower link: down to what fits.
    narrowed = FakePath(int(0.85 * 700_000), probes=False)
    assert chooser.choose(RATES, narrowed, 10.0) == Choice(1)
    assert RATES[2] * FOLLOWING_FLOOR > narrowed.target
    # A probing path keeps a layer its estimate still carries, and leaves it at once when
    # the estimate falls below the layer's rate.
    assert LayerChooser(start=2).choose(RATES, FakePath(RATES[2]), 0.0) == Choice(2)
    assert LayerChooser(start=2).choose(RATES, FakePath(int(0.95 * RATES[2])), 0.0) == Choice(1)


def test_going_up_takes_a_burst_that_arrives_at_the_higher_rate() -> None:
    chooser, path = LayerChooser(start=1), FakePath(760_000)  # 1.5 times the half layer
    assert chooser.choose(RATES, path, 10.0) == Choice(1, padding=FULL_PROBE - RATES[1])
    assert chooser.choose(RATES, path, 10.1).padding > 0  # the burst goes on
    assert chooser.choose(RATES, path, 10.0 + BURST_S + 0.01) == Choice(1)  # awaiting feedback
    path.arrived = FULL_PROBE
    assert chooser.choose(RATES, path, 10.4) == Choice(2, carried=FULL_PROBE)


def test_a_probe_stops_when_a_queue_builds_or_the_burst_arrives_slower() -> None:
    chooser, path = LayerChooser(start=1), FakePath(760_000)
    assert chooser.choose(RATES, path, 0.0).padding > 0
    path.queueing = True
    assert chooser.choose(RATES, path, 0.1) == Choice(1)  # stopped at once
    path.queueing = False
    assert chooser.choose(RATES, path, RETRY_S - 0.1) == Choice(1)  # not yet again
    assert chooser.choose(RATES, path, RETRY_S + 0.1).padding > 0  # the second probe
    path.arrived = 1_000_000  # the burst arrived at 1 Mbit/s: the path's limit
    assert chooser.choose(RATES, path, RETRY_S + 0.5) == Choice(1)
    # The next waits twice as long.
    path.arrived = None
    assert chooser.choose(RATES, path, RETRY_S + 0.5 + RETRY_S + 0.1).padding == 0
    assert chooser.choose(RATES, path, RETRY_S + 0.5 + 2 * RETRY_S + 0.1).padding > 0


def trial(chooser: LayerChooser, path: FakePath, at: float) -> float:
    """Probe from the half layer at `at`, told yes; return when the full layer was taken."""
    path.arrived, path.target = None, 760_000
    assert chooser.choose(RATES, path, at).padding > 0
    path.arrived = FULL_PROBE  # a shaper's bucket let the burst through, say
    assert chooser.choose(RATES, path, at + BURST_S + 0.1) == Choice(2, carried=FULL_PROBE)
    return at + BURST_S + 0.1


def first_probe(chooser: LayerChooser, path: FakePath, since: float) -> float:
    """Return when the chooser next probes, stepping 0.1 s from `since`."""
    path.arrived, path.target = None, 760_000
    for k in range(200):
        if chooser.choose(RATES, path, since + k * 0.1).padding > 0:
            return since + k * 0.1
    raise AssertionError("no probe in 20 s")


def test_a_layer_a_probe_found_that_does_not_hold_counts_as_a_failed_probe() -> None:
    chooser, path = LayerChooser(start=1), FakePath(760_000)
    up = trial(chooser, path, 0.0)
    path.target = 1_000_000  # the full layer does not fit after all
    assert chooser.choose(RATES, path, up + 0.5) == Choice(1)
    again = first_probe(chooser, path, up + 0.6)
    assert again - (up + 0.5) >= CALM_S
    # Told yes again, and again it does not hold: the next waits longer, as after failures.
    up = trial(chooser, path, again)
    path.target = 1_000_000
    assert chooser.choose(RATES, path, up + 0.5) == Choice(1)
    assert first_probe(chooser, path, up + 0.6) - (up + 0.5) > 2 * RETRY_S - 0.05 > CALM_S
    # A layer that holds: the next probe after a later fall comes after the calm alone.
    chooser, path = LayerChooser(start=1), FakePath(760_000)
    up = trial(chooser, path, 0.0)
    path.target = 2_000_000
    assert chooser.choose(RATES, path, up + HOLD_S + 0.1) == Choice(2)
    path.target = 1_000_000
    assert chooser.choose(RATES, path, 10.0) == Choice(1)
    assert first_probe(chooser, path, 10.1) - 10.0 < CALM_S + 0.2


def test_a_probe_whose_feedback_never_comes_fails() -> None:
    chooser, path = LayerChooser(start=1), FakePath(760_000)
    chooser.choose(RATES, path, 0.0)
    assert chooser.choose(RATES, path, JUDGE_S + 0.01) == Choice(1)
    assert chooser.choose(RATES, path, JUDGE_S + 0.02).padding == 0


def test_no_probe_right_after_going_down() -> None:
    chooser, path = LayerChooser(start=2), FakePath(900_000)
    assert chooser.choose(RATES, path, 0.0) == Choice(1)
    assert chooser.choose(RATES, path, CALM_S - 0.1).padding == 0
    assert chooser.choose(RATES, path, CALM_S + 0.1).padding > 0


def test_a_layer_that_stops_is_left_for_the_best_live_one() -> None:
    chooser, path = LayerChooser(start=2), FakePath(5_000_000)
    assert chooser.choose([150_000, 500_000, 0], path, 0.0) == Choice(1)
    assert chooser.choose([0, 0, 0], path, 0.1) == Choice(1)  # nothing live: stay


@dataclass
class Shaper(Link):
    """A token-bucket shaper (`tc tbf`): a packet leaves at once while the bucket holds its
    bytes, else waits for them, in order; the bucket fills at the capacity up to `bucket`."""

    bucket: int = 16_000
    tokens: float = 16_000.0
    filled_at: int = 0

    def send(self, at_us: int, size: int) -> int | None:
        ready = at_us + PROPAGATION_US
        leave = max(ready, self.free_at)
        rate = self.capacity(at_us)
        tokens = min(self.bucket, self.tokens + (leave - self.filled_at) * rate / 8e6)
        if tokens < size:
            leave += int((size - tokens) * 8e6 / rate)
            tokens = size
        if leave - ready > MAX_QUEUE_US or self.rng.random() < self.loss:
            return None
        self.tokens, self.filled_at, self.free_at = tokens - size, leave, leave
        return leave


def simulate(
    capacity_at: list[tuple[float, int]],
    seconds: float,
    keyframe: float = 1.0,
    bucket: int | None = None,
) -> tuple[list[tuple[float, int]], list[tuple[float, float | None]]]:
    """The whole loop: what is chosen (plus padding) goes through a link whose capacity
    changes at the given times, the estimate comes from its feedback, the chooser follows.
    Each layer sends a keyframe `keyframe` times the size of its other frames once a second,
    and the layers' rates are measured from what they send, as the SFU measures them.
    Returns the layer after each feedback, and each packet's (send time, queueing delay)."""

    def capacity(t: int) -> int:
        return [c for since, c in capacity_at if t >= since * 1e6][-1]

    link = Link(capacity) if bucket is None else Shaper(capacity, bucket=bucket, tokens=bucket)
    estimator, chooser = Estimator(start=1_000_000), LayerChooser()
    meters = [RateMeter() for _ in RATES]
    layers: list[tuple[float, int]] = []
    delays: list[tuple[float, float | None]] = []
    pending: list[tuple[int, Result]] = []
    owed, t, next_feedback, choice = 0.0, 0, FEEDBACK_US, Choice(0)
    frame = 0
    while t < seconds * 1e6:
        # A GOP's bytes: one keyframe and FPS - 1 others, the layer's rate on average.
        share = (keyframe if frame % FPS == 0 else 1.0) * FPS / (keyframe + FPS - 1)
        sizes = [rate / FPS / 8 * share for rate in RATES]
        for meter, size in zip(meters, sizes, strict=True):
            meter.add(int(size), t / 1e6)
        owed += sizes[choice.layer] + choice.padding / FPS / 8
        packets = int(owed // PACKET)
        owed -= packets * PACKET
        for k in range(packets):
            sent = t + k * 100
            arrived = link.send(sent, PACKET)
            reported = arrived if arrived is not None else sent
            pending.append((reported, Result(sent, PACKET, arrived)))
            queue = None if arrived is None else (arrived - sent - PROPAGATION_US) / 1000
            delays.append((sent / 1e6, queue))
        t += 1_000_000 // FPS
        frame += 1
        while next_feedback <= t:
            done = sorted((p for p in pending if p[0] <= next_feedback), key=lambda p: p[1].sent_us)
            pending = [p for p in pending if p[0] > next_feedback]
            estimator.on_feedback([r for _, r in done], next_feedback)
            now = next_feedback / 1e6
            choice = chooser.choose([m.rate for m in meters], estimator, now)
            if choice.carried:
                estimator.carried(choice.carried)
            layers.append((now, choice.layer))
            next_feedback += FEEDBACK_US
    return layers, delays


@pytest.mark.parametrize(
    ("keyframe", "bucket"),
    [(1.0, None), (10.0, None), (10.0, 16_000)],
    ids=["even_frames", "keyframe_10x", "keyframe_10x_token_bucket"],
)
def test_a_capped_path_goes_down_and_comes_back_up_within_ten_seconds(
    keyframe: float, bucket: int | None
) -> None:
    # 6 Mbit/s, capped at 1 Mbit/s from 10 s to 30 s (as the bench does to one viewer,
    # with `tc tbf ... burst 16kb`: a probe's first part passes at once, whatever its rate).
    capacity: list[tuple[float, int]] = [(0, 6_000_000), (10, 1_000_000), (30, 6_000_000)]
    layers, delays = simulate(capacity, 45, keyframe, bucket)

    def during(start: float, end: float) -> set[int]:
        return {layer for s, layer in layers if start <= s < end}

    assert during(5, 10) == {2}  # found the full layer
    assert during(13, 30) == {1}  # the capped path: half size, from 3 s after the cap
    assert during(40, 45) == {2}  # back to full size...
    back = min(s for s, layer in layers if s >= 30 and layer == 2)
    assert back - 30 <= 10, back  # ...within 10 s
    # Probing the capped path loses nothing, and queues for less than 300 ms (the latency the
    # bench's shaper holds) beyond what the half layer's keyframe takes at 1 Mbit/s: each
    # probe is a quarter of a second at 1.7 times what the path carries.
    capped = [d for s, d in delays if 13 <= s < 30]
    assert None not in capped
    keyframe_ms = RATES[1] / FPS * keyframe * FPS / (keyframe + FPS - 1) / 1_000_000 * 1000
    assert max(d for d in capped if d is not None) < 300 + keyframe_ms


def test_a_path_with_room_keeps_the_top_layer_through_every_keyframe() -> None:
    # The bench's viewers on good links went down with each keyframe that swung a layer's
    # measured rate, and the estimate, bounded by what arrived, came down with the layer.
    layers, _ = simulate([(0, 6_000_000)], 60, keyframe=10.0)
    settled = [layer for s, layer in layers if s >= 3]
    assert set(settled) == {2}, [(s, layer) for s, layer in layers if s >= 3 and layer != 2][:5]
