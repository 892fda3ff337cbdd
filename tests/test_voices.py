"""Audio by loudness through the real server: each listener receives the loudest voices only."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from aiortc import RTCPeerConnection

from teleconsult.client.media import MediaClient
from teleconsult.client.signaling import RequestFailed, SignalingClient
from teleconsult.session.roles import Role

from .conftest import Server, running_server
from .media_util import PacketTrack, ToneTrack
from .test_http_api import api
from .test_red import opus_packets

LOUD, LOUDER, QUIET = 0.1, 0.9, 0.0005  # about -20, -1 and -66 dBov


async def received(pc: RTCPeerConnection) -> int:
    """Audio packets a subscription's connection has received."""
    return sum(r.packetsReceived for r in (await pc.getStats()).values() if r.type == "inbound-rtp")


async def lost(pc: RTCPeerConnection) -> int:
    """Audio packets a subscription's connection counts as lost."""
    return sum(r.packetsLost for r in (await pc.getStats()).values() if r.type == "inbound-rtp")


async def heard_over(subs: dict[str, RTCPeerConnection], seconds: float) -> dict[str, int]:
    """Packets each speaker's subscription received over a while."""
    before = {k: await received(pc) for k, pc in subs.items()}
    await asyncio.sleep(seconds)
    return {k: await received(pc) - before[k] for k, pc in subs.items()}


async def test_a_listener_hears_the_three_loudest_and_a_new_speaker_at_once(
    server: Server,
) -> None:
    mod = await server.join(role=Role.MODERATOR, identity="mod")
    tones = {name: ToneTrack(LOUD if name in "abc" else QUIET) for name in "abcde"}
    clients: list[MediaClient] = []
    experts: dict[str, SignalingClient] = {}
    streams: dict[str, str] = {}
    try:
        for name, tone in tones.items():
            experts[name] = await server.join(role=Role.EXPERT, identity=name, name=name)
            media = MediaClient(experts[name])
            clients.append(media)
            streams[name] = (await media.publish([(tone, "microphone", name)])).id
        listener = MediaClient(await server.join(role=Role.AUDIENCE, identity="listener"))
        clients.append(listener)
        subs = {n: (await listener.subscribe(s)).pc for n, s in streams.items()}
        await asyncio.sleep(1.0)
        heard = await heard_over(subs, 1.0)
        # Three speak: their voices come, about 50 packets a second; the quiet ones cost nothing.
        assert all(heard[n] >= 35 for n in "abc"), heard
        assert heard["d"] == heard["e"] == 0, heard
        # Everyone is told who speaks; someone joining is told in the welcome.
        ids = {n: c.participant_id for n, c in experts.items()}
        told = [e for e in mod.drain() if e["type"] == "speaking"]
        assert {(e["participant_id"], e["speaking"]) for e in told} == {
            (ids[n], True) for n in "abc"
        }
        late = await server.join(role=Role.AUDIENCE, identity="late")
        assert {s["participant_id"] for s in late.welcome["speaking"]} == {ids[n] for n in "abc"}

        # A short loud noise on a quiet microphone (100 ms) takes nobody's place.
        tones["d"].bursts = [LOUDER] * 5
        heard = await heard_over(subs, 0.8)
        assert heard["d"] == 0 and all(heard[n] >= 25 for n in "abc"), heard
        assert not [e for e in mod.drain() if e["type"] == "speaking"]  # nobody new speaks

        # A new, louder speaker reaches the listener within 300 ms (here: its first packet).
        before = await received(subs["e"])
        tones["e"].amplitude = LOUDER
        started = time.monotonic()
        waited = 0.0
        while await received(subs["e"]) == before and waited < 3.0:
            await asyncio.sleep(0.01)
            waited = time.monotonic() - started
        assert waited < 0.45, waited  # 300 ms, and room for a loaded test machine
        heard = await heard_over(subs, 1.0)
        assert heard["e"] >= 35 and sum(heard[n] >= 35 for n in "abc") == 2, heard
        told = [e for e in mod.drain() if e["type"] == "speaking"]
        assert [(e["participant_id"], e["speaking"]) for e in told] == [(ids["e"], True)]

        # A moderator's mute forwards nothing; the place goes to another voice.
        silenced = next(n for n in "abc" if heard[n] == 0)
        muted = next(n for n in "abc" if heard[n] > 0)
        target = server.room().by_identity(muted)
        assert target is not None
        await mod.send({"type": "mute", "participant": target.id})
        await asyncio.sleep(0.5)
        heard = await heard_over(subs, 1.0)
        assert heard[muted] == 0 and heard[silenced] >= 35, heard
        told = [e for e in mod.drain() if e["type"] == "speaking"]
        assert [(e["participant_id"], e["speaking"]) for e in told] == [(ids[muted], False)]
        # Voices come and go without a gap in what each listener's stream counts as sent.
        losses = {n: await lost(pc) for n, pc in subs.items()}
        assert all(x <= 2 for x in losses.values()), losses
    finally:
        for c in clients:
            await c.close()


