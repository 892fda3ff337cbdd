"""Going down a simulcast layer: the higher layer's new frames stop at once, at a frame
boundary, and the lower one starts at its keyframe, the subscriber's numbering unbroken (the
real up and down tracks; only the transports are fakes)."""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, field

from aiortc.rtp import RtpPacket

from teleconsult.media.tracks import DownTrack, UpTrack

from .test_sequence import VP8, FakeReceiver

FPS = 30
PACKETS = 4  # per frame
GOP = 30
LO, HI = 0, 1
# Each layer's keyframes: the lower one's half a GOP after the higher one's.
KEY_AT = {LO: GOP // 2, HI: 0}
SIZES = {LO: 150, HI: 1200}  # payload bytes per packet


@dataclass
class Sender:
    """What a down track needs of aiortc's sender; records (seq, layer, frame, part, key)."""

    codec: object = field(default_factory=lambda: VP8)
    congestion: object = None
    on_keyframe_request: object = None
    on_remb: object = None
    sent: list[tuple[int, int, int, int, bool]] = field(default_factory=list)

    def forward(self, packet: RtpPacket, seq: int, timestamp: int, now: float) -> None:
        layer, frame, part = struct.unpack_from("!BII", packet.payload, 2)
        self.sent.append((seq, layer, frame, part, packet.payload[1] == 0x00 and part == 0))


def packet(layer: int, frame: int, part: int) -> RtpPacket:
    key = frame % GOP == KEY_AT[layer]
    descriptor = bytes([0x10, 0x00 if key else 0x01]) if part == 0 else bytes([0x00, 0x00])
    body = struct.pack("!BII", layer, frame, part)
    return RtpPacket(
        payload_type=96,
        sequence_number=(layer * 20_000 + frame * PACKETS + part) % 65536,
        timestamp=frame * 3000,
        ssrc=0x100 + layer,
        marker=int(part == PACKETS - 1),
        payload=descriptor + body + bytes(SIZES[layer] - len(body)),
    )


class Feed:
    """A publisher sending both layers frame by frame, on a clock of its own."""

    def __init__(self) -> None:
        self.clock = 0.0
        self.frame = 0
        self.up = UpTrack("f", "video", VP8, FakeReceiver(), lambda: self.clock)  # type: ignore[arg-type]
        self.sender = Sender()
        self.down = DownTrack(self.up, self.sender, "sub", lambda: self.clock)  # type: ignore[arg-type]
        self.up.attach(self.down)

    async def frames(self, count: int) -> None:
        for _ in range(count):
            for layer in (LO, HI):
                for part in range(PACKETS):
                    self.up.on_packet(packet(layer, self.frame, part), VP8, f"l{layer}")
            self.frame += 1
            self.clock += 1 / FPS


def continuous(sent: list[tuple[int, int, int, int, bool]]) -> bool:
    return all((b[0] - a[0]) % 65536 == 1 for a, b in itertools.pairwise(sent))


async def test_going_down_sheds_the_higher_layer_until_the_lower_ones_keyframe() -> None:
    feed = Feed()
    await feed.frames(2 * GOP)  # the rates are known; room for the higher layer
    assert feed.down.layer == "l1"
    before = len(feed.sender.sent)
    # The path narrows to a little above the lower layer's rate.
    feed.down.remb = int(feed.up.layers["l0"].rate * 1.5)
    await feed.frames(GOP)
    assert feed.down.layer == "l0"
    after = feed.sender.sent[before:]
    higher = [x for x in after if x[1] == HI]
    lower = [x for x in after if x[1] == LO]
    # The higher layer ends with whole frames: no frame is cut short.
    last = max(frame for _, _, frame, _, _ in higher)
    assert sorted(x[3] for x in higher if x[2] == last) == list(range(PACKETS))
    # Frames were shed: nothing of the higher layer after the one that was going out when
    # the choice was made, though the lower layer's keyframe came frames later.
    assert feed.down.shed > 0
    assert lower[0][4] and lower[0][2] % GOP == KEY_AT[LO], lower[0]
    assert last < lower[0][2] - 1
    # One stream for the subscriber: no gap in its numbering.
    assert continuous(feed.sender.sent)


async def test_coming_back_up_before_the_switch_starts_at_a_keyframe() -> None:
    feed = Feed()
    await feed.frames(2 * GOP + 1)  # just past the higher layer's keyframe
    assert feed.down.layer == "l1"
    feed.down.remb = int(feed.up.layers["l0"].rate * 1.5)
    await feed.frames(4)
    assert feed.down.shedding and feed.down.shed > 0
    # The path is wide again before the lower layer's keyframe: back to the higher layer,
    # but not from the middle of what was shed (its frames refer to the ones dropped).
    feed.down.remb = None
    before = len(feed.sender.sent)
    await feed.frames(3)
    resumed = feed.sender.sent[before:]
    assert resumed and all(x[1] == HI for x in resumed)
    assert resumed[0][4] and resumed[0][2] % GOP == KEY_AT[HI], resumed[0]
    assert continuous(feed.sender.sent)
