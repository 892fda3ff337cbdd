"""The SFU with real aiortc publishers and subscribers through the real server on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from teleconsult.client.media import MediaClient
from teleconsult.client.signaling import RequestFailed, SignalingClient
from teleconsult.media import aioice_adapter, aiortc_adapter, fastcopy, stamp
from teleconsult.session.roles import Role

from .conftest import Server
from .media_util import (
    PacketTrack,
    PatternTrack,
    ToneTrack,
    bar_position,
    drop_every_fifth,
    receive,
    tone_level,
    vp8_frames,
)


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


@pytest.fixture(params=["compiled", "python"])
def copy_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the compiled per-packet path (media/_fastcopy.c) and with its fallback."""
    if request.param == "python":
        # The name the sender reads, as the fallback sees it when the module was not built.
        monkeypatch.setattr(aiortc_adapter, "FAST", None)
        monkeypatch.setattr(aioice_adapter, "FAST", None)
    else:
        assert fastcopy.FAST is not None, "the compiled path was not built"
    return str(request.param)


def copies_went(server: Server, copy_path: str) -> None:
    """Check that every subscriber's copies took the path under test."""
    for down in server.hub.sfu.downs.values():
        for track in down.tracks:
            wire = track.sender._wire
            assert (wire is not None) == (copy_path == "compiled"), copy_path


async def join(server: Server, peers: list[Peer], role: Role, identity: str) -> Peer:
    p = Peer(await server.join(role=role, identity=identity, name=identity))
    peers.append(p)
    return p


@pytest.mark.parametrize("codec", ["VP8", "H264", "H264/640c1f"])
async def test_video_reaches_every_subscriber_undecoded(
    server: Server, peers: list[Peer], codec: str, copy_path: str
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
        "probe",
        "Ultrasound",
        "video",
        codec.split("/")[0],
    )
    subs = [await p.media.subscribe(stream.id) for p in (ex, aud)]
    for sub in subs:
        frames = await receive(sub.tracks[feed["id"]], 30)
        assert (frames[-1].width, frames[-1].height) == (320, 240)
        # The picture moves as the source's did: consecutive decoded frames differ by a step.
        xs = [bar_position(f) for f in frames[-10:]]
        assert len(set(xs)) >= 8
    up = server.hub.sfu.stats()["up"][0]
    assert up["codec"] == codec.split("/")[0] and up["subscribers"] == 2
    if "/" in codec:  # the subscriber leg negotiated the publisher's profile
        for down in server.hub.sfu.downs.values():
            sender = down.tracks[0].sender
            assert sender.codec is not None
            assert sender.codec.parameters["profile-level-id"] == codec.split("/")[1]
    copies_went(server, copy_path)


async def test_opus_audio_is_heard(server: Server, peers: list[Peer], copy_path: str) -> None:
    ex = await join(server, peers, Role.EXPERT, "ex")
    op = await join(server, peers, Role.OPERATOR, "op")
    stream = await ex.media.publish([(ToneTrack(), "microphone", "Expert voice")])
    sub = await op.media.subscribe(stream.id)
    frames = await receive(sub.tracks[f"{stream.id}.0"], 50)
    assert tone_level(frames[-25:]) > 1000  # a 0.3 full-scale tone, not silence
    copies_went(server, copy_path)


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


# A pre-encoded clip: its sender cannot honour a PLI, and its keyframes are 3 s apart.
GOP_CLIP = vp8_frames(90, keyframe_every=90)


async def test_a_late_joiner_sees_the_live_picture_at_once_though_the_publisher_ignores_pli(
    server: Server, peers: list[Peer]
) -> None:
    op = await join(server, peers, Role.OPERATOR, "op")
    clip = PacketTrack("video", GOP_CLIP, 30, 90000)
    stream = await op.media.publish([(clip, "probe", "")])
    feed = f"{stream.id}.0"
    await asyncio.sleep(0.3)
    waits = []
    for n, phase in enumerate((0.9, 1.8, 2.7)):  # seconds after the clip's keyframe
        assert clip.start is not None
        await asyncio.sleep((phase - (time.monotonic() - clip.start)) % 3.0)
        late = await join(server, peers, Role.AUDIENCE, f"late{n}")
        sub = await late.media.subscribe(stream.id)
        for _ in range(200):  # until ICE and DTLS are up
            if sub.pc.connectionState == "connected":
                break
            await asyncio.sleep(0.005)
        connected = time.monotonic()
        frames = await receive(sub.tracks[feed], 1, timeout=5)
        waits.append(time.monotonic() - connected)
        # It decodes from the keyframe on, every frame whole and in order, up to the live one.
        live = clip.sent[-1][0]
        stamps = [read_stamp(f) for f in frames]
        for _ in range(90):
            if stamps[-1] is None or stamps[-1] >= live - 1:
                break
            frames = await receive(sub.tracks[feed], 1, timeout=2)
            stamps.append(read_stamp(frames[0]))
        assert stamps[0] == 0 and stamps == list(range(len(stamps))), stamps
    print(f"late joiners, connected to first frame: {[round(w, 3) for w in waits]} s")
    # Without the cache it was the wait for the next keyframe: 0.3 to 2.1 s at these phases.
    assert max(waits) < 0.3, waits


