"""The annotation channel through the real server: order, snapshot, resume, limits, rights."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from teleconsult.client.media import MediaClient
from teleconsult.client.signaling import RequestFailed, SignalingClient
from teleconsult.session.roles import Role

from .conftest import Server, annotation
from .media_util import ToneTrack


def stroke(op_id: str, feed: str, n: int = 4, **extra: Any) -> dict[str, Any]:
    return {
        "type": "annotate",
        "op": "stroke",
        "id": op_id,
        "feed": feed,
        "points": [[0.1 + i / 100, 0.2] for i in range(n)],
        "media_ts": 900000,
        **extra,
    }


async def ops_until(c: SignalingClient, count: int, timeout: float = 10) -> list[dict[str, Any]]:
    """Collect `count` ordered operations (type "op") from a client's events."""
    got: list[dict[str, Any]] = []
    while len(got) < count:
        event = await c.wait_for("op", timeout=timeout)
        got.append(event)
    return got


async def test_concurrent_authors_are_seen_in_one_order_by_everyone(
    room: tuple[Server, SignalingClient, str],
) -> None:
    server, op, feed = room
    experts = [await server.join(role=Role.EXPERT, identity=f"ex{i}") for i in range(3)]
    watcher = await server.join(role=Role.AUDIENCE, identity="watcher")

    async def draw(c: SignalingClient, tag: str) -> None:
        for i in range(30):
            await c.send(stroke(f"{tag}-{i}", feed))

    await asyncio.gather(*(draw(c, f"ex{i}") for i, c in enumerate(experts)))
    views = [await ops_until(c, 90) for c in (*experts, watcher, op)]
    orders = [[(e["seq"], e["id"]) for e in view] for view in views]
    assert all(o == orders[0] for o in orders)
    assert [s for s, _ in orders[0]] == list(range(1, 91))
    for i in range(3):  # each author's operations keep the order it sent them in
        mine = [int(x.split("-")[1]) for _, x in orders[0] if x.startswith(f"ex{i}-")]
        assert mine == list(range(30))
    first = views[0][0]
    assert first["feed"] == feed and first["media_ts"] == 900000 and first["server_ts"] > 0


async def test_joiner_gets_a_snapshot(room: tuple[Server, SignalingClient, str]) -> None:
    server, op, feed = room
    ex = await server.join(role=Role.EXPERT, identity="ex")
    aud = await server.join(role=Role.AUDIENCE, identity="aud")
    await ex.send(stroke("s1", feed))
    await ex.send(annotation("ruler", "r1", feed, [[0.1, 0.1], [0.4, 0.5]]))
    await ex.send(stroke("s2", feed))
    await ex.send({"type": "annotate", "op": "delete", "id": "d1", "target": "s2"})
    await ex.send({"type": "annotate", "op": "pointer", "feed": feed, "points": [[0.5, 0.5]]})
    await aud.send({"type": "chat", "id": "c1", "text": "Is that the tendon tear?"})
    await aud.send({"type": "raise_hand", "id": "h1"})
    await ops_until(op, 6)  # the pointer was sent before the last two: it has arrived too
    late = await server.join(role=Role.EXPERT, identity="late")
    ch = late.welcome["channel"]
    assert ch["mode"] == "snapshot" and ch["seq"] == 6
    assert [a["id"] for a in ch["annotations"]] == ["s1", "r1"]
    assert ch["annotations"][1]["length"] == {"value": 0.5, "unit": "frame"}
    assert [p["points"] for p in ch["pointers"]] == [[[0.5, 0.5]]]
    assert [c["text"] for c in ch["chat"]] == ["Is that the tendon tear?"]
    assert [h["author"] for h in ch["hands"]] == [aud.participant_id]


