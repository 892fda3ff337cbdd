"""Several server processes sharing a real redis-server: placement, relay, node loss, Redis loss."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from teleconsult.client.media import MediaClient
from teleconsult.client.signaling import JoinRefused, RequestFailed, SignalingClient
from teleconsult.cluster.redis_store import RedisStore
from teleconsult.session.roles import Role
from teleconsult.signaling.tokens import mint

from .conftest import ADMIN_KEY, SECRET, annotation, server_process
from .media_util import PatternTrack, ToneTrack, receive
from .redis_server import RedisServer
from .test_held_frame import hold, probe_jpeg
from .test_media_port import free_port

TTL = "1.5"


class Node:
    """One `teleconsult serve --redis` process."""

    def __init__(self, name: str, port: int, proc: subprocess.Popen[bytes], data: Path) -> None:
        self.name, self.port, self.proc, self.data = name, port, proc, data

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def client(self, room: str, role: Role, identity: str, ttl: float = 3600) -> SignalingClient:
        token = mint(SECRET, room, role, identity, ttl, identity)
        return SignalingClient(self.ws, token, room)


@contextlib.contextmanager
def node(tmp_path: Path, redis: RedisServer, name: str, *more: str) -> Iterator[Node]:
    data = tmp_path / name
    extra = ("--redis", redis.url, "--node", name, "--node-ttl", TTL, "--admin-key", ADMIN_KEY)
    with server_process(data, *extra, *more) as (port, proc):
        yield Node(name, port, proc, data)


def api(n: Node, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """Call a node's admin API."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{n.port}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        text: str = r.read().decode()
        return text


def cli(*args: str) -> str:
    exe = str(Path(sys.executable).parent / "teleconsult")
    done = subprocess.run([exe, *args], capture_output=True, text=True, timeout=30, check=True)
    return done.stdout


def nodes(redis: RedisServer) -> dict[str, dict[str, Any]]:
    data: dict[str, dict[str, Any]] = json.loads(cli("nodes", "--redis", redis.url, "--json"))
    return data


async def until(check: object, timeout: float = 10.0, seen: object = None) -> None:
    """Wait (bounded) until a condition holds; `seen()` says what was there instead."""
    assert callable(check)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"timed out waiting: {seen() if callable(seen) else ''}"
        await asyncio.sleep(0.1)


def tracks(redis: RedisServer) -> dict[str, tuple[int, int]]:
    """Each node's up and down tracks, as its latest heartbeat reported them."""
    return {k: (int(n["up_tracks"]), int(n["down_tracks"])) for k, n in nodes(redis).items()}


async def journaled(redis: RedisServer, room: str, count: int, timeout: float = 10.0) -> None:
    """Wait (bounded) until a room's log in Redis holds at least `count` entries."""
    store = RedisStore(redis.url)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(await store.log(room)) < count:
            assert loop.time() < deadline, "timed out waiting for the journal"
            await asyncio.sleep(0.05)
    finally:
        await store.close()


async def registered(redis: RedisServer, room: str, session: str, timeout: float = 10.0) -> None:
    """Wait (bounded) until a recorded session is in the cluster's registry."""
    store = RedisStore(redis.url)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while session not in {e["session_id"] for e in await store.recordings(room)}:
            assert loop.time() < deadline, "timed out waiting for the registry"
            await asyncio.sleep(0.05)
    finally:
        await store.close()


async def join(
    made: list[SignalingClient | MediaClient], n: Node, room: str, role: Role, identity: str
) -> SignalingClient:
    """Join a room through a node; the client is closed with the others at the end."""
    c = n.client(room, role, identity)
    made.append(c)
    await c.connect()
    return c


@contextlib.asynccontextmanager
async def clients() -> AsyncIterator[list[SignalingClient | MediaClient]]:
    made: list[SignalingClient | MediaClient] = []
    try:
        yield made
    finally:
        for c in reversed(made):
            await c.close()


