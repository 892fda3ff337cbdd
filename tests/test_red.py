"""Redundant audio (RED, RFC 2198) from a publisher: agreed as a browser needs it, unwrapped at
the relay, a voice packet lost on the publisher's link put back from the next one; and to a
subscriber that takes it, each packet wrapped with the one before."""

from __future__ import annotations

import asyncio
import fractions
import math
import re
import time
from contextlib import suppress

import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.codecs.opus import OpusEncoder
from aiortc.rtp import RtpPacket
from hypothesis import given, settings
from hypothesis import strategies as st

from teleconsult.client.media import MediaClient
from teleconsult.media.aiortc_adapter import ForwardingReceiver, RelayPeerConnection
from teleconsult.media.red import (
    MAX_LENGTH,
    MAX_OFFSET,
    Unwrapper,
    Wrapper,
    answer_with_red,
    join,
    offer_red,
    offered_red,
    split,
)
from teleconsult.session.roles import Role

from .conftest import Server
from .media_util import ToneTrack, connected, extension_map, receive, tone_level

CHROMIUM_AUDIO = "\r\n".join(
    [
        "v=0",
        "s=-",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
        "a=mid:0",
        "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:63 red/48000/2",
        "a=fmtp:63 111/111",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "a=mid:1",
        "a=rtpmap:63 red/48000/2",
        "",
    ]
)


def opus_packets(count: int) -> list[bytes]:
    """Encode `count` 20 ms Opus packets of a 440 Hz tone."""
    encoder = OpusEncoder()
    out: list[bytes] = []
    n = 0
    while len(out) < count:
        t = (np.arange(960) + n * 960) / 48000
        tone = (0.3 * 32767 * np.sin(2 * math.pi * 440 * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(tone.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts, frame.time_base = n * 960, fractions.Fraction(1, 48000)
        out += encoder.encode(frame)[0]
        n += 1
    return out[:count]


def red_stream(first_seq: int, count: int, pt: int = 63, opus: int = 111) -> list[RtpPacket]:
    """RED packets as Chromium sends them: each with the previous packet as one block."""
    payloads = [bytes([n % 251]) * (20 + n % 7) for n in range(count)]
    out = []
    for n, data in enumerate(payloads):
        blocks = [(opus, 960, payloads[n - 1])] if n else []
        out.append(
            RtpPacket(
                payload_type=pt,
                sequence_number=(first_seq + n) & 0xFFFF,
                timestamp=(7 + 960 * n) & 0xFFFFFFFF,
                ssrc=5,
                payload=join(blocks, (opus, data)),
            )
        )
    return out


def test_a_lost_packet_comes_back_from_the_next_across_the_sequence_wrap() -> None:
    packets = red_stream(65_500, 200)
    unwrapper = Unwrapper(63, 111)
    lost = set(range(3, 199, 4))  # every fourth, never two in a row, not the last
    got = [p for n, red in enumerate(packets) if n not in lost for p in unwrapper.unwrap(red)]
    # Every one of them, in order: each lost packet is in the next.
    assert [p.sequence_number for p in got] == [(65_500 + n) & 0xFFFF for n in range(200)]
    assert [p.timestamp for p in got] == [(7 + 960 * n) & 0xFFFFFFFF for n in range(200)]
    assert all(p.payload == bytes([n % 251]) * (20 + n % 7) for n, p in enumerate(got))
    assert all(p.payload_type == 111 for p in got)
    assert unwrapper.recovered == len(lost)
    # Reordered or repeated packets deliver nothing twice.
    assert unwrapper.unwrap(packets[10]) == [] and unwrapper.unwrap(packets[199]) == []


def test_two_losses_in_a_row_lose_one_packet_not_the_stream() -> None:
    packets = red_stream(100, 10)
    unwrapper = Unwrapper(63, 111)
    got = [p for n, red in enumerate(packets) if n not in (4, 5) for p in unwrapper.unwrap(red)]
    assert [p.sequence_number - 100 for p in got] == [0, 1, 2, 3, 5, 6, 7, 8, 9]


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 127), st.integers(0, 16383), st.binary(max_size=1023))),
    st.tuples(st.integers(0, 127), st.binary(max_size=1500)),
)
def test_any_blocks_survive_a_round_trip(
    blocks: list[tuple[int, int, bytes]], primary: tuple[int, bytes]
) -> None:
    blocks = blocks[:4]
    assert split(join(blocks, primary)) == (blocks, primary)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=80), st.integers(0, 0xFFFF))