def read_stamp(frame: Any) -> int | None:
    """The clip's frame number a decoded picture shows (None when unreadable)."""
    found = stamp.read(frame.to_ndarray(format="gray"))
    return None if found is None else found[1]


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


async def test_loss_on_a_subscriber_leg_is_repaired_by_nack(
    server: Server, peers: list[Peer]
) -> None:
    op = await join(server, peers, Role.OPERATOR, "op")
    ex = await join(server, peers, Role.EXPERT, "ex")
    stream = await op.media.publish([(PatternTrack(640, 480), "probe", "")])
    sub = await ex.media.subscribe(stream.id)
    track = sub.tracks[f"{stream.id}.0"]
    await receive(track, 5)
    sender = next(iter(server.hub.sfu.downs.values())).tracks[0].sender
    dropped = drop_every_fifth(sender)
    t0 = time.monotonic()
    frames = await receive(track, 90, timeout=10)
    elapsed = time.monotonic() - t0
    assert len(dropped) >= 10
    assert sender.retransmits >= 0.8 * len(dropped)
    # 90 frames in about 3 s: the picture kept flowing instead of freezing until a keyframe.
    assert elapsed < 4.5
    xs = [bar_position(f) for f in frames[-30:]]
    assert len(set(xs)) >= 25
    # The subscriber's receiver reports reach its stats: its path's loss, before repair.
    (down,) = server.hub.sfu.stats()["down"]
    assert 0.1 < down["loss"] < 0.3, down


async def test_streams_come_and_go_mid_session(server: Server, peers: list[Peer]) -> None:
    op = await join(server, peers, Role.OPERATOR, "op")
    ex = await join(server, peers, Role.EXPERT, "ex")
    aud = await join(server, peers, Role.AUDIENCE, "aud")
    probe = await op.media.publish([(PatternTrack(), "probe", "")])
    probe_ex = await ex.media.subscribe(probe.id)
    probe_aud = await aud.media.subscribe(probe.id)
    await receive(probe_ex.tracks[f"{probe.id}.0"], 5)
    await receive(probe_aud.tracks[f"{probe.id}.0"], 5)

    # A room camera joins mid-session, without anyone reconnecting.
    camera = await op.media.publish([(PatternTrack(160, 120), "camera", "Room")])
    added = await ex.sig.wait_for("stream_added", where=lambda e: e["stream"]["id"] == camera.id)
    assert added["stream"]["feeds"][0]["source"] == "camera"
    cam_ex = await ex.media.subscribe(camera.id)
    frames = await receive(cam_ex.tracks[f"{camera.id}.0"], 5)
    assert frames[-1].width == 160

    # It goes away again; the subscriber is told and its subscription ends.
    await op.media.unpublish(camera.id)
    gone = await ex.sig.wait_for("stream_removed")
    assert gone == {"type": "stream_removed", "stream_id": camera.id, "reason": "unpublished"}
    ended = await ex.sig.wait_for("unsubscribed")
    assert ended["stream"] == cam_ex.id
    await receive(probe_ex.tracks[f"{probe.id}.0"], 10)  # the probe goes on

    # A subscriber dropping off is noticed by nobody else.
    await aud.sig.close()
    await receive(probe_ex.tracks[f"{probe.id}.0"], 10)
    assert [e for e in ex.sig.drain() if e["type"] in ("stream_removed", "unsubscribed")] == []

    # The publisher leaves: subscribers are told, tracks end cleanly, nothing is left behind.
    await op.sig.send({"type": "leave"})
    gone = await ex.sig.wait_for("stream_removed")
    assert gone["stream_id"] == probe.id and gone["reason"] == "left"
    await ex.sig.wait_for("unsubscribed", where=lambda e: e["stream"] == probe_ex.id)
    for _ in range(50):
        if not server.hub.sfu.ups and not server.hub.sfu.downs:
            break
        await asyncio.sleep(0.1)
    assert not server.hub.sfu.ups and not server.hub.sfu.downs