async def test_clients_on_two_nodes_share_one_room(tmp_path: Path, redis: RedisServer) -> None:
    with node(tmp_path, redis, "a") as a, node(tmp_path, redis, "b") as b:
        async with clients() as made:
            op = await join(made, a, "ward-3", Role.OPERATOR, "op")
            ex = b.client("ward-3", Role.EXPERT, "ex")  # reaches the other node
            made.append(ex)
            await ex.connect()
            assert {p["identity"] for p in ex.welcome["participants"]} == {"op", "ex"}
            # Each is given the TURN server of the node its media is on.
            turn_op, turn_ex = (c.welcome["ice_servers"][0]["urls"] for c in (op, ex))
            assert turn_op != turn_ex and all("127.0.0.1" in u for u in turn_op + turn_ex)
            # Media published through one node is decoded by a client of the other.
            media_op, media_ex = MediaClient(op), MediaClient(ex)
            made += [media_op, media_ex]
            stream = await media_op.publish([(PatternTrack(), "probe", "Ultrasound")])
            added = await ex.wait_for("stream_added")
            feed = added["stream"]["feeds"][0]["id"]
            sub = await media_ex.subscribe(stream.id)
            frames = await receive(sub.tracks[feed], 20)
            assert frames[-1].width == 320

            metrics_a, metrics_b = await asyncio.gather(
                asyncio.to_thread(get, f"http://127.0.0.1:{a.port}/metrics"),
                asyncio.to_thread(get, f"http://127.0.0.1:{b.port}/metrics"),
            )
            assert "teleconsult_cluster_relayed 1.0" in metrics_a
            assert "teleconsult_cluster_piped 1.0" in metrics_b
            assert "teleconsult_cluster_legs_in 1.0" in metrics_b
            health = json.loads(await asyncio.to_thread(get, f"http://127.0.0.1:{b.port}/healthz"))
            assert health["node"] == "b" and health["cluster_nodes"] == 2
            # Annotations and chat cross the nodes both ways, in one order.
            drawn = await ex.request(annotation("arrow", "a1", feed, [[0.1, 0.1], [0.5, 0.5]]))
            seen = await op.wait_for("op", where=lambda e: e.get("id") == "a1")
            assert seen["seq"] == drawn["seq"] and seen["author"] == ex.participant_id
            said = await op.request({"type": "chat", "text": "Probe a little lower."})
            heard = await ex.wait_for("op", where=lambda e: e.get("op") == "chat")
            assert heard["seq"] == said["seq"] == drawn["seq"] + 1
            # A held frame (larger than any other message) crosses the relay whole.
            jpeg = probe_jpeg(width=1280, height=720)
            mine = await ex.request(hold(feed, jpeg))
            shown = await op.wait_for("frame_held")
            assert shown["id"] == mine["id"] and base64.b64decode(shown["image"]) == jpeg
            # A bad message through the relay gets its code; the connection goes on.
            await ex.send_raw("{not json")
            assert (await ex.wait_for("error"))["code"] == "bad_json"
            await ex.send_raw(b"\x00")
            assert (await ex.wait_for("error"))["code"] == "binary_not_supported"
            assert (await ex.request({"type": "chat", "text": "still here"}))["seq"] > 0
            # A flood through the relay is limited like any other; the connection goes on.
            for _ in range(600):
                await ex.send({"type": "ping", "ts": 1})
            assert (await ex.wait_for("error", timeout=10))["code"] == "rate_limited"
            await asyncio.sleep(2.5)  # the bucket refills
            assert (await ex.request({"type": "chat", "text": "after the flood"}))["seq"] > 0


