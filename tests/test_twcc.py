"""Transport-wide feedback: the draft's bytes, losses, reordering, and hours of numbers."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtp import HeaderExtensions, HeaderExtensionsMap, RtpPacket
from hypothesis import given, settings
from hypothesis import strategies as st

from teleconsult.client.media import MediaClient
from teleconsult.media.twcc import REFERENCE_US, SentPackets, TwccFeedback, encode_chunks, parse
from teleconsult.session.roles import Role

from .conftest import Server
from .media_util import PatternTrack


def test_a_small_feedback_is_the_draft_s_bytes() -> None:
    # Packets 100 and 102 arrive 1 ms and 3 ms after the 5th reference tick; 101 is lost.
    fb = TwccFeedback()
    fb.add(100, 5 * REFERENCE_US + 1000)
    fb.add(102, 5 * REFERENCE_US + 3000)
    (packet,) = fb.build(sender_ssrc=1, media_ssrc=2)
    assert packet.hex() == (
        "8fcd0005"  # V=2, FMT=15, PT=205 (RTPFB), 6 words
        "00000001"
        "00000002"  # sender and media SSRC
        "0064"
        "0003"  # base sequence number 100, three statuses
        "00000500"  # reference time 5 (of 64 ms), feedback count 0
        "d100"  # a status vector chunk of two-bit symbols: received, lost, received
        "0408"  # receive deltas: 4 and 8 quarter milliseconds
    )
    assert fb.build(1, 2) == []  # nothing new


def test_run_length_and_padding() -> None:
    assert encode_chunks([1] * 20).hex() == "2014"  # one run of 20 "small delta"
    # The longest run, then a vector chunk for the one left (its other places unused).
    assert encode_chunks([0] * 8191 + [0]).hex() == "1fffc000"
    fb = TwccFeedback()
    fb.add(7, 1_000)
    (packet,) = fb.build(1, 2)
    assert len(packet) % 4 == 0 and packet[0] & 0x20  # padded, and says so
    assert parse(packet) == (7, [1_000])


def test_a_late_packet_is_reported_after_its_loss() -> None:
    fb = TwccFeedback()
    fb.add(10, 100_000)
    fb.add(12, 110_000)
    (first,) = fb.build(1, 2)
    assert parse(first)[1][1] is None  # 11 missing so far
    fb.add(11, 115_000)  # it was only late
    (again,) = fb.build(1, 2)
    base, arrivals = parse(again)
    assert base == 11 and arrivals[0] == 115_000


def test_reordered_arrivals_give_negative_deltas() -> None:
    fb = TwccFeedback()
    fb.add(1, 200_000)
    fb.add(3, 201_000)
    fb.add(2, 202_000)  # overtaken
    (packet,) = fb.build(1, 2)
    assert parse(packet) == (1, [200_000, 202_000, 201_000])


def test_a_long_silence_starts_a_new_packet() -> None:
    fb = TwccFeedback()
    fb.add(1, 0)
    fb.add(2, 9_000_000)  # 9 s later: beyond what a two-byte delta holds
    packets = fb.build(1, 2)
    assert [parse(p) for p in packets] == [(1, [0]), (2, [9_000_000])]


def test_hours_of_numbers_cross_the_wrap_many_times() -> None:
    # 200,000 packets (three wraps of 16 bits), 1 in 50 lost, feedback every 100 packets.
    fb = TwccFeedback()
    seen: dict[int, int] = {}
    reported: dict[int, int | None] = {}
    start = 65_000
    for n in range(200_000):
        at = n * 500  # 2,000 packets a second
        if n % 50 != 7:
            fb.add((start + n) & 0xFFFF, at)
            seen[n] = at
        if n % 100 == 99:
            for packet in fb.build(1, 2):
                base, arrivals = parse(packet)
                first = (base - start) & 0xFFFF
                # The base's place in the whole run: the window just reported, unwrapped.
                first += ((n - first) // 0x10000) * 0x10000
                for k, arrival in enumerate(arrivals):
                    reported[first + k] = arrival
    assert len(reported) >= 199_990
    for n, arrival in reported.items():
        if arrival is None:
            assert n not in seen
        else:
            assert abs(arrival - seen[n]) <= 125  # quarter-millisecond steps, not accumulated


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 300), st.integers(0, 2_000_000)), min_size=1, max_size=120),
    st.integers(0, 0xFFFF),
    st.integers(1, 40),
)
def test_every_arrival_is_reported_as_it_came(
    arrivals: list[tuple[int, int]], offset: int, every: int
) -> None:
    fb = TwccFeedback()
    first_at: dict[int, int] = {}
    reported: dict[int, int] = {}
    for i, (n, at) in enumerate(arrivals):
        fb.add((offset + n) & 0xFFFF, at)
        first_at.setdefault(n, at)
        if i % every == every - 1 or i == len(arrivals) - 1:
            for packet in fb.build(1, 2):
                base, got = parse(packet)
                for k, arrival in enumerate(got):
                    if arrival is not None:
                        n_k = (base + k - offset) & 0xFFFF
                        reported[n_k] = arrival
    # Everything that arrived was reported, at its first arrival (to a quarter millisecond),
    # and nothing that did not arrive.
    assert set(reported) == set(first_at)
    for n, arrival in reported.items():
        assert abs(arrival - first_at[n]) <= 125


async def test_a_publisher_numbering_its_packets_hears_when_each_arrived(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # aiortc's sender does not number packets transport-wide; a browser does. Number them as
    # a browser would, from just before the 16-bit wrap, wherever the extension was agreed.
    numbers = itertools.count(0xFFFF - 60)
    sent: list[int] = []
    numbered_set = HeaderExtensionsMap.set

    def set_numbered(self: HeaderExtensionsMap, values: HeaderExtensions) -> tuple[int, bytes]:
        numbered = vars(self)["_HeaderExtensionsMap__ids"].transport_sequence_number
        if numbered is not None and values.transport_sequence_number is None:
            values.transport_sequence_number = next(numbers) & 0xFFFF
            sent.append(values.transport_sequence_number)
        return numbered_set(self, values)

    heard: list[bytes] = []
    handle_rtcp = RTCDtlsTransport._handle_rtcp_data

    async def hear(self: RTCDtlsTransport, data: bytes) -> None:
        if len(data) > 20 and data[1] == 205 and data[0] & 0x1F == 15:
            heard.append(data)
        await handle_rtcp(self, data)

    monkeypatch.setattr(HeaderExtensionsMap, "set", set_numbered)
    monkeypatch.setattr(RTCDtlsTransport, "_handle_rtcp_data", hear)
    op = MediaClient(await server.join(role=Role.OPERATOR, identity="op"))
    ex = MediaClient(await server.join(role=Role.EXPERT, identity="ex"))
    try:
        published = await op.publish([(PatternTrack(), "probe", "Ultrasound")])
        # The answer agreed to it, and the SFU's offers to subscribers ask for it too.
        answer = published.pc.remoteDescription
        assert answer is not None and "transport-cc" in answer.sdp
        sub = await ex.subscribe(published.id)
        offer = sub.pc.remoteDescription
        assert offer is not None and "transport-cc" in offer.sdp
        for _ in range(250):  # 10 s at most: feedback comes every 100 ms
            if len(sent) > 200 and len(heard) > 10:
                break
            await asyncio.sleep(0.04)
    finally:
        await op.close()
        await ex.close()
    reported: dict[int, int | None] = {}
    for packet in heard:
        base, arrivals = parse(packet)
        for k, arrival in enumerate(arrivals):
            reported[(base + k) & 0xFFFF] = arrival
    received = {n for n, at in reported.items() if at is not None}
    # Every packet numbered (but the last few, sent after the last report) was reported as
    # received, across the wrap; the arrival times move forward as the packets were sent.
    assert len(sent) > 200 and 0 in received and 0xFFFF in received
    assert set(sent[:-30]) <= received
    times = [reported[n] or 0 for n in sent[:-30]]
    assert all(b >= a - 5_000 for a, b in itertools.pairwise(times))


async def test_a_subscriber_s_feedback_sets_what_its_path_may_carry(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # aiortc's receiver sends no transport-wide feedback; a browser does. The expert's
    # transport here answers as a browser would: what arrived, when, every 100 ms.
    watched: dict[RTCDtlsTransport, TwccFeedback] = {}
    handle_rtp = RTCDtlsTransport._handle_rtp_data
    # From `queue_from` on, each packet is reported later than the last by more than the time
    # between them: a queue growing on the subscriber's path.
    queue_from: list[float] = []

    async def arrive(self: RTCDtlsTransport, data: bytes, arrival_time_ms: int) -> None:
        feedback = watched.get(self)
        if feedback is not None:
            packet = RtpPacket.parse(data, self._rtp_header_extensions_map)
            seq = packet.extensions.transport_sequence_number
            if seq is not None:
                now = time.perf_counter()
                late = 0.5 * (now - queue_from[0]) if queue_from else 0.0
                feedback.add(seq, int((now + late) * 1e6))
        await handle_rtp(self, data, arrival_time_ms)

    monkeypatch.setattr(RTCDtlsTransport, "_handle_rtp_data", arrive)
    op = MediaClient(await server.join(role=Role.OPERATOR, identity="op"))
    ex = MediaClient(await server.join(role=Role.EXPERT, identity="ex"))
    try:
        published = await op.publish([(PatternTrack(), "probe", "Ultrasound")])
        sub = await ex.subscribe(published.id)
        transport = sub.pc.getTransceivers()[0].receiver.transport
        watched[transport] = TwccFeedback()
        (down,) = server.hub.sfu.downs.values()
        (track,) = down.tracks
        await asyncio.wait_for(track.sender.ready.wait(), 10)
        congestion = track.sender.congestion
        assert congestion is not None  # the subscriber agreed to transport-cc
        # What the estimate tells the publisher (aiortc's own REMB reaches the same place).
        told: list[int] = []
        on_remb, on_feedback = track.sender.on_remb, congestion.on_feedback
        assert on_remb is not None

        def tell(rate: int) -> None:
            told.append(rate)
            on_remb(rate)

        def feedback(packet: bytes) -> None:
            track.sender.on_remb = tell
            try:
                on_feedback(packet)
            finally:
                track.sender.on_remb = on_remb

        congestion.on_feedback = feedback  # type: ignore[method-assign]

        async def report_until(enough: object, seconds: float) -> None:
            assert callable(enough)
            for _ in range(int(seconds / 0.05)):
                await asyncio.sleep(0.05)
                for packet in watched[transport].build(1, 2):
                    await transport._send_rtp(packet)
                if enough():
                    return

        await report_until(lambda: congestion.feedbacks >= 30, 5)
        # The SFU reads the feedback and estimates the path; a path without congestion does
        # not hold the publisher back.
        assert congestion.feedbacks >= 30
        assert congestion.estimator.acked.bitrate() is not None
        assert told == [] and not congestion.estimator.started
        # A queue builds: the estimate falls below what was sent, and the publisher is told.
        queue_from.append(time.perf_counter())
        await report_until(lambda: told, 8)
        assert congestion.estimator.started and told
        assert told[-1] == congestion.estimator.target
    finally:
        await op.close()
        await ex.close()


def sub_id(server: Server, identity: str) -> str:
    p = server.room().by_identity(identity)
    assert p is not None
    return p.id


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 0xFFFF))
def test_any_feedback_bytes_cover_nothing_or_what_was_sent(data: bytes, base: int) -> None:
    # Feedback comes from subscribers: whatever arrives, reading it never raises, and it
    # only ever reports packets that were sent.
    sent = SentPackets()
    for k in range(50):
        sent.number(k * 1000, 1200)
    packet = bytes([0x8F, 205]) + data[2:4] + data[4:12].ljust(8, b"\0")
    packet += base.to_bytes(2, "big") + data[12:]
    for got in (sent.results(data), sent.results(packet)):
        assert all(at_us % 1000 == 0 and size == 1200 for at_us, size, _ in got)
        assert len(got) <= 50
