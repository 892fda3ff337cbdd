"""The handlers of media messages: publishing, subscribing, and the media's statistics."""

from __future__ import annotations

import asyncio

from teleconsult.media.sfu import MediaError, Sfu, offered_media
from teleconsult.session.roles import Action
from teleconsult.session.streams import Feed, Stream, source_fits_kind

from . import messages as m
from .conn import Conn


async def on_publish(conn: Conn, msg: m.Publish) -> None:
    """Accept a stream of feeds from the participant and announce it to the room."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    media = offered_media(msg.sdp)
    specs = {f.mid: f for f in msg.feeds}
    if set(specs) != {x.mid for x in media} or len(specs) != len(msg.feeds):
        raise MediaError("feeds_mismatch", "feeds must name each media section (mid) once")
    for x in media:
        if not source_fits_kind(specs[x.mid].source, x.kind):
            raise MediaError(
                "feeds_mismatch", f"a {x.kind} track cannot carry {specs[x.mid].source.value}"
            )
    room.check_publish(me.id, [f.source for f in msg.feeds])
    sfu = conn.media
    # New media for a stream kept while its publisher's path was lost (named, or the
    # participant's interrupted stream with these very sources): same stream, same feeds.
    kept = (
        room.stream_of(me.id, msg.stream)
        if msg.stream is not None
        else room.interrupted_stream(me.id, [f.source for f in msg.feeds])
    )
    if kept is not None:
        await _republish(conn, msg, kept)
        return
    stream_id = Sfu.new_id("s")
    feed_ids = {mid: f"{stream_id}.{mid}" for mid in specs}
    answer, codecs = await sfu.publish(stream_id, me.id, msg.sdp, feed_ids)
    if conn.participant is not me or me.id not in room.participants or room.ended:
        await sfu.unpublish(stream_id, "refused")  # left while we negotiated
        return
    if me.muted:
        sfu.mute(me.id, "audio", True)
    conn.push({"type": "answer", "ref": msg.id, "stream": stream_id, "sdp": answer})
    kinds = {x.mid: x.kind for x in media}
    feeds = [
        Feed(
            feed_ids[mid],
            mid,
            kinds[mid],
            spec.source,
            spec.label,
            codecs[mid],
            spec.width,
            spec.height,
            spec.pixel_spacing_mm,
        )
        for mid, spec in specs.items()
    ]
    hub = conn.hub
    node = conn.media_node if hub.cluster is not None else ""
    room.add_stream(Stream(stream_id, me.id, feeds, node))
    if room.recording.active and not hub.plane.in_process(room.streams[stream_id]):
        # The recorder runs in the room's host's own process.
        hub.spawn(hub.recordings.record_remote(room))
    conn.audit("publish", code=",".join(f.source.value for f in feeds), target=stream_id)


async def _republish(conn: Conn, msg: m.Publish, stream: Stream) -> None:
    """Take new media for a kept stream: its subscribers go on from the next keyframe."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    if {f.mid: f.source for f in stream.feeds} != {f.mid: f.source for f in msg.feeds}:
        raise MediaError("feeds_mismatch", "new media for a stream must carry the same feeds")
    if stream.node not in ("", conn.media_node):
        # Its media is on another node than this connection's: it cannot be continued here.
        raise MediaError("feeds_mismatch", "this stream's media is on another node")
    answer, _ = await conn.media.publish(
        stream.id, me.id, msg.sdp, {f.mid: f.id for f in stream.feeds}, replace=True
    )
    if me.muted:
        conn.media.mute(me.id, "audio", True)
    # The media reports the stream live again (Sfu: RESUMED), as it reported it lost.
    conn.push({"type": "answer", "ref": msg.id, "stream": stream.id, "sdp": answer})
    conn.audit("republish", target=stream.id)


async def on_unpublish(conn: Conn, msg: m.Unpublish) -> None:
    """Stop publishing a stream."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    room.stream_of(me.id, msg.stream)
    room.remove_stream(msg.stream, "unpublished")
    await conn.media.unpublish(msg.stream, "unpublished")
    conn.audit("unpublish", target=msg.stream)


async def on_subscribe(conn: Conn, msg: m.Subscribe) -> None:
    """Offer the participant a published stream."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    stream = room.check_subscribe(me.id, msg.stream)
    # Published on another node: cascade it to this client's node first (once per node).
    await conn.hub.plane.pull(conn.media_node, room, stream.id)
    sfu = conn.media
    down_id = Sfu.new_id("d")
    voices = room.config.loudest_voices
    offer, mids = await sfu.subscribe(down_id, me.id, stream.id, msg.feeds, voices)
    if conn.participant is not me or me.id not in room.participants:
        await sfu.unsubscribe(down_id, "unsubscribed")
        return
    me.subscriptions.add(down_id)
    conn.push(
        {
            "type": "offer",
            "ref": msg.id,
            "stream": down_id,
            "of": stream.id,
            "sdp": offer,
            "feeds": [{"mid": mid, "feed": feed} for mid, feed in mids.items()],
        }
    )
    # Who saw which patient feed is part of the audit trail.
    sources = sorted({f.source.value for f in stream.feeds if f.id in mids.values()})
    conn.audit("subscribe", target=stream.id, code=",".join(sources))


async def on_answer(conn: Conn, msg: m.Answer) -> None:
    """Take the participant's answer to a subscription offer."""
    me = conn.participant
    assert me is not None
    if msg.stream not in me.subscriptions:
        raise MediaError("no_such_stream", "no such subscription")
    await conn.media.answer(msg.stream, me.id, msg.sdp)


async def on_unsubscribe(conn: Conn, msg: m.Unsubscribe) -> None:
    """Stop receiving a subscription."""
    me = conn.participant
    assert me is not None
    if msg.stream not in me.subscriptions:
        raise MediaError("no_such_stream", "no such subscription")
    me.subscriptions.discard(msg.stream)
    await conn.media.unsubscribe(msg.stream, "unsubscribed")
    conn.audit("unsubscribe", target=msg.stream)


async def on_pause(conn: Conn, msg: m.Pause) -> None:
    """Stop (or start again) sending feeds of a subscription the participant does not show."""
    me = conn.participant
    assert me is not None
    if msg.stream not in me.subscriptions:
        raise MediaError("no_such_stream", "no such subscription")
    await conn.media.pause(msg.stream, me.id, msg.feeds, msg.paused)


async def on_get_stats(conn: Conn, msg: m.GetStats) -> None:
    """Send a moderator the room's media statistics."""
    room, me = conn.room, conn.participant
    assert room is not None and me is not None
    room.check(me.id, Action.VIEW_STATS)
    hub = conn.hub
    by_node = {hub.node: await hub.plane.stats()}
    if hub.cluster is not None:
        # The room's media may be on every node: ask them all (one that does not answer in
        # time is left out rather than holding the answer).
        others = [n for n in hub.cluster.live if n != hub.node]
        answers = await asyncio.gather(
            *(hub.cluster.call(n, "stats") for n in others), return_exceptions=True
        )
        by_node.update({n: a for n, a in zip(others, answers, strict=True) if isinstance(a, dict)})
    ups, downs = [], []
    for node, stats in by_node.items():
        ups += [{**s, "node": node} for s in stats["up"] if s["stream"] in room.streams]
        downs += [{**s, "node": node} for s in stats["down"] if s["of"] in room.streams]
    conn.push({"type": "stats", "ref": msg.id, "up": ups, "down": downs})