async def test_placement_spreads_rooms_and_drain_stops_new_ones(
    tmp_path: Path, redis: RedisServer
) -> None:
    with node(tmp_path, redis, "a") as a, node(tmp_path, redis, "b") as b:
        await until(lambda: set(nodes(redis)) == {"a", "b"})
        async with clients() as made:
            for i in range(4):  # every room joined through node a
                await join(made, a, f"room-{i}", Role.EXPERT, f"u{i}")
                await asyncio.sleep(0.6)  # a heartbeat reports the new load
            await until(lambda: sum(int(n["rooms"]) for n in nodes(redis).values()) == 4)
            rooms = {name: n["rooms"] for name, n in nodes(redis).items()}
            # Both nodes took rooms (exact shares follow CPU as well as counts).
            assert rooms["a"] >= 1 and rooms["b"] >= 1, rooms
            out = cli("drain", "b", "--redis", redis.url)
            assert "draining" in out
            await until(lambda: nodes(redis)["b"]["draining"] is True)
            for i in range(4, 6):  # through node b, yet placed on a
                await join(made, b, f"room-{i}", Role.EXPERT, f"u{i}")
            await until(lambda: sum(int(n["rooms"]) for n in nodes(redis).values()) == 6)
            after = {name: n["rooms"] for name, n in nodes(redis).items()}
            assert after == {"a": rooms["a"] + 2, "b": rooms["b"]}, (rooms, after)
            # An upgrade script waits for b's last room to end.
            exe = str(Path(sys.executable).parent / "teleconsult")
            waiting = [exe, "drain", "b", "--redis", redis.url, "--wait", "1"]
            done = await asyncio.to_thread(subprocess.run, waiting, capture_output=True, timeout=30)
            assert done.returncode == 1  # b still has rooms
            status, listed = await asyncio.to_thread(api, a, "GET", "/api/rooms")
            for room in listed["rooms"]:
                if room["node"] == "b":
                    status, _ = await asyncio.to_thread(
                        api, a, "DELETE", f"/api/rooms/{room['id']}"
                    )
                    assert status == 200
            waiting[-1] = "10"
            done = await asyncio.to_thread(subprocess.run, waiting, capture_output=True, timeout=30)
            assert done.returncode == 0, done.stdout
            cli("drain", "b", "--undo", "--redis", redis.url)
            assert nodes(redis)["b"]["draining"] is False
            listing = cli("nodes", "--redis", redis.url)
            assert "a" in listing and "open" in listing


async def test_a_killed_host_hands_its_room_to_another_node(
    tmp_path: Path, redis: RedisServer
) -> None:
    with node(tmp_path, redis, "a") as a, node(tmp_path, redis, "b") as b:
        async with clients() as made:
            status, _ = await asyncio.to_thread(
                api, a, "POST", "/api/rooms", {"id": "ward-3", "title": "Thyroid, clinic 4"}
            )
            assert status == 201
            mod = await join(made, a, "ward-3", Role.MODERATOR, "mod")  # the room opens on node a
            aud = await join(made, b, "ward-3", Role.AUDIENCE, "student")
            student = aud.participant_id
            op = await join(made, b, "ward-3", Role.OPERATOR, "op")
            media_op = MediaClient(op)
            made.append(media_op)
            await media_op.publish([(PatternTrack(), "camera", "Room")])
            feed = (await mod.wait_for("stream_added"))["stream"]["feeds"][0]["id"]
            await mod.send({"type": "grant", "participant": student, "annotate": True})
            await aud.wait_for("granted")
            await mod.request(annotation("ellipse", "e1", feed, [[0.3, 0.3], [0.5, 0.4]]))
            await mod.request({"type": "chat", "text": "Note the hypoechoic area."})
            last = await aud.request(annotation("arrow", "s1", feed, [[0.2, 0.2], [0.3, 0.3]]))
            await mod.send({"type": "record", "action": "start"})
            session_id = (await aud.wait_for("recording", where=lambda e: e["active"]))[
                "session_id"
            ]
            await journaled(redis, "ward-3", last["seq"])
            # The manifest is registered a moment after the start: the kill comes after it.
            await registered(redis, "ward-3", session_id)

            os.kill(a.proc.pid, signal.SIGKILL)
            a.proc.wait(5)
            # The client piped through b is told to reconnect once a's heartbeat expires.
            assert await aud.wait_closed(timeout=10) == 1012
            again = await join(made, b, "ward-3", Role.AUDIENCE, "student")
            channel = again.welcome["channel"]
            assert again.participant_id == student  # the same participant
            assert again.welcome["room"]["title"] == "Thyroid, clinic 4"
            assert again.welcome["you"]["may_annotate"] is True  # the grant still holds
            assert {s["id"] for s in channel["annotations"]} == {"e1", "s1"}
            assert [m["text"] for m in channel["chat"]] == ["Note the hypoechoic area."]
            assert channel["seq"] >= last["seq"]
            # The room goes on where it stopped, on b.
            more = await again.request({"type": "chat", "text": "Lower gain, please."})
            assert more["seq"] > channel["seq"] - 1
            await until(lambda: nodes(redis)["b"]["rooms"] == 1)
            assert "a" not in nodes(redis)
            # The recording goes on as the next segment of the same session.
            rec = again.welcome["recording"]
            assert rec["active"] is True and rec["session_id"] == session_id
            manifest = b.data / "recordings" / "ward-3" / f"{session_id}-s2" / "manifest.json"
            await until(manifest.is_file)
            data = json.loads(manifest.read_text())
            assert (data["session_id"], data["segment"]) == (session_id, 2)
            # Both segments are listed (once the journal has them); the first one's node is
            # gone with its disk.
            both = {session_id: None, f"{session_id}-s2": session_id}
            for _ in range(100):
                status, listed = await asyncio.to_thread(api, b, "GET", "/api/recordings/ward-3")
                assert status == 200
                found = {s["session_id"]: s.get("segment_of") for s in listed["sessions"]}
                if found == both:
                    break
                await asyncio.sleep(0.1)
            assert found == both, found
            status, err = await asyncio.to_thread(
                api, b, "GET", f"/api/recordings/ward-3/{session_id}"
            )
            assert status == 503 and err["error"]["code"] == "node_unreachable"


