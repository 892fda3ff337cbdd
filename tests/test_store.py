"""The store twins pass the same tests; the Redis one against a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from teleconsult.cluster.redis_store import RedisStore
from teleconsult.session.channel import Channel, FeedGeometry
from teleconsult.session.store import MemoryStore, Store

from .redis_server import RedisServer


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port, persistence off, stopped by its PID."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else RedisStore(redis_url)
    try:
        yield s
    finally:
        await s.forget("ward-3", "n1")
        await s.close()


async def test_log_keeps_order_and_rebuilds_the_channel(store: Store) -> None:
    ch = Channel()
    g = FeedGeometry()
    events = [
        ch.draw("p1", {"op": "arrow", "id": "a", "feed": "f", "points": [[0, 0], [1, 1]]}, 1, g),
        ch.say("p2", "c", "question", 2),
        ch.draw(
            "p1", {"op": "stroke", "id": "s", "feed": "f", "points": [[0, 0], [0.5, 0.5]]}, 3, g
        ),
        ch.delete("p1", "a", "d", 4, moderator=False),
    ]
    for e in events:
        await store.append("ward-3", e)
    got = await store.log("ward-3")
    assert got == events
    again = Channel.restore(got)
    assert again.snapshot() == {**ch.snapshot(), "pointers": []}
    assert await store.log("another-room") == []
    await store.forget("ward-3", "n1")
    assert await store.log("ward-3") == []


async def test_a_checkpoint_replaces_the_operations_before_it(store: Store) -> None:
    ch = Channel()
    g = FeedGeometry()
    for i in range(6):
        stroke = {"op": "stroke", "id": f"s{i}", "feed": "f", "points": [[0, 0], [0.5, 0.5]]}
        await store.append("ward-3", ch.draw("p1", stroke, i, g))
        if i == 3:
            await store.compact("ward-3", ch.checkpoint(10))
    kept = await store.log("ward-3")
    assert [e.get("type") for e in kept] == ["checkpoint", "op", "op"]
    assert [e["seq"] for e in kept] == [4, 5, 6]
    again = Channel.restore(kept)
    assert again.snapshot() == {**ch.snapshot(), "pointers": []}


async def test_room_state_and_the_end_of_a_room(store: Store) -> None:
    state = {"people": {"dr-li": {"id": "p-1", "role": "expert"}}, "banned": ["x"]}
    assert await store.load_state("ward-3") is None
    await store.save_state("ward-3", state)
    assert await store.load_state("ward-3") == state
    await store.append("ward-3", {"seq": 1, "op": "chat"})
    assert not await store.was_ended("ward-3")
    await store.forget("ward-3", "n1", ended_for=60)
    assert await store.was_ended("ward-3")
    assert await store.load_state("ward-3") is None and await store.log("ward-3") == []
    # An idle room is forgotten without being refused.
    await store.save_state("ward-5", state)
    await store.forget("ward-5", "n1")
    assert not await store.was_ended("ward-5") and await store.load_state("ward-5") is None


async def test_heartbeats_expire_and_placement_follows_live_nodes(store: Store) -> None:
    from teleconsult.session.placement import Load, choose

    await store.heartbeat("n1", Load(rooms=3, down_tracks=40), 0.5, {"url": "http://a"})
    await store.heartbeat("n2", Load(rooms=1, down_tracks=2), 30, {"url": "http://b"})
    nodes = await store.nodes()
    assert set(nodes) == {"n1", "n2"} and nodes["n1"][1] == {"url": "http://a"}
    loads = {n: load for n, (load, _) in nodes.items()}
    assert choose(loads, "n1") == "n2"  # the least loaded
    # The first claim wins; a second node's claim gets the host back.
    assert await store.claim("ward-3", "n1") == "n1"
    assert await store.claim("ward-3", "n2") == "n1"
    assert await store.host("ward-3") == "n1"
    # Draining takes a node out of placement but leaves its rooms alone.
    await store.drain("n2", True)
    loads = {n: load for n, (load, _) in (await store.nodes()).items()}
    assert loads["n2"].draining and choose(loads, "n2") == "n1"
    await store.drain("n2", False)
    # n1 stops beating: it drops out, and its room may be claimed by a live node.
    for _ in range(100):  # its heartbeat's TTL runs out (in Redis, in real time)
        if set(await store.nodes()) == {"n2"}:
            break
        await asyncio.sleep(0.05)
    assert set(await store.nodes()) == {"n2"}
    assert await store.host("ward-3") is None
    assert await store.claim("ward-3", "n2") == "n2"
    # Only the host's forget releases the placement.
    await store.forget("ward-3", "n1")
    assert await store.host("ward-3") == "n2"
    await store.forget("ward-3", "n2")
    assert await store.host("ward-3") is None
    # A node that stops leaves at once and frees its rooms.
    assert await store.claim("ward-6", "n2") == "n2"
    await store.depart("n2", ["ward-6"])
    assert await store.nodes() == {} and await store.host("ward-6") is None


async def test_revoked_tokens_are_kept_until_they_would_expire(store: Store) -> None:
    import time

    assert not await store.is_revoked("jti-1")
    await store.revoke("jti-1", time.time() + 60)
    await store.revoke("jti-2", time.time() - 1)  # expired already: nothing to keep
    assert await store.is_revoked("jti-1")
    assert not await store.is_revoked("jti-2")
    assert not await store.is_revoked("jti-3")


async def test_the_registry_of_recorded_sessions(store: Store) -> None:
    one = {"session_id": "S1", "room": "ward-3", "node": "a", "stopped_at": None}
    two = {"session_id": "S1-s2", "room": "ward-3", "node": "b", "segment_of": "S1"}
    other = {"session_id": "S9", "room": "ward-4", "node": "a"}
    await store.add_recording("ward-3", "S1", one)
    await store.add_recording("ward-3", "S1-s2", two)
    await store.add_recording("ward-4", "S9", other)
    await store.add_recording("ward-3", "S1", {**one, "stopped_at": 5.0})  # rewritten
    assert await store.recordings("ward-3") == [{**one, "stopped_at": 5.0}, two]
    assert [e["session_id"] for e in await store.recordings()] == ["S1", "S1-s2", "S9"]
    await store.add_recording("ward-3", "S1", None)  # deleted by retention
    await store.add_recording("ward-4", "S9", None)
    assert await store.recordings("ward-3") == [two]
    await store.add_recording("ward-3", "S1-s2", None)


async def test_rooms_do_not_mix(store: Store) -> None:
    await store.append(
        "ward-3",
        {
            "seq": 1,
            "op": "chat",
            "id": "x",
            "author": "p",
            "text": "a",
            "server_ts": 0,
            "type": "op",
        },
    )
    await store.append(
        "ward-4",
        {
            "seq": 1,
            "op": "chat",
            "id": "y",
            "author": "q",
            "text": "b",
            "server_ts": 0,
            "type": "op",
        },
    )
    assert [e["id"] for e in await store.log("ward-3")] == ["x"]
    assert [e["id"] for e in await store.log("ward-4")] == ["y"]
    await store.forget("ward-4", "n1")


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_the_channel_survives_a_server_restart_only_with_redis(
    kind: str, redis_url: str, tmp_path: Path
) -> None:
    from teleconsult.session.roles import Role

    from .conftest import running_server

    options = {"redis": redis_url} if kind == "redis" else {}
    async with running_server(tmp_path, **options) as first:
        c = await first.join(role=Role.EXPERT, identity="ex")
        await c.request({"type": "chat", "text": "Is the node enlarged?"})
        await c.request({"type": "raise_hand", "raised": True})
    async with running_server(tmp_path, **options) as second:  # the node restarted
        c = await second.join(role=Role.EXPERT, identity="ex")
        channel = c.welcome["channel"]
        if kind == "memory":
            assert channel["seq"] == 0 and channel["chat"] == []
            return
        # The chat, the hand, and the hand lowered when the expert left before the stop.
        assert channel["seq"] == 3
        assert [m["text"] for m in channel["chat"]] == ["Is the node enlarged?"]
        assert channel["hands"] == []
        nxt = await c.request({"type": "chat", "text": "Yes, 14 mm."})
        assert nxt["seq"] == 4  # the order goes on where it stopped
        await c.send({"type": "leave"})
    # A room ended on purpose leaves nothing behind in the store.
    async with running_server(tmp_path, **options) as third:
        mod = await third.join(role=Role.MODERATOR, identity="mod")
        assert mod.welcome["channel"]["seq"] == 4
        await mod.send({"type": "end_room"})
        await mod.wait_closed()
    store = RedisStore(redis_url)
    try:
        for _ in range(50):
            if await store.log("r1") == []:
                break
            await asyncio.sleep(0.05)
        assert await store.log("r1") == []
    finally:
        await store.close()


async def test_a_long_session_keeps_a_bounded_log_and_restores_whole(
    redis_url: str, tmp_path: Path
) -> None:
    from teleconsult.session.roles import Role
    from teleconsult.signaling.journal import CHECKPOINT_EVERY

    from .conftest import running_server

    n = 2 * CHECKPOINT_EVERY + 130
    async with running_server(
        tmp_path, redis=redis_url, rate=1e6, burst=1e6, op_rate=1e6, op_burst=1e6
    ) as first:
        c = await first.join("long-1", role=Role.EXPERT, identity="ex")
        for i in range(n):
            await c.request({"type": "chat", "text": f"m{i}"})
        await first.hub.journal_written(10)
        kept = await first.hub.store.log("long-1")
        last = await c.request({"type": "chat", "text": "end"})
    # One checkpoint and what came after it, not the whole session.
    assert kept[0]["type"] == "checkpoint" and kept[0]["seq"] == 2 * CHECKPOINT_EVERY
    assert len(kept) == n - 2 * CHECKPOINT_EVERY + 1
    async with running_server(tmp_path, redis=redis_url) as second:  # another node takes over
        c = await second.join("long-1", role=Role.EXPERT, identity="ex")
        channel = c.welcome["channel"]
        assert channel["seq"] == n + 1 == last["seq"]
        texts = [m["text"] for m in channel["chat"]]
        assert texts == [f"m{i}" for i in range(n - 199, n)] + ["end"]
        await c.send({"type": "leave"})


async def test_a_store_out_of_reach_does_not_stop_the_room(tmp_path: Path) -> None:
    from teleconsult.session.roles import Role

    from .conftest import free_socket, running_server

    sock = free_socket()  # a port where no Redis listens
    dead = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    sock.close()
    async with running_server(tmp_path, redis=dead) as server:
        c = await server.join(role=Role.EXPERT, identity="ex")
        other = await server.join(role=Role.EXPERT, identity="other")
        said = await c.request({"type": "chat", "text": "still here"})
        assert said["seq"] == 1
        assert (await other.wait_for("op"))["text"] == "still here"