def test_any_payload_is_unwrapped_or_counted_as_malformed(payload: bytes, seq: int) -> None:
    unwrapper = Unwrapper(63, 111)
    packet = RtpPacket(payload_type=63, sequence_number=seq, timestamp=0, ssrc=1, payload=payload)
    out = unwrapper.unwrap(packet)
    assert unwrapper.malformed == (0 if out or _parses(payload) else 1)
    assert all(p.payload_type == 111 and p.payload for p in out)


def _parses(payload: bytes) -> bool:
    try:
        split(payload)
    except ValueError:
        return False
    return True


def test_the_answer_prefers_red_where_the_codec_was_agreed() -> None:
    red = offered_red(CHROMIUM_AUDIO)
    assert red == {"0": (63, 111)}  # the video section's stray rtpmap is not RED audio
    answer = "v=0\r\nm=audio 9 X 111 0\r\na=mid:0\r\nm=video 9 X 96\r\na=mid:1\r\n"
    lines = answer_with_red(answer, red).split("\r\n")
    assert lines[1] == "m=audio 9 X 63 111 0"
    assert lines[3:5] == ["a=rtpmap:63 red/48000/2", "a=fmtp:63 111/111"]
    assert lines[5] == "m=video 9 X 96"
    # Not where the answer took another codec (or none), nor twice.
    assert answer_with_red(answer.replace("111 0", "0"), red) == answer.replace("111 0", "0")
    once = answer_with_red(answer, red)
    assert answer_with_red(once, red) == once
    assert offered_red(CHROMIUM_AUDIO.replace("a=fmtp:63 111/111", "a=fmtp:63 111/0")) == {}


class RedPublisher:
    """A publisher whose audio section offers RED over Opus, sending RED as Chromium does,
    every fourth packet lost on its way to the relay."""

    def __init__(self) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.opus = opus_packets(250)
        self.sent = 0
        self.task: asyncio.Task[None] | None = None

    def offer(self, sdp: str) -> str:
        m = next(x for x in sdp.split("\r\n") if x.startswith("m=audio"))
        self.opus_pt = int(m.split(" ")[3])
        return sdp.replace(m, f"{m} 63").replace(
            "a=sendonly\r\n",
            f"a=sendonly\r\na=rtpmap:63 red/48000/2\r\na=fmtp:63 {self.opus_pt}/{self.opus_pt}\r\n",
        )

    async def send(self) -> None:
        transport = await connected(self.pc)
        ids = extension_map()
        start = time.monotonic()
        for n, data in enumerate(self.opus):
            blocks = [(self.opus_pt, 960, self.opus[n - 1])] if n else []
            packet = RtpPacket(
                payload_type=63,
                sequence_number=(65_400 + n) & 0xFFFF,  # across the wrap
                timestamp=960 * n,
                ssrc=0x2222,
                payload=join(blocks, (self.opus_pt, data)),
            )
            packet.extensions.mid = "0"
            if n % 4 != 3:
                with suppress(ConnectionError):
                    await transport._send_rtp(packet.serialize(ids))
            self.sent = n + 1
            await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - time.monotonic()))


