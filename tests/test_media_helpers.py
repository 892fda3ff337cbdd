"""Pure media helpers: keyframe detection on real encoder output, rewriting, caches, rates."""

from __future__ import annotations

import fractions

import av
import numpy as np
import pytest
from aiortc.codecs import get_encoder
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder

from teleconsult.media.estimator import RateAggregator, Throttle
from teleconsult.media.keyframe import KEYFRAME_START, h264_keyframe_start, vp8_keyframe_start
from teleconsult.media.packetcache import PacketCache
from teleconsult.media.rewrite import Rewriter


def frames(n: int, width: int = 320, height: int = 240) -> list[av.VideoFrame]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        img = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        f = av.VideoFrame.from_ndarray(img, format="bgr24")
        f.pts = i * 3000
        f.time_base = fractions.Fraction(1, 90000)
        out.append(f)
    return out


@pytest.mark.parametrize(
    ("encoder_cls", "detect"),
    [(Vp8Encoder, vp8_keyframe_start), (H264Encoder, h264_keyframe_start)],
)
def test_keyframes_found_in_real_encoder_output(encoder_cls: type, detect: object) -> None:
    enc = encoder_cls()
    seen = []
    for i, frame in enumerate(frames(6)):
        payloads, _ = enc.encode(frame, force_keyframe=(i in (0, 4)))
        flags = [detect(p) for p in payloads]  # type: ignore[operator]
        # Only the first packet of a keyframe starts one; never a packet of a delta frame.
        seen.append((flags[0], any(flags[1:])))
    assert seen[0] == (True, False)
    assert seen[4][0] is True
    assert [s[0] for s in seen[1:4]] == [False, False, False]
    assert not any(s[1] for s in seen)


def test_keyframe_edge_cases() -> None:
    assert not vp8_keyframe_start(b"")
    assert not vp8_keyframe_start(b"\x90")  # truncated extension
    assert not vp8_keyframe_start(b"\x10")  # no frame header
    assert vp8_keyframe_start(b"\x10\x00")
    assert not vp8_keyframe_start(b"\x00\x00")  # not the start of a partition
    assert vp8_keyframe_start(b"\x90\x80\x81\x23\x00")  # two-byte picture id
    assert h264_keyframe_start(bytes([0x67]))  # SPS
    assert not h264_keyframe_start(bytes([0x41]))  # non-IDR slice
    assert not h264_keyframe_start(bytes([0x7C, 0x85]))  # FU-A start of IDR, SPS missed
    assert h264_keyframe_start(bytes([0x78, 0, 1, 0x68, 0, 1, 0x67]))  # STAP-A PPS + SPS
    assert not h264_keyframe_start(bytes([0x78, 0, 1, 0x68, 0, 1, 0x65]))  # PPS + IDR
    assert not h264_keyframe_start(bytes([0x78, 0, 1, 0x68, 0xFF]))  # truncated STAP-A
    assert set(KEYFRAME_START) == {"VP8", "H264"}  # audio: every packet starts
    assert callable(get_encoder)  # the helper used above is the codec registry of the pinned aiortc


def test_rewriter_continuous_across_source_change_and_wrap() -> None:
    rw = Rewriter(seq_start=65534, ts_start=1000, clock_rate=90000)
    rw.rebase(ext_seq=100, in_ts=5000, now=0.0)
    assert rw.map(100, 5000, 0.0) == (65534, 1000)
    assert rw.map(101, 8000, 0.033) == (65535, 4000)
    assert rw.map(102, 8000, 0.034) == (0, 4000)  # sequence wraps
    assert rw.map(99, 2000, 0.035) is None  # before the start: never sent
    assert rw.map(101, 8000, 0.036) == (65535, 4000)  # a late duplicate maps the same
    # The publisher restarts with a new SSRC and unrelated numbers; output stays continuous.
    rw.rebase(ext_seq=7 + 3 * 65536, in_ts=123456, now=1.034)
    seq, ts = rw.map(7 + 3 * 65536, 123456, 1.034)  # type: ignore[misc]
    assert seq == 1
    assert ts == 4000 + 90000  # one second of clock passed


