"""Recording's pure parts: frame reassembly, picture sizes, and muxing without any encoder."""

from __future__ import annotations

import asyncio
import fractions
import itertools
import random
import struct
import threading
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.codecs.h264 import H264Encoder, h264_depayload
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder, vp8_depayload
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

from teleconsult.recording.disk import DiskBehind, DiskQueue
from teleconsult.recording.frames import FrameAssembler
from teleconsult.recording.geometry import h264_size, vp8_size
from teleconsult.recording.track_file import TrackFile


def video(n: int, w: int = 320, h: int = 240) -> list[av.VideoFrame]:
    out = []
    for i in range(n):
        img = np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)
        f = av.VideoFrame.from_ndarray(img, format="bgr24")
        f.pts, f.time_base = i * 3000, fractions.Fraction(1, 90000)
        out.append(f)
    return out


def rtp(
    encoder: object, frames: list[av.VideoFrame], keys: set[int]
) -> list[tuple[int, int, bool, bytes]]:
    """(seq, timestamp, marker, payload) packets as a sender would send them."""
    packets, seq = [], 100
    for i, f in enumerate(frames):
        payloads, _ = encoder.encode(f, force_keyframe=i in keys)  # type: ignore[attr-defined]
        for j, p in enumerate(payloads):
            packets.append((seq % 65536, i * 3000, j == len(payloads) - 1, p))
            seq += 1
    return packets


def test_sizes_from_headers() -> None:
    for w, h in ((320, 240), (1920, 1080), (642, 362)):
        (f,) = video(1, w, h)
        vp8 = b"".join(vp8_depayload(p) for p in Vp8Encoder().encode(f, True)[0])
        avc = b"".join(h264_depayload(p) for p in H264Encoder().encode(f, True)[0])
        assert vp8_size(vp8) == (w, h) and h264_size(avc) == (w, h)
    assert vp8_size(b"\x01" * 20) is None and h264_size(b"\x00\x00\x01\x41") is None