async def test_moderator_mute_stops_forwarding_the_microphone(
    server: Server, peers: list[Peer]
) -> None:
    mod = await join(server, peers, Role.MODERATOR, "mod")
    ex = await join(server, peers, Role.EXPERT, "ex")
    stream = await ex.media.publish([(ToneTrack(), "microphone", "")])
    sub = await mod.media.subscribe(stream.id)
    await receive(sub.tracks[f"{stream.id}.0"], 10)
    await mod.sig.send({"type": "mute", "participant": ex.sig.participant_id})
    await ex.sig.wait_for("muted")
    before = server.hub.sfu.stats()["down"][0]["packets"]
    await asyncio.sleep(0.5)
    assert server.hub.sfu.stats()["down"][0]["packets"] == before
    await ex.sig.send({"type": "set_muted", "muted": False})
    await mod.sig.wait_for("muted", where=lambda e: e["muted"] is False)
    for _ in range(100):
        if server.hub.sfu.stats()["down"][0]["packets"] > before + 10:
            break
        await asyncio.sleep(0.05)
    assert server.hub.sfu.stats()["down"][0]["packets"] > before + 10


async def test_opus_is_agreed_with_in_band_fec_both_ways(server: Server, peers: list[Peer]) -> None:
    op = await join(server, peers, Role.OPERATOR, "op")
    ex = await join(server, peers, Role.EXPERT, "ex")
    stream = await op.media.publish([(ToneTrack(), "microphone", "")])
    sub = await ex.media.subscribe(stream.id)
    answer, offer = stream.pc.remoteDescription, sub.pc.remoteDescription
    assert answer is not None and offer is not None
    for sdp in (answer.sdp, offer.sdp):
        (fmtp,) = [
            line
            for line in sdp.splitlines()
            if line.startswith("a=fmtp:") and "useinbandfec" in line
        ]
        assert "useinbandfec=1" in fmtp
    await receive(sub.tracks[f"{stream.id}.0"], 20)


async def test_a_feed_not_shown_is_paused_and_resumes_at_a_keyframe(
    server: Server, peers: list[Peer]
) -> None:
    op = await join(server, peers, Role.OPERATOR, "op")
    ex = await join(server, peers, Role.EXPERT, "ex")
    source = PatternTrack()
    stream = await op.media.publish([(source, "probe", "")])
    sub = await ex.media.subscribe(stream.id)
    track = sub.tracks[f"{stream.id}.0"]
    await receive(track, 10)

    def down() -> dict[str, Any]:
        (d,) = server.hub.sfu.stats()["down"]
        return dict(d)

    await ex.media.pause(sub.id, True)  # the tile is hidden
    for _ in range(100):
        if down()["paused"]:
            break
        await asyncio.sleep(0.02)
    before = down()["packets"]
    await asyncio.sleep(0.5)
    assert down()["packets"] == before  # nothing sent while paused
    up = server.hub.sfu.ups[stream.id].tracks["0"]
    keyframes = up.keyframes
    await ex.media.pause(sub.id, False)
    # Shown again: the picture comes back at once from the keyframe held for late joiners,
    # and keeps moving; a fresh keyframe is asked for at once (aiortc's encoder would
    # otherwise send its next one only after 3,000 frames) and comes. The held frames may all
    # be sent before it, so it is waited for (as long as one frame's trip, and then some).
    frames = await receive(track, 10, timeout=5)
    assert bar_position(frames[-1]) != bar_position(frames[0])
    for _ in range(150):
        if up.keyframes > keyframes:
            break
        await asyncio.sleep(0.02)
    assert up.keyframes > keyframes
    assert not down()["paused"] and down()["packets"] > before
    # A subscription or feed that is not the participant's is refused; the rest goes on.
    cases: list[tuple[dict[str, Any], str]] = [
        ({"type": "pause", "stream": "d-nope", "paused": True}, "no_such_stream"),
        ({"type": "pause", "stream": sub.id, "feeds": ["s-x.0"], "paused": True}, "no_such_feed"),
        ({"type": "pause", "stream": sub.id, "paused": "yes"}, "invalid_field"),
    ]
    for msg, code in cases:
        with pytest.raises(RequestFailed) as e:
            await ex.sig.request(msg)
        assert e.value.code == code
    await receive(track, 5)