async def test_redis_restart_mid_session(tmp_path: Path, redis: RedisServer) -> None:
    with node(tmp_path, redis, "a") as a, node(tmp_path, redis, "b") as b:
        async with clients() as made:
            op = a.client("ward-3", Role.OPERATOR, "op")
            ex = a.client("ward-3", Role.EXPERT, "ex")
            made += [op, ex]
            await op.connect()
            await ex.connect()
            media_op, media_ex = MediaClient(op), MediaClient(ex)
            made += [media_op, media_ex]
            stream = await media_op.publish([(PatternTrack(), "probe", "Ultrasound")])
            added = await ex.wait_for("stream_added")
            sub = await media_ex.subscribe(stream.id)
            track = sub.tracks[added["stream"]["feeds"][0]["id"]]
            await receive(track, 5)
            before = await ex.request({"type": "chat", "text": "before the restart"})

            redis.stop()
            # Media keeps flowing and the room keeps working while Redis is away.
            frames = await receive(track, 30)
            assert len(frames) == 30
            during = await ex.request({"type": "chat", "text": "while Redis is away"})
            assert during["seq"] == before["seq"] + 1
            redis.start()

            # Nodes re-register; what was written before, and what waited, is all there.
            await until(lambda: set(nodes(redis)) == {"a", "b"}, timeout=15)
            after = await ex.request({"type": "chat", "text": "after the restart"})
            assert after["seq"] == during["seq"] + 1
            store = RedisStore(redis.url)
            try:
                for _ in range(50):
                    log = [e["text"] for e in await store.log("ward-3") if e.get("op") == "chat"]
                    if len(log) == 3:
                        break
                    await asyncio.sleep(0.1)
            finally:
                await store.close()
            assert log == ["before the restart", "while Redis is away", "after the restart"]
            # A client reaching the other node still finds the room where it is.
            late = await join(made, b, "ward-3", Role.AUDIENCE, "late")
            assert len(late.welcome["channel"]["chat"]) == 3
            await receive(track, 5)