def test_reassembly_in_order_out_of_order_and_with_loss() -> None:
    packets = rtp(Vp8Encoder(), video(12, 640, 480), keys={0, 8})
    whole = FrameAssembler("VP8", 90000, vp8_depayload)
    frames = [f for p in packets for f in whole.push(*p)]
    assert [f.timestamp for f in frames] == [i * 3000 for i in range(12)]
    assert [f.keyframe for f in frames] == [i in (0, 8) for i in range(12)]
    # Swapped packets (a NACK repair arriving late) still give every frame, in order.
    shuffled = list(packets)
    shuffled[3], shuffled[6] = shuffled[6], shuffled[3]
    again = FrameAssembler("VP8", 90000, vp8_depayload)
    assert [f.data for p in shuffled for f in again.push(*p)] == [f.data for f in frames]
    # A packet lost for good: that frame and those after it wait for the next keyframe.
    lost_at = next(i for i, p in enumerate(packets) if p[1] == 3 * 3000)
    lossy = FrameAssembler("VP8", 90000, vp8_depayload, window=0.05)
    got = [f for p in packets[:lost_at] + packets[lost_at + 1 :] for f in lossy.push(*p)]
    assert [f.timestamp // 3000 for f in got] == [0, 1, 2, 8, 9, 10, 11]
    assert lossy.dropped >= 5


@pytest.mark.parametrize("codec", ["VP8", "H264", "OPUS"])
def test_track_files_play_and_open_no_encoder(tmp_path: Path, codec: str) -> None:
    path = tmp_path / ("t.mkv" if codec == "H264" else "t.webm")
    if codec == "OPUS":
        tf, opus, sent = TrackFile(path, codec, 48000), OpusEncoder(), []
        for i in range(50):
            a = av.AudioFrame.from_ndarray(
                np.zeros((1, 1920), np.int16), format="s16", layout="stereo"
            )
            a.sample_rate, a.pts, a.time_base = 48000, i * 960, fractions.Fraction(1, 48000)
            payload = opus.encode(a)[0][0]
            sent.append(payload)
            from teleconsult.recording.frames import Frame

            tf.write(Frame(payload, i * 960, True), i * 0.02)
    else:
        from teleconsult.recording.frames import Frame

        dep = vp8_depayload if codec == "VP8" else h264_depayload
        enc = Vp8Encoder() if codec == "VP8" else H264Encoder()
        tf, sent = TrackFile(path, codec, 90000), []
        for i, f in enumerate(video(30)):
            data = b"".join(dep(p) for p in enc.encode(f, i == 0)[0])
            sent.append(data)
            tf.write(Frame(data, i * 3000, i == 0), i / 30)
    assert tf.stream is not None and not tf.stream.codec_context.is_open  # muxed, never encoded
    tf.close()
    with av.open(str(path)) as c:
        got = [bytes(p) for p in c.demux() if p.size]
    with av.open(str(path)) as c:
        decoded = list(c.decode(c.streams[0]))
    assert len(got) == len(sent)
    if codec != "H264":  # Matroska keeps H.264 length-prefixed, not in Annex B
        assert got == sent
    assert len(decoded) >= len(sent) - 1
    assert tf.duration == pytest.approx(29 / 30 if codec != "OPUS" else 49 * 960 / 48000)
    # Closed cleanly, the file says how long it is (players show it and seek by its cues).
    with av.open(str(path)) as c:
        assert c.duration is not None
        assert c.duration / 1e6 == pytest.approx(tf.duration, abs=0.05)


def test_a_track_file_goes_on_across_a_new_source_and_a_new_size(tmp_path: Path) -> None:
    from teleconsult.recording.frames import Frame

    path = tmp_path / "t.webm"
    tf = TrackFile(path, "VP8", 90000)
    enc = Vp8Encoder()
    for i, f in enumerate(video(10, 640, 480)):
        tf.write(
            Frame(
                b"".join(vp8_depayload(p) for p in enc.encode(f, i == 0)[0]),
                5000 + i * 3000,
                i == 0,
            ),
            i / 30,
        )
    # Another simulcast layer takes over at its keyframe: smaller, its clock elsewhere, and
    # 0.5 s on by arrival (its first timestamp is the same as the last frame's).
    small = Vp8Encoder()
    for i, f in enumerate(video(10, 320, 240)):
        data = b"".join(vp8_depayload(p) for p in small.encode(f, i == 0)[0])
        tf.write(Frame(data, 5000 + 9 * 3000 + i * 3000, i == 0), 9 / 30 + 0.5 + i / 30, i == 0)
    tf.close()
    assert (tf.width, tf.height) == (640, 480)  # the largest
    assert [s[1:] for s in tf.sizes] == [(640, 480), (320, 240)]
    assert tf.sizes[1][0] == pytest.approx(9 / 30 + 0.5, abs=0.01)
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    assert [(f.width, f.height) for f in frames] == [(640, 480)] * 10 + [(320, 240)] * 10
    times = [float(f.time or 0) for f in frames]
    assert all(b > a for a, b in itertools.pairwise(times))
    assert times[10] - times[9] == pytest.approx(0.5, abs=0.01)


def test_h264_reassembly_finds_access_units_and_waits_after_loss() -> None:
    packets = rtp(H264Encoder(), video(10, 640, 480), keys={0, 6})
    whole = FrameAssembler("H264", 90000, h264_depayload)
    frames = [f for p in packets for f in whole.push(*p)]
    assert [f.timestamp // 3000 for f in frames] == list(range(10))
    assert [f.keyframe for f in frames] == [i in (0, 6) for i in range(10)]
    assert (
        frames[0].data.startswith(b"\x00\x00\x00\x01\x67")
        or b"\x00\x00\x01\x67" in frames[0].data[:8]
    )
    # Lose the first packet of frame 2: frames 2-5 must not be written, 6 starts again.
    first_of_2 = next(i for i, p in enumerate(packets) if p[1] == 2 * 3000)
    lossy = FrameAssembler("H264", 90000, h264_depayload, window=0.05)
    got = [f for p in packets[:first_of_2] + packets[first_of_2 + 1 :] for f in lossy.push(*p)]
    assert [f.timestamp // 3000 for f in got] == [0, 1, 6, 7, 8, 9]


@pytest.mark.parametrize("codec", ["VP8", "H264"])
@settings(max_examples=5, deadline=None, phases=[Phase.explicit, Phase.generate])
@given(
    seq0=st.integers(0, 65535),
    frames_before_ts_wrap=st.integers(0, 2000),
    depth=st.integers(0, 12),
    dup=st.sampled_from([0.0, 0.05]),
    seed=st.integers(0, 2**32),
)
# Found by this test in a full run: the clock wraps between the first two frames, and the
# first frame's first packet arrives late; the recording was empty (frames were ordered from
# the smallest timestamp held, which was the second frame's).
@example(seq0=26387, frames_before_ts_wrap=1, depth=8, dup=0.05, seed=92468)
# And: the second frame whole before any packet of the first (a keyframe) came; the first was
# refused for being older than a frame already given up while waiting for a keyframe.
@example(seq0=64709, frames_before_ts_wrap=1, depth=12, dup=0.05, seed=1063497603)
def test_reassembly_across_both_wraps_with_reordering_and_duplicates(
    codec: str, seq0: int, frames_before_ts_wrap: int, depth: int, dup: float, seed: int
) -> None:
    # 20,000 frames of 3 packets: 60,000 sequence numbers from anywhere, and the RTP clock
    # crosses 2**32 too; each frame's bytes name it, so what comes out can be checked.
    rng = random.Random(seed)
    ts0 = (1 << 32) - 3000 * frames_before_ts_wrap
    packets = []
    for n in range(20_000):
        key = n % 300 == 0
        for part in range(3):
            body = struct.pack("!IB", n, part)
            if codec == "VP8":
                head = bytes([0x10, 0x00 if key else 0x01]) if part == 0 else b"\x00"
            else:
                head = bytes([0x67 if key and part == 0 else 0x41])
            seq = (seq0 + 3 * n + part) % 65536
            packets.append((seq, (ts0 + 3000 * n) % (1 << 32), part == 2, head + body))
    arrivals = sorted(
        (k + rng.random() * depth, p)
        for k, p in enumerate(packets)
        for _ in range(2 if rng.random() < dup else 1)
    )
    assembler = FrameAssembler(codec, 90000, lambda payload: payload)
    out = [f for _, p in arrivals for f in assembler.push(*p)]
    names = [struct.unpack_from("!I", f.data, len(f.data) - 5)[0] for f in out]
    # H.264 marks no first packet: if the very first frame's first packet comes late, nothing
    # tells the frame is not whole, and the file starts at the next keyframe. After that, and
    # for VP8 always, every frame comes out once, in order.
    first = names[0]
    assert first == 0 or (codec == "H264" and depth > 0 and first % 300 == 0)
    assert names == list(range(first, 20_000))
    assert [f.timestamp for f in out] == [(ts0 + 3000 * n) % (1 << 32) for n in names]
    assert assembler.dropped <= first


async def test_disk_queue_writes_in_order_off_the_loop() -> None:
    errors: list[OSError] = []
    disk = DiskQueue("test", errors.append)
    done: list[int] = []
    threads: set[str] = set()

    def job(i: int) -> None:
        threads.add(threading.current_thread().name)
        done.append(i)

    for i in range(1000):
        assert disk.put(lambda i=i: job(i), 10)  # type: ignore[misc]
    disk.close()
    assert not disk.put(lambda: job(-1))  # closed: refused
    assert await disk.finished(5)
    assert done == list(range(1000)) and threads == {"test"} and disk.waiting == 0
    assert errors == []


async def test_disk_queue_refuses_a_backlog_and_stops_at_the_first_failure() -> None:
    errors: list[OSError] = []
    disk = DiskQueue("test", errors.append, limit=100)
    gate = threading.Event()
    disk.put(lambda: gate.wait(5), 60)
    assert not disk.put(lambda: None, 60)  # 120 bytes would wait: the disk is behind
    assert len(errors) == 1 and isinstance(errors[0], DiskBehind)
    assert not disk.put(lambda: None, 1)  # and stays refused: the recording has failed
    gate.set()
    disk.close()
    assert await disk.finished(5) and len(errors) == 1

    errors.clear()
    disk = DiskQueue("test", errors.append)
    ran: list[int] = []

    def full() -> None:
        raise OSError(28, "No space left on device")

    disk.put(lambda: ran.append(1))
    disk.put(full)
    disk.put(lambda: ran.append(3))  # after a failed write nothing more is written
    disk.close()
    assert await disk.finished(5)
    await asyncio.sleep(0)  # the failure is told on the loop
    assert ran == [1] and [e.errno for e in errors] == [28]


async def test_disk_queue_still_finishes_files_after_a_failure() -> None:
    errors: list[OSError] = []
    disk = DiskQueue("test", errors.append)
    ran: list[str] = []

    def fail() -> None:
        raise OSError(27, "File too large")

    disk.put(fail)
    disk.put(lambda: ran.append("frame"))
    disk.put(lambda: ran.append("close"), finishing=True)  # cues, the last manifest
    disk.close()
    assert await disk.finished(5)
    await asyncio.sleep(0)
    assert ran == ["close"] and len(errors) == 1
    assert not disk.put(lambda: ran.append("late"), finishing=True)  # closed: nothing more


def test_an_audio_track_silent_for_a_while_plays_for_its_whole_span(tmp_path: Path) -> None:
    from teleconsult.recording.frames import Frame

    path = tmp_path / "a.webm"
    tf, opus = TrackFile(path, "OPUS", 48000), OpusEncoder()
    tone = (np.sin(np.arange(960) * 2 * np.pi * 440 / 48000) * 8000).astype(np.int16)
    for i in [*range(25), *range(125, 150)]:  # half a second, 2 s of nothing, half a second
        a = av.AudioFrame.from_ndarray(np.repeat(tone, 2)[None, :], format="s16", layout="stereo")
        a.sample_rate, a.pts, a.time_base = 48000, i * 960, fractions.Fraction(1, 48000)
        tf.write(Frame(opus.encode(a)[0][0], i * 960, True), i * 0.02)
    tf.close()
    assert tf.duration == pytest.approx(149 * 0.02)
    with av.open(str(path)) as c:
        packets = [p for p in c.demux(audio=0) if p.size]
    with av.open(str(path)) as c:
        samples = [f.to_ndarray() for f in c.decode(audio=0)]
    # Packets cover the span back to back (as a browser plays them), the gap filled silent.
    assert len(packets) == 150
    pts = [int(p.pts or 0) for p in packets]
    steps = {float((b - a) * packets[0].time_base) for a, b in itertools.pairwise(pts)}
    assert steps == {0.02}
    assert np.abs(samples[60]).max() < 0.01 and np.abs(samples[140]).max() > 0.05