@pytest.mark.parametrize("notice", ["dropped", "replaced"])
async def test_resume_after_a_drop_loses_and_repeats_nothing(
    room: tuple[Server, SignalingClient, str], notice: str
) -> None:
    server, _, feed = room
    ex = await server.join(role=Role.EXPERT, identity="ex")
    viewer = server.client(role=Role.AUDIENCE, identity="viewer")
    await viewer.connect()
    for i in range(5):
        await ex.send(stroke(f"a{i}", feed))
    seen = await ops_until(viewer, 5)
    await ops_until(ex, 5)
    last = seen[-1]["seq"]
    if notice == "dropped":
        await viewer.close()  # the server notices, the viewer leaves
        await ex.wait_for("left")
    # While the viewer is away (or before the server noticed), the room goes on.
    for i in range(7):
        await ex.send(stroke(f"b{i}", feed))
    await ops_until(ex, 7)
    again = SignalingClient(server.ws_url, viewer.token, "r1")
    server.clients.append(again)
    await again.open()
    await again.send(
        {"type": "hello", "version": 1, "token": viewer.token, "room": "r1", "resume": last}
    )
    welcome = await again.wait_for("welcome")
    ch = welcome["channel"]
    assert ch["mode"] == "resume"
    missed = [e["id"] for e in ch["ops"]]
    assert missed == [f"b{i}" for i in range(7)]
    # Live operations continue right after, with no gap and no repeat.
    await ex.send(stroke("c0", feed))
    nxt = await again.wait_for("op")
    assert nxt["id"] == "c0" and nxt["seq"] == ch["seq"] + 1
    assert [e["seq"] for e in seen] + [e["seq"] for e in ch["ops"]] + [nxt["seq"]] == list(
        range(1, 14)
    )


async def test_retry_is_idempotent(room: tuple[Server, SignalingClient, str]) -> None:
    server, op, feed = room
    ex = await server.join(role=Role.EXPERT, identity="ex")
    first = await ex.request(stroke("same", feed))
    again = await ex.request(stroke("same", feed))
    assert again == first and first["seq"] == 1
    await ex.send(stroke("next", feed))
    assert [e["id"] for e in await ops_until(op, 2)] == ["same", "next"]  # once, then the next
    assert server.room().channel.seq == 2
    other = await server.join(role=Role.EXPERT, identity="other")
    with pytest.raises(RequestFailed) as e:
        await other.request(stroke("same", feed))
    assert e.value.code == "duplicate_id"


async def test_permissions(room: tuple[Server, SignalingClient, str]) -> None:
    server, op, feed = room
    mod = await server.join(role=Role.MODERATOR, identity="mod")
    ex = await server.join(role=Role.EXPERT, identity="ex")
    aud = await server.join(role=Role.AUDIENCE, identity="aud")
    with pytest.raises(RequestFailed) as e:
        await aud.request(stroke("x", feed))
    assert e.value.code == "forbidden"
    await ex.request(stroke("mine", feed))
    for message in (
        {"type": "annotate", "op": "clear", "id": "c", "scope": "all"},
        {"type": "annotate", "op": "delete", "id": "d", "target": "mine"},
    ):
        with pytest.raises(RequestFailed) as e:
            await op.request(message)
        assert e.value.code == "forbidden"
    await mod.send({"type": "grant", "participant": aud.participant_id, "annotate": True})
    granted = await aud.wait_for("granted")
    assert granted["may_annotate"] is True
    assert (await aud.request(stroke("now-ok", feed)))["seq"] == 2
    cleared = await mod.request({"type": "annotate", "op": "clear", "id": "all", "scope": "all"})
    assert sorted(cleared["removed"]) == ["mine", "now-ok"]
    audit = [
        json.loads(x)
        for x in (server.hub.settings.data_dir / "audit.jsonl").read_text().splitlines()
    ]
    assert ("annotate", "denied", "aud") in {
        (a["action"], a["outcome"], a["identity"]) for a in audit
    }
    assert any(a["action"] == "grant" and a["target"] == "aud" for a in audit)