@pytest.mark.parametrize("shared", [False, True])
async def test_a_room_spans_nodes_with_one_leg_per_edge_node(
    tmp_path: Path, redis: RedisServer, shared: bool
) -> None:
    # Shared: each node's clients on its one media port, as behind a hospital firewall; the
    # legs between nodes keep ports of their own (their addresses would not tell them apart).
    def port() -> tuple[str, ...]:
        return ("--media-port", str(free_port())) if shared else ()

    with (
        node(tmp_path, redis, "a", *port()) as a,
        node(tmp_path, redis, "b", *port()) as b,
        node(tmp_path, redis, "c", *port()) as c,
    ):
        await until(lambda: set(nodes(redis)) == {"a", "b", "c"})
        async with clients() as made:
            op = await join(made, a, "conf", Role.OPERATOR, "op")
            media_op = MediaClient(op)
            made.append(media_op)
            source = PatternTrack()
            stream = await media_op.publish([(source, "laparoscope", "Scope")])
            viewers = []
            for i, edge in enumerate([b, b, b, c, c]):
                v = await join(made, edge, "conf", Role.AUDIENCE, f"student-{i}")
                m = MediaClient(v)
                made.append(m)
                viewers.append(m)
            subs = await asyncio.gather(*(m.subscribe(stream.id) for m in viewers))
            feed = f"{stream.id}.0"
            # Every viewer decodes the moving picture.
            for sub in subs:
                frames = await receive(sub.tracks[feed], 15)
                assert frames[-1].width == 320
            # The origin sends one copy to each edge node, which fans out to its viewers.
            spread = {"a": (1, 2), "b": (1, 3), "c": (1, 2)}
            await until(lambda: tracks(redis) == spread, seen=lambda: tracks(redis))
            # A late viewer on an edge gets a picture quickly: its keyframe request went
            # upstream through the edge to the publisher.
            late = await join(made, c, "conf", Role.AUDIENCE, "late")
            media_late = MediaClient(late)
            made.append(media_late)
            loop = asyncio.get_running_loop()
            started = loop.time()
            sub = await media_late.subscribe(stream.id)
            await receive(sub.tracks[feed], 1)
            assert loop.time() - started < 1.5
            # Nobody on c watches any more: c closes its leg, a stops sending there.
            for m, s in [(viewers[3], subs[3]), (viewers[4], subs[4]), (media_late, sub)]:
                await m.unsubscribe(s.id)
            narrowed = {"a": (1, 1), "b": (1, 3), "c": (0, 0)}
            await until(lambda: tracks(redis) == narrowed, timeout=25, seen=lambda: tracks(redis))
            frames = await receive(subs[0].tracks[feed], 10)  # b's viewers go on
            assert frames[-1].width == 320
            # The publisher stops: viewers on every node are told, the legs close.
            await media_op.unpublish(stream.id)
            for m in viewers:
                gone = await m.signaling.wait_for("stream_removed")
                assert gone["stream_id"] == stream.id
            closed = {"a": (0, 0), "b": (0, 0), "c": (0, 0)}
            await until(lambda: tracks(redis) == closed, seen=lambda: tracks(redis))


async def test_a_voice_published_on_another_node_is_told_speaking_to_the_room(
    tmp_path: Path, redis: RedisServer
) -> None:
    """The microphone's node hears it speak; the room's host tells everyone."""
    with node(tmp_path, redis, "a") as a, node(tmp_path, redis, "b") as b:
        await until(lambda: set(nodes(redis)) == {"a", "b"})
        async with clients() as made:
            listener = await join(made, a, "board", Role.AUDIENCE, "student")  # a hosts it
            expert = await join(made, b, "board", Role.EXPERT, "dr-b")
            media = MediaClient(expert)
            made.append(media)
            await media.publish([(ToneTrack(0.1), "microphone", "")])
            told = await listener.wait_for("speaking", timeout=10)
            assert told["participant_id"] == expert.participant_id and told["speaking"]


