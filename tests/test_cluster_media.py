"""A cascade leg between two in-process nodes: loss on the leg is repaired by NACK upstream."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from teleconsult.client.media import MediaClient
from teleconsult.session.roles import Role

from .conftest import running_server
from .media_util import (
    PatternTrack,
    ToneTrack,
    bar_position,
    drop_every_fifth,
    receive,
    tone_level,
)
from .redis_server import RedisServer


async def test_loss_on_a_cascade_leg_is_repaired_from_the_origin(
    tmp_path: Path, redis: RedisServer
) -> None:
    async with (
        running_server(tmp_path / "a", redis=redis.url, node="a", node_ttl=1.5) as a,
        running_server(tmp_path / "b", redis=redis.url, node="b", node_ttl=1.5) as b,
    ):
        op = await a.join(role=Role.OPERATOR, identity="op")
        ex = await b.join(role=Role.EXPERT, identity="ex")  # relayed to a; media on b
        pub, sub_client = MediaClient(op), MediaClient(ex)
        try:
            stream = await pub.publish(
                [(PatternTrack(640, 480), "laparoscope", ""), (ToneTrack(), "microphone", "")]
            )
            sub = await sub_client.subscribe(stream.id)
            track = sub.tracks[f"{stream.id}.0"]
            await receive(track, 5)
            # The leg: a's subscription for node b, b's copy of the stream.
            (leg,) = [d for d in a.hub.sfu.downs.values() if d.subscriber_id == "cascade:b"]
            copy = b.hub.sfu.ups[stream.id].tracks["0"]
            assert copy.downs and not b.hub.sfu.ups[stream.id].participant_id.startswith("p-")
            sender = leg.tracks[0].sender
            dropped = drop_every_fifth(sender)  # on the leg between the nodes
            t0 = time.monotonic()
            frames = await receive(track, 90, timeout=10)
            elapsed = time.monotonic() - t0
            assert len(dropped) >= 10
            # The edge asked the origin again (NACK up the leg), and the origin resent.
            assert copy.receiver.nacks_sent > 0
            assert sender.retransmits >= 0.8 * len(dropped)
            assert elapsed < 4.5  # no freeze waiting for a keyframe
            assert len({bar_position(f) for f in frames[-30:]}) >= 25
            # A keyframe request from b's subscriber reached the publisher through a.
            before = a.hub.sfu.ups[stream.id].tracks["0"].plis_sent
            copy._key_throttles.clear()
            copy.request_keyframe()
            for _ in range(50):
                if a.hub.sfu.ups[stream.id].tracks["0"].plis_sent > before:
                    break
                await asyncio.sleep(0.1)
            assert a.hub.sfu.ups[stream.id].tracks["0"].plis_sent > before
            # The voice crosses the leg as redundant audio, unwrapped at b: the subscriber
            # (which does not take RED) hears plain Opus.
            (voice_leg,) = [t for t in leg.tracks if t.up.kind == "audio"]
            assert voice_leg.sender.red is not None
            assert b.hub.sfu.ups[stream.id].tracks["1"].receiver.red is not None
            voice = await receive(sub.tracks[f"{stream.id}.1"], 100, timeout=10)
            assert tone_level(voice[-50:]) > 1000 and voice_leg.sender.red.wrapped > 50
            # A moderator's statistics cover both nodes: the stream, its copy and the leg.
            mod = await b.join(role=Role.MODERATOR, identity="mod")
            for _ in range(100):  # until b has heard a's heartbeat
                if b.hub.cluster is not None and "a" in b.hub.cluster.live:
                    break
                await asyncio.sleep(0.05)
            stats = await mod.request({"type": "get_stats"})
            ups = {(s["node"], s["participant_id"]) for s in stats["up"]}
            assert ups == {("a", op.participant_id), ("b", "cascade:a")}
            downs = {(s["node"], s["subscriber_id"]) for s in stats["down"]}
            assert downs == {("a", "cascade:b"), ("b", ex.participant_id)}
            # Pausing a feed not shown reaches the subscriber's node (its host is a).
            (down,) = b.hub.sfu.downs.values()
            await sub_client.pause(sub.id, True)
            for _ in range(100):
                if down.tracks[0].paused:
                    break
                await asyncio.sleep(0.02)
            assert down.tracks[0].paused
            await sub_client.pause(sub.id, False)
            await receive(track, 10, timeout=5)
            assert not down.tracks[0].paused
        finally:
            await sub_client.close()
            await pub.close()