async def test_media_workers_choose_the_voices_and_tell_who_speaks(tmp_path: Path) -> None:
    async with running_server(tmp_path, announce="127.0.0.1", media_workers=2) as server:
        mod = await server.join(role=Role.MODERATOR, identity="mod")
        tones = {name: ToneTrack(LOUD if name in "abcd" else QUIET) for name in "abcde"}
        clients: list[MediaClient] = []
        streams: dict[str, str] = {}
        ids: dict[str, str] = {}
        try:
            for name, tone in tones.items():
                expert = await server.join(role=Role.EXPERT, identity=name, name=name)
                ids[name] = expert.participant_id
                media = MediaClient(expert)
                clients.append(media)
                streams[name] = (await media.publish([(tone, "microphone", name)])).id
            listener = MediaClient(await server.join(role=Role.AUDIENCE, identity="listener"))
            clients.append(listener)
            subs = {n: (await listener.subscribe(s)).pc for n, s in streams.items()}
            # The microphones are published on both workers; the listener's subscriptions all
            # sit on one, which hears every voice and sends the three loudest only.
            workers = server.hub.plane.workers
            assert workers is not None
            assert len({workers.streams[s].origin.name for s in streams.values()}) == 2
            await asyncio.sleep(1.0)
            heard = await heard_over(subs, 1.0)
            assert sum(heard[n] >= 35 for n in "abcd") == 3 and heard["e"] == 0, heard
            assert sum(heard[n] > 0 for n in "abcd") == 3, heard
            # The worker carrying a microphone tells the server, which tells the room.
            told = [e for e in mod.drain() if e["type"] == "speaking"]
            assert {(e["participant_id"], e["speaking"]) for e in told} == {
                (ids[n], True) for n in "abcd"
            }
        finally:
            for c in clients:
                await c.close()


async def test_a_voice_without_audio_levels_is_always_heard(server: Server) -> None:
    """A publisher whose packets carry no RFC 6464 level (pre-encoded Opus here) cannot be
    ranked: it is forwarded, beside the three loudest."""
    clients: list[MediaClient] = []
    try:
        streams = []
        for name in "abcd":
            expert = await server.join(role=Role.EXPERT, identity=name, name=name)
            media = MediaClient(expert)
            clients.append(media)
            streams.append((await media.publish([(ToneTrack(LOUD), "microphone", name)])).id)
        bare = MediaClient(await server.join(role=Role.EXPERT, identity="bare"))
        clients.append(bare)
        frames = opus_packets(50)
        streams.append(
            (await bare.publish([(PacketTrack("audio", frames, 50, 48000), "microphone", "")])).id
        )
        listener = MediaClient(await server.join(role=Role.AUDIENCE, identity="listener"))
        clients.append(listener)
        subs = {s: (await listener.subscribe(s)).pc for s in streams}
        await asyncio.sleep(1.0)
        heard = await heard_over(subs, 1.0)
        assert heard[streams[-1]] >= 35, heard
        assert sum(heard[s] >= 35 for s in streams[:4]) == 3, heard
    finally:
        for c in clients:
            await c.close()


