"""A stream far longer than half the sequence space, through the real server: frames decode to the
end (every subscriber froze 32,768 packets after its start, issue 12)."""

from __future__ import annotations

import asyncio
import fractions
import inspect
import time
from typing import Any

import aiortc.rtcrtpsender
import av
import numpy as np
import pytest
from aiortc.codecs.vpx import MAX_BITRATE, Vp8Encoder, vp8_depayload
from aiortc.utils import random32

import teleconsult.media.tracks as media_tracks
from teleconsult.client.media import MediaClient
from teleconsult.media import stamp
from teleconsult.media.synthetic import UltrasoundTrack
from teleconsult.session.roles import Role

from .conftest import Server
from .media_util import PacketTrack

PAST_START = 40_000
SEQ_START = 65536 - 500  # the publisher's numbering wraps after 500 packets
TS_START = (1 << 32) - 90000 * 3  # and its RTP clock after 3 seconds


def keyframes(count: int, width: int, height: int) -> list[bytes]:
    """Distinct stamped pictures, each a keyframe (a fresh encoder's first frame), ~20 packets."""
    source = UltrasoundTrack(width, height, 30)
    out = []
    for n in range(count):
        img = source.picture(n, n)
        frame = av.VideoFrame.from_ndarray(img, format="gray").reformat(format="yuv420p")
        frame.pts, frame.time_base = 0, fractions.Fraction(1, 90000)
        encoder = Vp8Encoder()
        encoder.target_bitrate = MAX_BITRATE
        payloads, _ = encoder.encode(frame, force_keyframe=True)
        out.append(b"".join(vp8_depayload(p) for p in payloads))
    return out


class NearTheWrap:
    """Stands in for `random` in media.tracks: each subscriber's numbering starts near its wraps."""

    @staticmethod
    def randrange(n: int) -> int:
        return (1 << 16) - 700 if n == 1 << 15 else (1 << 32) - 90000 * 2


def publisher_origin() -> int:
    # aiortc draws SSRCs and the RTP clock origin from the same function: only the clock's,
    # drawn in the sender's packet loop, is set.
    caller = inspect.currentframe()
    assert caller is not None and caller.f_back is not None
    return TS_START if caller.f_back.f_code.co_name == "_run_rtp" else random32()


async def test_frames_decode_40000_packets_past_a_start_below_the_wrap(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aiortc.rtcrtpsender, "random_sequence_number", lambda: SEQ_START)
    monkeypatch.setattr(aiortc.rtcrtpsender, "random32", publisher_origin)
    monkeypatch.setattr(media_tracks, "random", NearTheWrap)
    frames = keyframes(30, 1280, 720)
    per_frame = sum(len(f) // 1200 + 1 for f in frames) / len(frames)
    rate = 60.0
    assert per_frame * rate * 55 > PAST_START, "the source is too slow for the test"

    op = MediaClient(await server.join(role=Role.OPERATOR, identity="op", name="op"))
    ex = MediaClient(await server.join(role=Role.EXPERT, identity="ex", name="ex"))
    try:
        track = PacketTrack("video", frames, rate, 90000)
        stream = await op.publish([(track, "probe", "")])
        sub = await ex.subscribe(stream.id)
        received = sub.tracks[f"{stream.id}.0"]
        decoded: list[tuple[float, int]] = []  # (arrival, stamped frame number)

        async def decode() -> None:
            while True:
                frame: Any = await received.recv()
                read = stamp.read(frame.to_ndarray(format="gray"))
                decoded.append((time.monotonic(), -1 if read is None else read[1]))

        decoding = asyncio.ensure_future(decode())
        up = server.hub.sfu.ups[stream.id].tracks["0"]
        start = time.monotonic()
        for _ in range(120):  # a minute at most
            if up.receiver.packets >= PAST_START:
                break
            await asyncio.sleep(0.5)
        end = time.monotonic()
        await asyncio.sleep(0.5)
        decoding.cancel()
        down = server.hub.sfu.stats()["down"][0]
    finally:
        await op.close()
        await ex.close()

    assert up.receiver.packets >= PAST_START, f"{up.receiver.packets} packets in 60 s"
    # Pictures decode to the end: every 5 s window has its share, each stamp is readable.
    windows = int((end - start) // 5)
    for w in range(windows):
        lo = start + w * 5
        n = sum(1 for t, _ in decoded if lo <= t < lo + 5)
        assert n >= 0.8 * rate * 5, f"{n} frames decoded in seconds {w * 5}-{w * 5 + 5}"
    stamps = [s for _, s in decoded]
    assert stamps.count(-1) == 0
    assert np.all(np.diff(stamps[-100:]) % 30 == 1), "pictures out of order at the end"
    assert down["packets"] >= up.receiver.packets - 200  # nothing dropped but the first frame
    assert up.stale == 0 and up.epoch == 1
