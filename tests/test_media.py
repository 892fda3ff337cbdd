"""The SFU with real aiortc publishers and subscribers through the real server on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from media.client import MediaClient
from session.roles import Role
from signaling.client import RequestFailed, SignalingClient

from .conftest import Server, running_server
from .media_util import PatternTrack, ToneTrack, bar_position, receive, tone_level


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with running_server(tmp_path, announce="127.0.0.1") as srv:
        yield srv


class Peer:
    """A participant with signaling and media."""

    def __init__(self, sig: SignalingClient) -> None:
        self.sig = sig
        self.media = MediaClient(sig)


@pytest.fixture
async def peers(server: Server) -> AsyncIterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for p in made:
        await p.media.close()


async def join(server: Server, peers: list[Peer], role: Role, identity: str) -> Peer:
    p = Peer(await server.join(role=role, identity=identity, name=identity))
    peers.append(p)
    return p


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_video_reaches_every_subscriber_undecoded(
    server: Server, peers: list[Peer], codec: str
) -> None:
    op = await join(server, peers, Role.OPERATOR, "op")
    ex = await join(server, peers, Role.EXPERT, "ex")
    aud = await join(server, peers, Role.AUDIENCE, "aud")
    source = PatternTrack()
    stream = await op.media.publish([(source, "probe", "Ultrasound")], video_codec=codec)
    added = await ex.sig.wait_for("stream_added")
    assert added["stream"]["id"] == stream.id
    feed = added["stream"]["feeds"][0]
    assert (feed["source"], feed["label"], feed["kind"], feed["codec"]) == (
        "probe", "Ultrasound", "video", codec)
    subs = [await p.media.subscribe(stream.id) for p in (ex, aud)]
    for sub in subs:
        frames = await receive(sub.tracks[feed["id"]], 30)
        assert (frames[-1].width, frames[-1].height) == (320, 240)
        # The picture moves as the source's did: consecutive decoded frames differ by a step.
        xs = [bar_position(f) for f in frames[-10:]]
        assert len(set(xs)) >= 8
    up = server.hub.sfu.stats()["up"][0]
    assert up["codec"] == codec and up["subscribers"] == 2


async def test_opus_audio_is_heard(server: Server, peers: list[Peer]) -> None:
    ex = await join(server, peers, Role.EXPERT, "ex")
    op = await join(server, peers, Role.OPERATOR, "op")
    stream = await ex.media.publish([(ToneTrack(), "microphone", "Expert voice")])
    sub = await op.media.subscribe(stream.id)
    frames = await receive(sub.tracks[f"{stream.id}.0"], 50)
    assert tone_level(frames[-25:]) > 1000  # a 0.3 full-scale tone, not silence


async def test_late_joiner_gets_a_picture_within_a_second(
    server: Server, peers: list[Peer]
) -> None:
    op = await join(server, peers, Role.OPERATOR, "op")
    early = await join(server, peers, Role.EXPERT, "early")
    stream = await op.media.publish([(PatternTrack(), "probe", "")])
    first = await early.media.subscribe(stream.id)
    await receive(first.tracks[f"{stream.id}.0"], 10)
    # aiortc's encoder sends a keyframe only every 3,000 frames: a late joiner sees a picture
    # only if the relay asks the publisher for one.
    await asyncio.sleep(1.0)
    late = await join(server, peers, Role.AUDIENCE, "late")
    sub = await late.media.subscribe(stream.id)
    t0 = time.monotonic()
    await receive(sub.tracks[f"{stream.id}.0"], 1, timeout=5)
    assert time.monotonic() - t0 < 1.0
    assert server.hub.sfu.stats()["up"][0]["plis_sent"] >= 1


async def test_publish_permissions(server: Server, peers: list[Peer]) -> None:
    aud = await join(server, peers, Role.AUDIENCE, "aud")
    ex = await join(server, peers, Role.EXPERT, "ex")
    with pytest.raises(RequestFailed) as e:
        await aud.media.publish([(ToneTrack(), "microphone", "")])
    assert e.value.code == "forbidden"
    with pytest.raises(RequestFailed) as e:
        await ex.media.publish([(PatternTrack(), "probe", "")])
    assert e.value.code == "forbidden"
    with pytest.raises(RequestFailed) as e:
        await ex.media.publish([(PatternTrack(), "microphone", "")])
    assert e.value.code == "feeds_mismatch"
    # An expert may publish a camera and talk back.
    await ex.media.publish([(PatternTrack(), "camera", "Expert"), (ToneTrack(), "microphone", "")])
    with pytest.raises(RequestFailed) as e:
        await aud.media.subscribe("s-nonexistent")
    assert e.value.code == "no_such_stream"
    assert not server.hub.sfu.ups.keys() - {s for r in server.hub.rooms.live() for s in r.streams}