async def test_a_publishers_red_reaches_a_subscriber_as_whole_opus(server: Server) -> None:
    op = await server.join(role=Role.OPERATOR, identity="op")
    publisher = RedPublisher()
    ex = MediaClient(await server.join(role=Role.EXPERT, identity="ex"))
    try:
        publisher.pc.addTransceiver("audio", direction="sendonly")
        await publisher.pc.setLocalDescription(await publisher.pc.createOffer())
        assert publisher.pc.localDescription is not None
        reply = await op.request(
            {
                "type": "publish",
                "sdp": publisher.offer(publisher.pc.localDescription.sdp),
                "feeds": [{"mid": "0", "source": "microphone"}],
            }
        )
        # RED first in the answer: a browser sends RED only when the answer prefers it.
        assert re.search(rf"^m=audio \d+ \S+ 63 {publisher.opus_pt}\b", reply["sdp"], re.M)
        assert f"a=fmtp:63 {publisher.opus_pt}/{publisher.opus_pt}" in reply["sdp"]
        await publisher.pc.setRemoteDescription(RTCSessionDescription(reply["sdp"], "answer"))
        stream = str(reply["stream"])
        sub = await ex.subscribe(stream)
        track = sub.tracks[f"{stream}.0"]
        publisher.task = asyncio.create_task(publisher.send())
        frames = await receive(track, 150, timeout=15)
        assert tone_level(frames[-50:]) > 1000  # the tone, decoded
        await asyncio.wait_for(publisher.task, 15)
        await asyncio.sleep(0.5)
        up = server.hub.sfu.ups[stream].tracks["0"]
        assert up.codec.name == "opus"
        # A quarter of what the publisher sent was lost on its way; the subscriber got it all.
        inbound = [r for r in (await sub.pc.getStats()).values() if r.type == "inbound-rtp"]
        assert len(inbound) == 1
        assert inbound[0].packetsReceived >= publisher.sent - 5, (inbound, publisher.sent)
        assert inbound[0].packetsLost == 0
        assert up.receiver.red is not None and up.receiver.red.recovered >= 55
        # What the publisher's link lost still shows in its stats (its receiver reports).
        assert up.counts()["lost"] >= 55
    finally:
        if publisher.task is not None:
            publisher.task.cancel()
        await ex.close()
        await publisher.pc.close()


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.lists(
        st.tuples(st.binary(min_size=1, max_size=300), st.booleans()), min_size=2, max_size=60
    ),
)
def test_a_subscriber_rebuilds_any_single_loss_from_what_the_relay_wraps(
    first_seq: int, first_ts: int, sent: list[tuple[bytes, bool]]
) -> None:
    # The relay's wrapping, read by the same unwrapping a publisher's RED gets: every packet
    # lost alone (not the last) comes back, across both wraps of the numbering.
    wrapper, unwrapper = Wrapper(63, 111), Unwrapper(63, 111)
    lost = {n for n, (_, drop) in enumerate(sent[:-1]) if drop and (n == 0 or not sent[n - 1][1])}
    got = []
    for n, (data, _) in enumerate(sent):
        seq, ts = (first_seq + n) & 0xFFFF, (first_ts + 960 * n) & 0xFFFFFFFF
        red = RtpPacket(payload_type=63, sequence_number=seq, timestamp=ts, ssrc=9)
        red.payload = wrapper.wrap(seq, ts, data)
        if n not in lost:
            got += [(p.sequence_number, p.timestamp, p.payload) for p in unwrapper.unwrap(red)]
    want = [
        ((first_seq + n) & 0xFFFF, (first_ts + 960 * n) & 0xFFFFFFFF, data)
        for n, (data, _) in enumerate(sent)
    ]
    assert got == want
    assert unwrapper.recovered == len(lost) and unwrapper.malformed == 0