BAD_OPS = [
    ({"op": "laser", "id": "x", "points": []}, "unknown_op"),
    ({"op": "arrow", "id": "x", "points": [[0.1, 0.1], [1.2, 0.3]]}, "out_of_range"),
    ({"op": "arrow", "id": "x", "points": [[-0.1, 0.1], [0.2, 0.3]]}, "out_of_range"),
    ({"op": "stroke", "id": "x", "points": [[0.5, 0.5]] * 600}, "too_large"),
    ({"op": "text", "id": "x", "points": [[0.5, 0.5]], "text": "x" * 500}, "too_large"),
    ({"op": "arrow", "id": "x", "points": [[0.1, 0.1]]}, "invalid_op"),
    ({"op": "stroke", "points": [[0.1, 0.1], [0.2, 0.2]]}, "invalid_op"),  # no id
    (
        {"op": "arrow", "id": "x", "points": [[0.1, 0.1], [0.2, 0.2]], "feed": "s-x.0"},
        "no_such_feed",
    ),
    ({"op": "delete", "id": "x", "target": "nothing"}, "no_such_annotation"),
    ({"op": "arrow", "id": "x", "points": "not a list"}, "invalid_field"),
]


@pytest.mark.parametrize(("op", "code"), BAD_OPS, ids=[c for _, c in BAD_OPS])
async def test_bad_operations(
    room: tuple[Server, SignalingClient, str], op: dict[str, Any], code: str
) -> None:
    server, operator, feed = room
    ex = await server.join(role=Role.EXPERT, identity="ex")
    message = {"type": "annotate", "feed": feed, **op}
    await ex.send({**message, "id": op.get("id", "q")} if "id" in op else message)
    err = await ex.wait_for("error")
    assert err["code"] == code, err
    # Nothing was ordered, and the channel goes on for everyone.
    assert server.room().channel.seq == 0
    ok = await ex.request(stroke("fine", feed))
    assert ok["seq"] == 1
    assert (await operator.wait_for("op"))["id"] == "fine"


async def test_pointer_flood_is_limited_and_the_connection_survives(
    room: tuple[Server, SignalingClient, str],
) -> None:
    server, op, feed = room
    ex = await server.join(role=Role.EXPERT, identity="ex")
    for i in range(300):
        await ex.send(
            {"type": "annotate", "op": "pointer", "feed": feed, "points": [[i / 300, 0.5]]}
        )
    err = await ex.wait_for("error")
    assert err["code"] == "rate_limited"
    got = 0
    while True:
        try:
            await op.wait_for("pointer", timeout=1.0)
            got += 1
        except TimeoutError:
            break
    # About a second's worth at 60 Hz was accepted; a reader coalesces what it cannot keep up
    # with, so it sees at most that many, and at least the newest.
    dropped = server.hub.metrics.messages.labels(type="dropped")._value.get()
    assert dropped >= 300 - 60 - 5
    assert 1 <= got <= 61
    assert (await ex.request(stroke("after", feed)))["seq"] == 1


async def test_hand_floor_and_chat(room: tuple[Server, SignalingClient, str]) -> None:
    server, _, _ = room
    mod = await server.join(role=Role.MODERATOR, identity="mod")
    aud = await server.join(role=Role.AUDIENCE, identity="aud")
    raised = await aud.request({"type": "raise_hand", "raised": True})
    assert raised["op"] == "hand" and raised["raised"] is True
    media = MediaClient(aud)
    with pytest.raises(RequestFailed):  # no floor yet: the audience may not speak
        await media.publish([(ToneTrack(), "microphone", "")])
    await mod.send({"type": "grant", "participant": aud.participant_id, "floor": True})
    lowered = await aud.wait_for("op", where=lambda e: e["op"] == "hand")
    assert lowered["raised"] is False and lowered["author"] == aud.participant_id
    await aud.wait_for("granted")
    try:
        stream = await media.publish([(ToneTrack(), "microphone", "Question")])
        assert stream.id in server.room().streams
    finally:
        await media.close()
    said = await aud.request({"type": "chat", "text": "Thank you"})
    assert (await mod.wait_for("op", where=lambda e: e["op"] == "chat"))["seq"] == said["seq"]


