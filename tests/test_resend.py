"""Answering NACKs: a packet is resent once per round trip however often it is asked for,
across the wrap of the subscriber's sequence numbers."""

from __future__ import annotations

from teleconsult.media.resend import MIN_WAIT, SLOTS, ResendGuard


def test_a_repeated_nack_within_the_round_trip_is_not_answered() -> None:
    guard = ResendGuard()
    rtt = 0.05
    assert guard.allow(65535, 10.0, rtt)
    # The receiver repeats its NACK with every later loss: the resend is still on its way.
    assert not guard.allow(65535, 10.01, rtt) and not guard.allow(65535, 10.049, rtt)
    # A round trip later it was lost again: it goes once more.
    assert guard.allow(65535, 10.051, rtt)
    assert guard.suppressed == 2


def test_without_a_round_trip_known_the_least_wait_holds() -> None:
    guard = ResendGuard()
    assert guard.allow(7, 1.0, None)
    assert not guard.allow(7, 1.0 + MIN_WAIT / 2, None)
    assert guard.allow(7, 1.0 + MIN_WAIT, 0.001)


def test_numbers_across_the_wrap_and_far_past_it_are_told_apart() -> None:
    guard = ResendGuard()
    now = 0.0
    # Three wraps of a subscriber's numbering, each packet NACKed twice in quick succession.
    for n in range(3 * 65536):
        seq = (65000 + n) % 65536
        now += 0.001
        assert guard.allow(seq, now, 0.01)
        assert not guard.allow(seq, now + 0.005, 0.01)
    # A number SLOTS later shares a slot, not the history: it is a packet of its own.
    assert guard.allow(5, now, 0.01) and guard.allow(5 + SLOTS, now, 0.01)
    assert guard.suppressed == 3 * 65536
