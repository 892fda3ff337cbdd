"""A voice set quiet and heard again, hour after hour, across the wraps of the publisher's and the
listener's 16-bit sequence and 32-bit timestamp (the real up and down tracks; only the
transports are fakes)."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from teleconsult.media.rewrite import SEQ_MOD, TS_MOD, Rewriter
from teleconsult.media.tracks import DownTrack, UpTrack

from .test_sequence import FakeReceiver

OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
TICKS = 960  # 20 ms of Opus at 48 kHz
HOURS = 1.2  # 216,000 packets: the publisher's numbering wraps three times


@dataclass
class Sender:
    """What a down track needs of aiortc's sender; records (index, seq, timestamp, now)."""

    codec: RTCRtpCodecParameters = field(default_factory=lambda: OPUS)
    on_keyframe_request: object = None
    on_remb: object = None
    sent: list[tuple[int, int, int, float]] = field(default_factory=list)

    def forward(self, packet: RtpPacket, seq: int, timestamp: int, now: float) -> None:
        self.sent.append((int.from_bytes(packet.payload[:4], "big"), seq, timestamp, now))


def test_quiet_and_heard_again_across_every_wrap_for_an_hour() -> None:
    rng = random.Random(19)
    clock = [0.0]
    up = UpTrack("mic", "audio", OPUS, FakeReceiver(), lambda: clock[0])  # type: ignore[arg-type]
    sender = Sender()
    down = DownTrack(up, sender, "listener", lambda: clock[0])  # type: ignore[arg-type]
    # The listener's numbering and clock start just before their own wraps as well.
    down.rewriter = Rewriter(SEQ_MOD - 700, TS_MOD - 30 * 48000, OPUS.clockRate)
    up.attach(down)
    seq0, ts0 = SEQ_MOD - 300, TS_MOD - 20 * 48000  # the publisher's wraps come in seconds
    total = int(HOURS * 3600 / 0.02)
    heard: list[int] = []  # the packets written while the voice was chosen
    quiet_until = 0
    toggles = 0
    for i in range(total):
        if i == quiet_until:
            # A speaker chosen for a while, then not for a while: from a word to minutes.
            toggles += 1
            down.quieten(toggles % 2 == 0)
            quiet_until = i + rng.choice([5, 60, 400, 3000, 20_000])
        clock[0] = i * 0.02
        up.on_packet(
            RtpPacket(
                payload_type=111,
                sequence_number=(seq0 + i) % SEQ_MOD,
                timestamp=(ts0 + i * TICKS) % TS_MOD,
                ssrc=0x5EED,
                payload=i.to_bytes(4, "big") + bytes(60),
            ),
            OPUS,
        )
        if not down.quiet:
            heard.append(i)
    assert toggles > 20
    # Every packet of the chosen stretches went out, once and in order.
    assert [x[0] for x in sender.sent] == heard
    out_seq = [x[1] for x in sender.sent]
    assert out_seq[0] > out_seq[-1]  # the listener's numbering wrapped
    # One unbroken numbering for the listener, whatever was left out between.
    assert all((b - a) % SEQ_MOD == 1 for a, b in itertools.pairwise(out_seq))
    # Its clock runs with time: through a pause by the time that passed, within a packet.
    for (_, _, ts_a, at_a), (_, _, ts_b, at_b) in itertools.pairwise(sender.sent):
        advance = (ts_b - ts_a) % TS_MOD
        assert abs(advance - (at_b - at_a) * OPUS.clockRate) <= TICKS, (ts_a, ts_b, at_a, at_b)
    assert sender.sent[-1][2] < sender.sent[0][2]  # and it wrapped too
