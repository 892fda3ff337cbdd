"""The case-conference bench, 40 seconds of it, its listeners behind a narrow link that drops
what overflows: each still hears exactly the three loudest, a new speaker soon, every probe
frame."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from bench.conference.run import phase

from .netns import namespace

# The three listeners receive about 13.5 Mbit/s together (the probe, the room camera, one
# expert's camera and three voices each); keyframes sent to all three at once overflow the
# 40 ms queue. CONFERENCE_RATE=15mbit shows what happens nearer the rate (docs/benchmarks.md,
# "Case conference": retransmissions feed the loss there, and the probe loses frames).
RATE = os.environ.get("CONFERENCE_RATE", "20mbit")
NARROW = ["tbf", "rate", RATE, "burst", "20kb", "latency", "40ms"]


def test_a_short_conference_behind_a_narrow_link(tmp_path: Path) -> None:
    args = argparse.Namespace(
        audience=3,
        experts=7,
        cameras=1,
        minutes=40 / 60,  # five steps of the script
        procs=1,
        probe="640x360",
        probe_bitrate=800_000,
    )
    with namespace(7) as ns:
        ns.shape(*NARROW)
        got = phase(
            args,
            "need",
            tmp_path,
            host=ns.host,
            place=lambda k, argv: (ns.command(argv), ns.address),
        )
        dropped = ns.dropped()
    print(got, "dropped", dropped)
    assert dropped > 0  # the link did lose packets
    assert got["listeners"] == 3
    # Midway through every step each listener hears the chair, the main and the second speaker.
    assert got["exact_top3"] == "15/15", got
    assert got["third_voice_packets"] == 0 and got["most_voices_at_once"] <= 4, got
    assert got["new_speaker_missed"] == 0, got
    # 300 ms is the figure asked for (docs/benchmarks.md); the queue and a loaded CI machine
    # may add to the worst of eight onsets per listener.
    assert got["new_speaker_ms_p50"] <= 300 and got["new_speaker_ms_max"] <= 600, got
    # The probe's lost packets come again: nearly every frame reaches every listener.
    assert got["probe_frames_min"] >= 0.97 * got["probe_frames_sent"], got