async def test_the_admin_api_of_any_node_reaches_every_room(
    tmp_path: Path, redis: RedisServer
) -> None:
    with node(tmp_path, redis, "a") as a, node(tmp_path, redis, "b") as b:
        await until(lambda: set(nodes(redis)) == {"a", "b"})
        async with clients() as made:
            busy = a.client("busy", Role.EXPERT, "x")  # a carries a room: b is less loaded
            made.append(busy)
            await busy.connect()
            await asyncio.sleep(1.0)
            status, room = await asyncio.to_thread(
                api,
                a,
                "POST",
                "/api/rooms",
                {"id": "tumour-board", "title": "Board", "lobby": True},
            )
            assert status == 201 and room["id"] == "tumour-board"
            # Every node lists every room, with the node that hosts it.
            status, listed = await asyncio.to_thread(api, b, "GET", "/api/rooms")
            where = {r["id"]: r["node"] for r in listed["rooms"]}
            assert where == {"busy": "a", "tumour-board": "b"}, where
            table = await asyncio.to_thread(
                cli, "rooms", "--server", f"http://127.0.0.1:{a.port}", "--admin-key", ADMIN_KEY
            )
            rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
            assert rows["tumour-board"][3] == "b" and rows["busy"][3] == "a", table
            status, _ = await asyncio.to_thread(
                api, a, "POST", "/api/rooms", {"id": "tumour-board"}
            )
            assert status == 409  # exists, on the other node
            mod = await join(made, a, "tumour-board", Role.MODERATOR, "chair")
            status, people = await asyncio.to_thread(
                api, a, "GET", "/api/rooms/tumour-board/participants"
            )
            assert status == 200 and [p["identity"] for p in people["participants"]] == ["chair"]
            # Ended through the node that does not host it: refused on every node afterwards.
            status, ended = await asyncio.to_thread(api, a, "DELETE", "/api/rooms/tumour-board")
            assert status == 200 and ended["ended"] is True
            assert await mod.wait_closed(timeout=10) == 4011
            await asyncio.sleep(0.3)
            for n in (a, b):
                late = n.client("tumour-board", Role.EXPERT, "late")
                made.append(late)
                with pytest.raises(JoinRefused) as refused:
                    await late.connect()
                assert refused.value.code == "room_ended"
                status, err = await asyncio.to_thread(
                    api,
                    n,
                    "POST",
                    "/api/rooms/tumour-board/tokens",
                    {"role": "expert", "name": "x"},
                )
                assert status == 410 and err["error"]["code"] == "room_ended"


async def test_a_link_revoked_on_one_node_is_cut_and_refused_on_all(
    tmp_path: Path, redis: RedisServer
) -> None:
    with node(tmp_path, redis, "a") as a, node(tmp_path, redis, "b") as b:
        await until(lambda: set(nodes(redis)) == {"a", "b"})
        async with clients() as made:
            host = await join(made, a, "ward-3", Role.EXPERT, "host-side")
            leaked = mint(SECRET, "ward-3", Role.EXPERT, "dr-wu", 3600, "dr-wu")
            c = SignalingClient(a.ws, leaked, "ward-3")
            made.append(c)
            await c.connect()
            status, body = await asyncio.to_thread(
                api, b, "POST", "/api/tokens/revoke", {"token": leaked}
            )
            assert status == 200 and body["revoked"] is True
            assert await c.wait_closed(timeout=10) == 4001
            for n in (a, b):
                again = SignalingClient(n.ws, leaked, "ward-3")
                made.append(again)
                with pytest.raises(JoinRefused) as refused:
                    await again.connect()
                assert refused.value.code == "token_revoked"
            assert (await host.request({"type": "chat", "text": "go on"}))["seq"] >= 1


