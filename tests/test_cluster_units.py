"""The cluster's parts: the bus's messages and delivery, merging copies of a frame, placement."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from teleconsult.cluster.bus import (
    RESEND_FOR,
    Bus,
    Call,
    CloseClient,
    Down,
    Gone,
    Message,
    Open,
    Reply,
    Up,
    decode,
    encode,
    fan_in,
)
from teleconsult.session.placement import Load, choose

from .redis_server import RedisServer

frames = st.lists(
    st.tuples(
        st.sampled_from(["edge-1", "edge-2"]),
        st.sampled_from(["x", "y", "z"]),  # clients
        st.sampled_from(["t1", "t2", "t3", "close"]),
    ),
    max_size=40,
)


def delivered(batch: list[tuple[str, Message]]) -> dict[tuple[str, str], list[str]]:
    """What each client of each edge receives, in order."""
    got: dict[tuple[str, str], list[str]] = {}
    for node, msg in batch:
        if isinstance(msg, Down):
            for cid in msg.cids:
                got.setdefault((node, cid), []).append(msg.text)
        else:
            assert isinstance(msg, CloseClient)
            got.setdefault((node, msg.cid), []).append("<close>")
    return got


@given(frames)
def test_merging_keeps_every_clients_frames_in_order(items: list[tuple[str, str, str]]) -> None:
    batch: list[tuple[str, Message]] = [
        (node, CloseClient(cid=cid, code=1000))
        if text == "close"
        else (node, Down(cids=[cid], text=text))
        for node, cid, text in items
    ]
    merged = fan_in(batch)
    assert delivered(merged) == delivered(batch)
    assert len(merged) <= len(batch)


def test_one_event_to_many_clients_of_an_edge_is_one_message() -> None:
    batch: list[tuple[str, Message]] = [
        ("edge-1", Down(cids=[f"c{i}"], text="op-7")) for i in range(15)
    ]
    merged = fan_in(batch)
    assert merged == [("edge-1", Down(cids=[f"c{i}" for i in range(15)], text="op-7"))]


def test_placement_prefers_the_least_loaded_open_node() -> None:
    nodes = {
        "a": Load(rooms=4, down_tracks=30, cpu=40.0),
        "b": Load(rooms=1, down_tracks=2, cpu=3.0),
        "c": Load(rooms=0, draining=True),
    }
    assert choose(nodes, "a") == "b"
    assert choose({"c": Load(draining=True)}, "a") == "a"  # nobody open: serve it here
    assert choose({}, "a") == "a"
    # A tie, or a small difference, goes to the node choosing (its client needs no relay).
    assert choose({"a": Load(), "b": Load()}, "b") == "b"
    assert choose({"a": Load(cpu=0.3), "b": Load(cpu=1.5)}, "b") == "b"
    # A room weighs more than CPU jitter: the next room goes to the other node.
    assert choose({"a": Load(rooms=1), "b": Load()}, "a") == "b"


def test_the_wire_is_the_previous_versions_short_keys() -> None:
    # A cluster is upgraded a node at a time: both versions read each other.
    old = [
        {"k": "open", "c": "c1", "from": "n1", "t": '{"type":"hello"}', "turn": ["turn:x"]},
        {"k": "up", "c": "c1", "t": "{}"},
        {"k": "up", "c": "c1", "b": 1},
        {"k": "gone", "c": "c1"},
        {"k": "down", "c": ["c1", "c2"], "t": "{}"},
        {"k": "close", "c": "c1", "code": 1012, "r": "moved"},
        {"k": "call", "id": "q1", "from": "n2", "m": "stats", "a": {}},
        {"k": "call", "from": "n2", "m": "mute", "a": {"participant_id": "p", "muted": True}},
        {"k": "reply", "id": "q1", "r": [1, 2]},
        {"k": "reply", "id": "q1", "e": ["node_unreachable", "gone"]},
    ]
    kinds = [Open, Up, Up, Gone, Down, CloseClient, Call, Call, Reply, Reply]
    for wire, kind in zip(old, kinds, strict=True):
        message = decode(json.dumps(wire))
        assert type(message) is kind
        again = json.loads(encode(message))
        assert {k: v for k, v in again.items() if v is not False} == {
            k: (bool(v) if k == "b" else v) for k, v in wire.items()
        }
    assert decode(json.dumps(old[2])).binary is True  # type: ignore[union-attr]


@given(st.one_of(st.binary(max_size=64), st.text(max_size=64).map(str.encode)))
def test_what_is_not_a_bus_message_is_refused_cleanly(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode(b'{"k":"down","c":"not-a-list"}' if raw == b"" else raw)


@pytest.fixture
def redis_url(tmp_path: Any) -> Any:
    server = RedisServer(tmp_path)
    server.start()
    yield server.url
    server.stop()


async def test_the_bus_delivers_in_order_and_tells_what_no_node_took(redis_url: str) -> None:
    a_redis, b_redis = aioredis.from_url(redis_url), aioredis.from_url(redis_url)
    got: list[Message] = []
    dropped: list[tuple[str, Message]] = []
    live = {"a", "b", "c"}  # c beats but never listens: a node re-making its bus connection
    a = Bus(a_redis, "a", live, lambda m: None, lambda n, m: dropped.append((n, m)))
    b = Bus(b_redis, "b", live, got.append, lambda n, m: None)
    tasks = [asyncio.create_task(t) for t in (a.send_forever(), b.listen_forever())]
    try:
        for _ in range(50):  # b is subscribed once a message to it is heard
            await a.publish([("b", Gone(cid="probe"))])
            if got:
                break
        got.clear()
        for i in range(1000):
            a.send("b", Up(cid="c1", text=str(i)))
        started = time.monotonic()
        a.send("c", Down(cids=["x"], text="lost"))
        a.send("b", Up(cid="c1", text="after"))
        for _ in range(100):
            if len(got) == 1001 and dropped:
                break
            await asyncio.sleep(0.05)
        assert [m.text for m in got if isinstance(m, Up)] == [*map(str, range(1000)), "after"]
        # What c never heard was sent again for RESEND_FOR, then given up and told.
        assert dropped == [("c", Down(cids=["x"], text="lost"))]
        assert a.dropped == {"down": 1} and a.published >= 1002
        assert time.monotonic() - started >= RESEND_FOR
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await a_redis.aclose()
        await b_redis.aclose()