async def test_moderator_sees_stats_others_do_not(server: Server, peers: list[Peer]) -> None:
    mod = await join(server, peers, Role.MODERATOR, "mod")
    op = await join(server, peers, Role.OPERATOR, "op")
    stream = await op.media.publish([(PatternTrack(), "probe", "")])
    sub = await mod.media.subscribe(stream.id)
    await receive(sub.tracks[f"{stream.id}.0"], 30)
    stats = await mod.sig.request({"type": "get_stats"})
    (up,) = stats["up"]
    assert up["feed"] == f"{stream.id}.0" and up["packets"] > 0 and up["subscribers"] == 1
    (down,) = stats["down"]
    assert down["subscriber_id"] == mod.sig.participant_id and down["packets"] > 0
    with pytest.raises(RequestFailed) as e:
        await op.sig.request({"type": "get_stats"})
    assert e.value.code == "forbidden"


async def test_bad_media_messages_get_codes_and_nothing_breaks(
    server: Server, peers: list[Peer]
) -> None:
    op = await join(server, peers, Role.OPERATOR, "op")
    ex = await join(server, peers, Role.EXPERT, "ex")
    stream = await op.media.publish([(PatternTrack(), "probe", "")])
    sub = await ex.media.subscribe(stream.id)
    track = sub.tracks[f"{stream.id}.0"]
    await receive(track, 5)
    cases: list[tuple[dict[str, Any], str]] = [
        (
            {"type": "publish", "sdp": "not sdp", "feeds": [{"mid": "0", "source": "probe"}]},
            "bad_sdp",
        ),
        ({"type": "publish", "sdp": "x", "feeds": []}, "invalid_field"),
        (
            {"type": "publish", "sdp": "x", "feeds": [{"mid": "0", "source": "x-ray"}]},
            "invalid_field",
        ),
        ({"type": "answer", "stream": "d-unknown", "sdp": "v=0"}, "no_such_stream"),
        ({"type": "answer", "stream": sub.id, "sdp": "v=0"}, "no_such_stream"),  # not op's
        ({"type": "unsubscribe", "stream": "d-unknown"}, "no_such_stream"),
        ({"type": "unpublish", "stream": "s-unknown"}, "no_such_stream"),
        ({"type": "subscribe", "stream": stream.id, "feeds": ["nope"]}, "no_such_feed"),
    ]
    for message, code in cases:
        with pytest.raises(RequestFailed) as e:
            await op.sig.request(message)
        assert e.value.code == code, message
    # A second answer to an answered offer.
    with pytest.raises(RequestFailed) as e:
        await ex.sig.request({"type": "answer", "stream": sub.id, "sdp": "v=0"})
    assert e.value.code == "already_answered"
    # Media and signaling go on for everyone.
    await receive(track, 10)
    assert set(server.hub.sfu.ups) == {stream.id} and len(server.hub.sfu.downs) == 1


async def test_subscriber_bandwidth_estimates_reach_the_publisher(
    server: Server, peers: list[Peer]
) -> None:
    op = await join(server, peers, Role.OPERATOR, "op")
    ex = await join(server, peers, Role.EXPERT, "ex")
    stream = await op.media.publish([(PatternTrack(640, 480), "probe", "")])
    sender = stream.pc.getTransceivers()[0].sender
    told: list[int] = []
    handle = sender._handle_rtcp_packet

    async def watch(packet: object) -> None:
        from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, unpack_remb_fci

        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            told.append(unpack_remb_fci(packet.fci)[0])
        await handle(packet)  # type: ignore[arg-type]

    sender._handle_rtcp_packet = watch  # type: ignore[method-assign]
    sub = await ex.media.subscribe(stream.id)
    up = server.hub.sfu.ups[stream.id].tracks["0"]
    # The subscriber's aiortc receiver estimates its bandwidth (its first REMB comes after a
    # few seconds); the relay passes the aggregate on to the publisher.
    for _ in range(8):
        await receive(sub.tracks[f"{stream.id}.0"], 30, timeout=5)
        if told and up.rates.target(server.hub.now()) is not None:
            break
    (reported,) = [b for b, _ in up.rates._reports.values()]
    assert reported > 0  # the subscriber's estimate reached the up track
    assert told and all(b > 0 for b in told)  # and the publisher was told a target