def test_slow_reader_gets_the_latest_pointer_and_every_operation(tmp_path: Path) -> None:
    from teleconsult.signaling.config import Secrets, Settings
    from teleconsult.signaling.connection import Connection, _LatestSlot
    from teleconsult.signaling.hub import Hub

    hub = Hub(Settings(data_dir=tmp_path), Secrets("s" * 40, "k"))
    conn = Connection(None, hub)  # type: ignore[arg-type]  # push() never touches the socket
    for i in range(100):
        conn.push({"type": "pointer", "author": "a", "points": [[i / 100, 0]]})
        conn.push({"type": "pointer", "author": "b", "points": [[0, i / 100]]})
        if i % 40 == 0:
            conn.push({"type": "op", "seq": i, "op": "stroke"})
    queued = list(conn.out._queue)  # type: ignore[attr-defined]
    assert [type(x).__name__ for x in queued] == [
        "_LatestSlot",
        "_LatestSlot",
        "dict",
        "dict",
        "dict",
    ]
    assert isinstance(queued[0], _LatestSlot)
    assert conn.latest["pointer:a"]["points"] == [[0.99, 0]]  # only the newest is sent
    assert [x["seq"] for x in queued if isinstance(x, dict)] == [0, 40, 80]


async def test_the_publisher_sets_a_feeds_scale_and_later_rulers_use_it(
    room: tuple[Server, SignalingClient, str],
) -> None:
    server, op, feed = room
    ex = await server.join(role=Role.EXPERT, identity="ex")
    await ex.send(annotation("ruler", "before", feed, [[0.0, 0.0], [0.0, 1.0]]))
    assert (await ops_until(op, 1))[0]["length"]["unit"] == "frame"  # no size was declared
    # Only the feed's publisher sets its scale, on a video feed that exists, to a sane value.
    for who, message, code in (
        (ex, {"feed": feed, "pixel_spacing_mm": 0.1}, "forbidden"),
        (op, {"feed": "s-nope.0", "pixel_spacing_mm": 0.1}, "no_such_feed"),
        (op, {"feed": feed, "pixel_spacing_mm": 0}, "invalid_field"),
        (op, {"feed": feed, "pixel_spacing_mm": 1000}, "invalid_field"),
        (op, {"feed": feed, "pixel_spacing_mm": "deep"}, "invalid_field"),
    ):
        with pytest.raises(RequestFailed) as e:
            await who.request({"type": "set_scale", **message})
        assert e.value.code == code, message
    await op.send({"type": "set_scale", "feed": feed, "pixel_spacing_mm": 0.25})
    changed = await ex.wait_for("feed_changed", timeout=5)
    assert changed["feed"]["id"] == feed and changed["feed"]["pixel_spacing_mm"] == 0.25
    late = await server.join(role=Role.AUDIENCE, identity="late")
    (described,) = late.welcome["streams"][0]["feeds"]
    assert described["pixel_spacing_mm"] == 0.25  # the room keeps it for whoever comes
    await op.send({"type": "set_scale", "feed": feed, "pixel_spacing_mm": None})
    assert (await ex.wait_for("feed_changed", timeout=5))["feed"].get("pixel_spacing_mm") is None
    assert server.room().channel.seq == 1  # a scale is not an operation of the channel


async def test_an_operator_made_expert_no_longer_sends_the_probe(
    room: tuple[Server, SignalingClient, str],
) -> None:
    server, op, feed = room
    viewer = await server.join(role=Role.AUDIENCE, identity="viewer")
    mod = await server.join(role=Role.MODERATOR, identity="mod")
    stream = feed.split(".")[0]
    await mod.send({"type": "set_role", "participant": op.participant_id, "role": "expert"})
    removed = await viewer.wait_for("stream_removed", timeout=5)
    assert removed == {"type": "stream_removed", "stream_id": stream, "reason": "role_changed"}
    assert stream not in server.room().streams
    assert stream not in server.hub.sfu.ups  # its media ended too