def test_only_the_packet_just_before_goes_in_and_only_when_it_fits() -> None:
    wrapper = Wrapper(63, 111)
    assert split(wrapper.wrap(10, 0, b"a")) == ([], (111, b"a"))
    assert split(wrapper.wrap(11, 960, b"b")) == ([(111, 960, b"a")], (111, b"b"))
    # A gap in the subscriber's numbering (packets the publisher never delivered): the block
    # would be taken for the packet just before, so there is none.
    assert split(wrapper.wrap(13, 2880, b"c")) == ([], (111, b"c"))
    # Too far back for the header (a long silence), or too long for it.
    assert split(wrapper.wrap(14, 2880 + MAX_OFFSET + 1, b"x" * (MAX_LENGTH + 1))) == (
        [],
        (111, b"x" * (MAX_LENGTH + 1)),
    )
    assert split(wrapper.wrap(15, 2880 + MAX_OFFSET + 961, b"e"))[0] == []
    assert wrapper.wrapped == 1


AIORTC_OFFER = "\r\n".join(
    [
        "v=0",
        "s=-",
        "a=group:BUNDLE 0 1",
        "m=video 9 UDP/TLS/RTP/SAVPF 97 98",
        "a=mid:0",
        "a=rtpmap:97 VP8/90000",
        "a=rtpmap:98 rtx/90000",
        "m=audio 9 UDP/TLS/RTP/SAVPF 96 0",
        "a=mid:1",
        "a=rtpmap:96 opus/48000/2",
        "a=rtpmap:0 PCMU/8000",
        "",
    ]
)


def test_the_offer_to_a_subscriber_adds_red_after_opus_on_a_free_payload_type() -> None:
    offer = offer_red(AIORTC_OFFER)
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 96 0 63\r\n" in offer
    assert "m=video 9 UDP/TLS/RTP/SAVPF 97 98\r\n" in offer
    assert offered_red(offer) == {"1": (63, 96)}
    taken = offer_red(AIORTC_OFFER.replace("97 98", "97 63").replace("rtpmap:98", "rtpmap:63"))
    assert offered_red(taken) == {"1": (98, 96)}  # the first free one
    assert offer_red(AIORTC_OFFER.replace("opus/48000/2", "PCMA/8000")).count("red/") == 0


async def test_a_subscriber_that_takes_red_loses_no_voice_packet_to_a_lossy_link(
    server: Server,
) -> None:
    op = MediaClient(await server.join(role=Role.OPERATOR, identity="op"))
    ex = await server.join(role=Role.EXPERT, identity="ex")
    pc = RelayPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        stream = await op.publish([(ToneTrack(), "microphone", "Sonographer")])
        offer = await ex.request({"type": "subscribe", "stream": stream.id})
        red = offered_red(offer["sdp"])
        assert set(red) == {"0"}
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        (t,) = pc.getTransceivers()
        receiver = t.receiver
        assert isinstance(receiver, ForwardingReceiver)
        receiver.red = Unwrapper(*red["0"])
        # The subscriber's link loses every fourth packet (none two in a row).
        handle = receiver._handle_red
        arrived = 0

        def lossy(packet: RtpPacket, unwrapper: Unwrapper) -> None:
            nonlocal arrived
            arrived += 1
            if arrived % 4:
                handle(packet, unwrapper)

        receiver._handle_red = lossy  # type: ignore[method-assign,assignment]
        got: list[int] = []

        def on_packet(packet: RtpPacket, codec: object, layer: str = "") -> None:
            got.append(packet.sequence_number)

        receiver.on_packet = on_packet
        await pc.setLocalDescription(await pc.createAnswer())
        assert pc.localDescription is not None
        answer = answer_with_red(pc.localDescription.sdp, red)
        await ex.send({"type": "answer", "stream": offer["stream"], "sdp": answer})
        for _ in range(100):
            if len(got) >= 150:
                break
            await asyncio.sleep(0.05)
        (down,) = server.hub.sfu.downs[offer["stream"]].tracks
        assert down.sender.red is not None and down.sender.red.wrapped >= 140
    finally:
        await pc.close()
        await op.close()
    # Every voice packet, in order, though a quarter of them were lost on the way.
    assert len(got) >= 150 and arrived >= 150
    assert got == [(got[0] + n) & 0xFFFF for n in range(len(got))]
    assert receiver.red.recovered >= len(got) // 4 - 2 and receiver.red.malformed == 0