async def test_a_recording_made_on_one_node_is_replayed_through_another(
    tmp_path: Path, redis: RedisServer
) -> None:
    with node(tmp_path, redis, "a") as a, node(tmp_path, redis, "b") as b:
        async with clients() as made:
            mod = await join(made, a, "teaching", Role.MODERATOR, "mod")
            media = MediaClient(mod)
            made.append(media)
            await media.publish([(PatternTrack(), "camera", "Room")])
            await mod.send({"type": "record", "action": "start"})
            started = await mod.wait_for("recording", where=lambda e: e["active"])
            await asyncio.sleep(2.0)
            await mod.send({"type": "record", "action": "stop"})
            await mod.wait_for("recording", where=lambda e: not e["active"])
            session = started["session_id"]
            for _ in range(100):  # until the registry in Redis has it
                status, listed = await asyncio.to_thread(api, b, "GET", "/api/recordings")
                assert status == 200
                entries = [s for s in listed["sessions"] if s["session_id"] == session]
                if entries:
                    break
                await asyncio.sleep(0.1)
            (entry,) = entries
            assert entry["node"] == "a" and entry["tracks"] == 1
            status, manifest = await asyncio.to_thread(
                api, b, "GET", f"/api/recordings/teaching/{session}"
            )
            assert status == 200 and manifest["tracks"][0]["frames"] > 30
            link = manifest["links"][manifest["tracks"][0]["file"]]
            assert link.startswith(f"http://127.0.0.1:{a.port}/")  # straight to the files

            def fetch() -> tuple[bytes, str | None]:
                with urllib.request.urlopen(link, timeout=10) as r:
                    return r.read(), r.headers.get("Access-Control-Allow-Origin")

            data, cors = await asyncio.to_thread(fetch)
            assert data[:4] == b"\x1a\x45\xdf\xa3" and cors == "*"  # a WebM (EBML) file
            # The access was audited on the node that was asked.
            audit = (b.data / "audit.jsonl").read_text()
            assert '"recording_access"' in audit


async def test_a_node_stopped_for_an_upgrade_hands_its_rooms_over(
    tmp_path: Path, redis: RedisServer
) -> None:
    with node(tmp_path, redis, "a") as a, node(tmp_path, redis, "b") as b:
        async with clients() as made:
            ex = await join(made, a, "ward-3", Role.EXPERT, "ex")  # the room is on a
            aud = await join(made, b, "ward-3", Role.AUDIENCE, "aud")
            cli("drain", "a", "--redis", redis.url)
            await aud.request({"type": "raise_hand", "raised": True})
            last = await ex.request({"type": "chat", "text": "the last word before the upgrade"})
            a.proc.terminate()  # SIGTERM at once: nothing may be lost
            # The audience is on b, piped to a: b relays a's 1001, or, when it sees a gone
            # before that frame arrives (under load), closes with 1012 itself. Both say
            # "reconnect" (docs/protocol.md); what matters is what the reconnect finds.
            assert await aud.wait_closed(timeout=15) in (1001, 1012)
            a.proc.wait(15)
            again = await join(made, b, "ward-3", Role.AUDIENCE, "aud")
            chat = again.welcome["channel"]["chat"]
            assert [m["text"] for m in chat] == ["the last word before the upgrade"]
            assert again.welcome["channel"]["seq"] >= last["seq"]
            assert again.participant_id == aud.participant_id
            # The node stopping is not the student lowering the hand.
            assert [h["author"] for h in again.welcome["channel"]["hands"]] == [aud.participant_id]
            await until(lambda: nodes(redis).get("b", {}).get("rooms") == 1)


async def test_operations_acknowledged_while_the_host_stops_are_all_kept(
    tmp_path: Path, redis: RedisServer
) -> None:
    with node(tmp_path, redis, "a") as a, node(tmp_path, redis, "b") as b:
        async with clients() as made:
            op = await join(made, a, "ward-5", Role.OPERATOR, "op")  # the room is on a
            ex = await join(made, b, "ward-5", Role.EXPERT, "ex")  # piped through b
            stream = MediaClient(op)
            made.append(stream)
            feed = (await stream.publish([(PatternTrack(), "camera", "")])).feeds["0"]
            acked: list[dict[str, Any]] = []

            async def draw() -> None:
                for i in range(400):  # until the host stops taking them
                    message = annotation("arrow", f"x{i}", feed, [[0.1, 0.1], [0.2, 0.2]])
                    try:
                        acked.append(await ex.request(message, timeout=3))
                    except (ConnectionError, TimeoutError, RequestFailed):
                        return

            drawing = asyncio.ensure_future(draw())
            await until(lambda: len(acked) >= 10)
            a.proc.terminate()
            assert await ex.wait_closed(timeout=15) == 1001
            assert await op.wait_closed(timeout=15) == 1001
            await drawing
            a.proc.wait(15)
            # One reconnect, to the node that is left: the room is there with every operation
            # anyone was told was done.
            again = await join(made, b, "ward-5", Role.EXPERT, "ex")
            assert again.participant_id == ex.participant_id
            kept = {s["id"] for s in again.welcome["channel"]["annotations"]}
            assert {m["id"] for m in acked} <= kept, sorted({m["id"] for m in acked} - kept)
            assert again.welcome["channel"]["seq"] >= max(m["seq"] for m in acked)
            after = await again.request({"type": "chat", "text": "after the move"})
            assert after["seq"] > max(m["seq"] for m in acked)