async def test_the_moderator_gives_a_raised_hand_the_floor_and_the_room(server: Server) -> None:
    """Hands queue in the order raised; the first given the floor speaks; muting everyone but
    them leaves listeners hearing that voice alone."""
    mod = await server.join(role=Role.MODERATOR, identity="mod")
    clients: list[MediaClient] = []
    streams: dict[str, str] = {}
    try:
        for name in "ab":
            media = MediaClient(await server.join(role=Role.EXPERT, identity=name, name=name))
            clients.append(media)
            streams[name] = (await media.publish([(ToneTrack(LOUD), "microphone", name)])).id
        asking = {n: await server.join(role=Role.AUDIENCE, identity=n, name=n) for n in "xy"}
        await asking["y"].request({"type": "raise_hand", "raised": True})
        await asking["x"].request({"type": "raise_hand", "raised": True})
        late = await server.join(role=Role.MODERATOR, identity="mod2")
        queue = [h["author"] for h in late.welcome["channel"]["hands"]]
        assert queue == [asking["y"].participant_id, asking["x"].participant_id]
        # Without the floor an audience member may not speak; with it, it may.
        y = MediaClient(asking["y"])
        clients.append(y)
        with pytest.raises(RequestFailed) as refused:
            await y.publish([(ToneTrack(LOUD), "microphone", "y")])
        assert refused.value.code == "forbidden"
        await mod.send({"type": "grant", "participant": asking["y"].participant_id, "floor": True})
        await asking["y"].wait_for("granted")
        streams["y"] = (await y.publish([(ToneTrack(LOUD), "microphone", "y")])).id
        listener = MediaClient(await server.join(role=Role.AUDIENCE, identity="listener"))
        clients.append(listener)
        subs = {n: (await listener.subscribe(s)).pc for n, s in streams.items()}
        await asyncio.sleep(1.0)
        heard = await heard_over(subs, 1.0)
        assert all(heard[n] >= 35 for n in "aby"), heard

        mod.drain()
        await mod.send({"type": "mute_all", "keep": asking["y"].participant_id})
        experts = {p.id for p in server.room().participants.values() if p.identity in ("a", "b")}
        for _ in range(2):  # each expert told muted, once
            event = await mod.wait_for("muted", where=lambda e: e["participant_id"] in experts)
            experts.discard(event["participant_id"])
        assert not experts
        await asyncio.sleep(0.5)
        heard = await heard_over(subs, 1.0)
        assert heard["a"] == heard["b"] == 0 and heard["y"] >= 35, heard
        room = server.room()
        assert not room.participants[asking["y"].participant_id].muted
        assert not room.participants[mod.participant_id].muted
        # An unknown participant to keep is refused, and nobody else is muted by it.
        with pytest.raises(RequestFailed) as bad:
            await mod.request({"type": "mute_all", "keep": "p-000000000000"})
        assert bad.value.code == "no_such_participant"
        assert not room.participants[asking["y"].participant_id].muted
        lines = (server.hub.settings.data_dir / "audit.jsonl").read_text().splitlines()
        audit = [json.loads(line) for line in lines]
        assert [a["target"] for a in audit if a["action"] == "mute_all"] == ["y"]
    finally:
        for c in clients:
            await c.close()


async def test_a_room_sets_how_many_voices_each_listener_hears(server: Server) -> None:
    """A room made to hear one voice forwards the loudest only; a room made to hear all
    forwards every microphone (the node's default is three)."""
    for room_id, voices in (("one-voice", 1), ("all-voices", 0)):
        status, body = await api(
            server, "POST", "/api/rooms", {"id": room_id, "loudest_voices": voices}
        )
        assert status == 201 and body["loudest_voices"] == voices
    status, body = await api(server, "POST", "/api/rooms", {"id": "x", "loudest_voices": -1})
    assert status == 422 and body["error"]["fields"][0]["field"] == "loudest_voices", body
    clients: list[MediaClient] = []
    try:
        for room_id, voices in (("one-voice", 1), ("all-voices", 0)):
            streams = {}
            for name, level in (("a", LOUDER), ("b", LOUD), ("c", LOUD), ("d", LOUD)):
                expert = await server.join(role=Role.EXPERT, identity=name, room=room_id)
                media = MediaClient(expert)
                clients.append(media)
                streams[name] = (await media.publish([(ToneTrack(level), "microphone", "")])).id
            listener = MediaClient(
                await server.join(role=Role.AUDIENCE, identity="listener", room=room_id)
            )
            clients.append(listener)
            subs = {n: (await listener.subscribe(s)).pc for n, s in streams.items()}
            await asyncio.sleep(1.0)
            heard = await heard_over(subs, 1.0)
            if voices == 1:
                assert heard["a"] >= 35 and heard["b"] == heard["c"] == heard["d"] == 0, heard
            else:
                assert all(n >= 35 for n in heard.values()), heard
    finally:
        for c in clients:
            await c.close()