def test_rewriter_maps_far_past_half_the_sequence_space() -> None:
    # Issue 12: every subscriber froze for good 32,768 packets after its start.
    rw = Rewriter(0, 0, 90000)
    rw.rebase(100, 0, 0)
    assert rw.map(100 + 32769, 0, 0) == (32769, 0)
    assert rw.map(100 + 10 * 65536 + 5, 0, 0) == (5, 0)


def test_packet_cache() -> None:
    c: PacketCache[str] = PacketCache(4)
    for s in range(10):
        c.put(s, f"p{s}")
    assert c.get(9) == "p9" and c.get(6) == "p6"
    assert c.get(5) is None  # overwritten
    assert c.get(13) is None  # never sent


def test_throttle() -> None:
    t = Throttle(0.5)
    assert t.ready(0.0) and not t.ready(0.2) and t.ready(0.5) and not t.ready(0.9)


def test_rate_aggregator() -> None:
    agg = RateAggregator(floor=300_000, max_age=5.0)
    assert agg.target(0.0) is None
    agg.report("a", 2_000_000, 0.0)
    agg.report("b", 1_500_000, 0.0)
    agg.report("c", 1_800_000, 0.0)
    assert agg.target(1.0) == 1_500_000
    agg.report("weak", 200_000, 1.0)  # one weak subscriber does not starve the rest
    assert agg.target(1.0) == 1_500_000
    assert agg.target(1.0, upstream=1_000_000) == 1_000_000
    agg.forget("b")
    assert agg.target(1.0) == 1_800_000
    assert agg.target(10.0) is None  # stale reports are ignored
    only_weak = RateAggregator(floor=300_000)
    only_weak.report("x", 100_000, 0.0)
    assert only_weak.target(0.0) == 300_000


def test_stamp_survives_vp8_at_low_bitrate() -> None:
    import asyncio

    from aiortc.codecs.vpx import Vp8Decoder, vp8_depayload
    from aiortc.jitterbuffer import JitterFrame

    from teleconsult.media import stamp
    from teleconsult.media.synthetic import UltrasoundTrack

    async def run() -> int:
        track = UltrasoundTrack(320, 240)
        enc, dec = Vp8Encoder(), Vp8Decoder()
        enc.target_bitrate = 300_000
        ok = 0
        for i in range(20):
            frame = await track.recv()
            payloads, ts = enc.encode(frame, force_keyframe=(i == 0))
            data = b"".join(vp8_depayload(p) for p in payloads)
            for out in dec.decode(JitterFrame(data=data, timestamp=ts)):
                assert isinstance(out, av.VideoFrame)
                read = stamp.read(out.to_ndarray(format="gray"))
                ok += read is not None and read[1] == i
        return ok

    assert asyncio.run(run()) == 20


def test_broken_datagrams_are_named_by_kind() -> None:
    from aioice import stun

    from teleconsult.media.datagrams import broken

    request = bytes(stun.Message(stun.Method.BINDING, stun.Class.REQUEST))
    rtp = bytes([0x80, 96]) + bytes(10) + b"payload"
    dtls = bytes([22, 0xFE, 0xFD]) + bytes(10) + b"hello"
    assert [broken(d) for d in (request, rtp, dtls)] == [None, None, None]
    assert broken(b"") == "empty"
    assert broken(request[:19]) == "stun"
    assert broken(request + b"\0\0\0\0") == "stun"  # the length field does not cover it
    assert broken(rtp[:11]) == "rtp"
    assert broken(bytes([0x40]) + rtp[1:]) == "channeldata"
    assert broken(bytes([0xC0]) + rtp[1:]) == "unknown"
    assert broken(dtls[:12]) == "dtls"


def test_dropped_datagrams_are_logged_once_a_minute_per_kind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from teleconsult.media.datagrams import DropCounter

    now = [0.0]
    counter = DropCounter(clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="teleconsult.media.ingress"):
        for _ in range(1000):
            counter.drop("stun", "unparsable")
            counter.drop("empty", "empty")
            now[0] += 0.05  # 50 s in all
        now[0] = 61.0
        counter.drop("stun", "unparsable")
    assert counter.dropped == {"stun": 1001, "empty": 1000}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and not any(r.exc_info for r in caplog.records)
    assert "dropped 1000 malformed stun" in lines[2]  # what the minute held, counted once