async def test_a_node_that_froze_hands_over_the_room_that_moved_on(
    tmp_path: Path, redis: RedisServer
) -> None:
    with node(tmp_path, redis, "a") as a, node(tmp_path, redis, "b") as b:
        async with clients() as made:
            stuck = await join(made, a, "ward-3", Role.EXPERT, "ex")
            said = await stuck.request({"type": "chat", "text": "before the freeze"})
            await journaled(redis, "ward-3", said["seq"])
            os.kill(a.proc.pid, signal.SIGSTOP)  # a long pause: a is taken for dead
            try:
                await until(lambda: "a" not in nodes(redis), timeout=10)
                op = await join(made, b, "ward-3", Role.OPERATOR, "op")  # the room goes on on b
                await op.request({"type": "chat", "text": "on b meanwhile"})
            finally:
                os.kill(a.proc.pid, signal.SIGCONT)
            # a comes back, finds the room on b and sends its people there.
            assert await stuck.wait_closed(timeout=10) == 1012
            back = await join(made, b, "ward-3", Role.EXPERT, "ex")
            texts = [m["text"] for m in back.welcome["channel"]["chat"]]
            assert texts == ["before the freeze", "on b meanwhile"]
            assert back.participant_id == stuck.participant_id
            await until(lambda: nodes(redis).get("a", {}).get("rooms") == 0)


async def test_the_publish_tool_rides_out_the_loss_of_the_rooms_node(
    tmp_path: Path, redis: RedisServer
) -> None:
    with node(tmp_path, redis, "a") as a, node(tmp_path, redis, "b") as b:
        async with clients() as made:
            ex = a.client("ward-3", Role.EXPERT, "ex")  # the room opens on a
            made.append(ex)
            await ex.connect()
            exe = str(Path(sys.executable).parent / "teleconsult")
            token = mint(SECRET, "ward-3", Role.OPERATOR, "Station 4", 3600, "station-4")
            station = await asyncio.create_subprocess_exec(
                exe,
                "publish",
                "--server",
                f"http://127.0.0.1:{b.port}",
                "--room",
                "ward-3",
                "--token",
                token,
                "--synthetic",
                "--size",
                "320x240",
                "--duration",
                "60",
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            try:
                assert station.stdout is not None
                first = json.loads(await asyncio.wait_for(station.stdout.readline(), 30))
                os.kill(a.proc.pid, signal.SIGKILL)
                a.proc.wait(5)
                # Nobody touches the station: it reconnects through b and publishes again.
                second = json.loads(await asyncio.wait_for(station.stdout.readline(), 30))
                assert second["published"] != first["published"]
                viewer = await join(made, b, "ward-3", Role.EXPERT, "ex")
                assert [s["id"] for s in viewer.welcome["streams"]] == [second["published"]]
                media = MediaClient(viewer)
                made.append(media)
                sub = await media.subscribe(second["published"])
                frames = await receive(sub.tracks[f"{second['published']}.0"], 10)
                assert frames[-1].width == 320
            finally:
                station.terminate()
                await asyncio.wait_for(station.wait(), 10)
