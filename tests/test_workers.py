"""Media in worker processes: a room spans them, recordings and stats see through them, and a
worker that dies ends only what it carried."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from teleconsult.client.media import MediaClient
from teleconsult.media import workers as workers_module
from teleconsult.media.aioice_ports import own_ports
from teleconsult.media.workers import IDLE_LEG, Worker, Workers
from teleconsult.session.roles import Role

from .conftest import Server, running_server, server_process, stop
from .media_util import PacketTrack, PatternTrack, ToneTrack, receive, tone_level, vp8_frames
from .test_media_port import free_port
from .test_recording import packets, recording_dir, start_recording

VIEWERS = 8


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with running_server(tmp_path, announce="127.0.0.1", media_workers=2) as srv:
        yield srv


def pool(server: Server) -> Workers:
    workers = server.hub.plane.workers
    assert workers is not None
    return workers


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> set[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(p) for p in text.split()}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_room_spans_both_workers_and_every_viewer_decodes(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Spanning at 4 copies rather than 16 shows it with 8 viewers.
    monkeypatch.setattr(workers_module, "SPAN", 4)
    workers = pool(server)
    op = await server.join(role=Role.OPERATOR, identity="op")
    mod = await server.join(role=Role.MODERATOR, identity="mod")
    viewers = [await server.join(identity=f"v{i}") for i in range(VIEWERS)]
    publisher = MediaClient(op)
    clients = [MediaClient(v) for v in viewers]
    try:
        stream = await publisher.publish(
            [(PatternTrack(), "probe", "Ultrasound"), (ToneTrack(), "microphone", "")]
        )
        # Together, as a room's viewers arrive at a case's start: the first ones make the
        # stream span both workers while the others are still being placed.
        subs = list(await asyncio.gather(*(c.subscribe(stream.id) for c in clients)))
        for sub in subs:
            video = await receive(sub.tracks[f"{stream.id}.0"], 10)
            audio = await receive(sub.tracks[f"{stream.id}.1"], 25)
            assert video[-1].width == 320 and tone_level(audio[-10:]) > 1000
        # The origin took subscribers until it carried SPAN copies more than the other
        # worker; then the stream was brought there too, and the rest went there.
        placed = {workers.downs[s.id].worker.name for s in subs}
        assert placed == {"w0", "w1"}
        loads = [w.load for w in workers.workers]
        assert max(loads) - min(loads) <= 4 + 1.125
        assert len(workers.legs) == 1
        # Both worker processes forward: each spends CPU while the room runs.
        pids = workers.pids()
        assert len(set(pids)) == 2 and os.getpid() not in pids
        before = [cpu_seconds(p) for p in pids]
        await asyncio.sleep(1.0)
        assert all(cpu_seconds(p) > b for p, b in zip(pids, before, strict=True))
        # A moderator's stats show each viewer once, on its worker, and the stream once.
        stats = await mod.request({"type": "get_stats"})
        ups = [u for u in stats["up"] if u["stream"] == stream.id]
        assert sorted(u["kind"] for u in ups) == ["audio", "video"]
        downs = [d for d in stats["down"] if d["of"] == stream.id]
        assert len(downs) == 2 * VIEWERS
        assert {d["worker"] for d in downs} == {"w0", "w1"}
        assert all(d["packets"] > 0 for d in downs)
        # The viewers served by the copy leave: once it has been idle IDLE_LEG, the copy and
        # its leg close, and the others still see the picture.
        (leg,) = workers.legs.values()
        target = leg.target
        assert isinstance(target, Worker)
        away = [i for i, sub in enumerate(subs) if workers.downs[sub.id].worker is target]
        for i in away:
            await viewers[i].send({"type": "unsubscribe", "stream": subs[i].id})
        await until(lambda: all(subs[i].id not in workers.downs for i in away))
        workers.close_idle_copies(time.monotonic())
        assert workers.legs
        workers.close_idle_copies(time.monotonic() + IDLE_LEG)
        await until(lambda: not workers.legs and target.load == 0)
        stay = [i for i in range(VIEWERS) if i not in away]
        for i in stay:
            await receive(subs[i].tracks[f"{stream.id}.0"], 5)
        # The publisher stops: every viewer is told, the counts come back.
        await publisher.unpublish(stream.id)
        for i in stay:
            gone = await viewers[i].wait_for("unsubscribed")
            assert gone["reason"] == "unpublished"
        await until(lambda: not workers.streams and not workers.legs and not workers.downs)
        await until(lambda: all(w.load == 0 for w in workers.workers))
    finally:
        await publisher.close()
        for c in clients:
            await c.close()


async def test_a_recording_takes_its_stream_from_a_worker_frame_for_frame(server: Server) -> None:
    frames = vp8_frames(90, keyframe_every=30)
    op = await server.join(role=Role.OPERATOR, identity="op")
    mod = await server.join(role=Role.MODERATOR, identity="mod")
    media = MediaClient(op)
    try:
        await media.publish([(PacketTrack("video", frames, 30, 90000), "probe", "Ultrasound")])
        await start_recording(mod, op)
        await asyncio.sleep(3.0)
        await mod.send({"type": "record", "action": "stop"})
        await mod.wait_for("recording", where=lambda e: e["active"] is False)
    finally:
        await media.close()
    folder = recording_dir(server)
    (track,) = json.loads((folder / "manifest.json").read_text())["tracks"]
    got = [bytes(p) for p in packets(folder / track["file"])]
    # Brought from the worker to the recorder, the publisher's frames arrive whole, in order.
    first = frames.index(got[0])
    assert first % 30 == 0 and len(got) >= 45
    assert got == [frames[(first + i) % len(frames)] for i in range(len(got))]


@pytest.mark.parametrize("shared", [False, True], ids=["own-ports", "node-port"])
async def test_a_worker_that_dies_ends_what_it_carried_and_is_replaced(
    tmp_path: Path, shared: bool
) -> None:
    # With the node's one media port, the replacement takes its share of it. The clients here
    # are in the server's process: they keep ports of their own (`own_ports`).
    port = {"media_port": free_port()} if shared else {}
    async with running_server(tmp_path, announce="127.0.0.1", media_workers=2, **port) as srv:
        with own_ports():
            await _dies_and_is_replaced(srv)


async def _dies_and_is_replaced(server: Server) -> None:
    workers = pool(server)
    op = await server.join(role=Role.OPERATOR, identity="op")
    viewer = await server.join(identity="ex")
    publisher, watching = MediaClient(op), MediaClient(viewer)
    try:
        stream = await publisher.publish([(PatternTrack(), "probe", "")])
        (origin,) = [w for w in workers.workers if w.ups]
        sub = await watching.subscribe(stream.id)
        await receive(sub.tracks[f"{stream.id}.0"], 5)
        assert not workers.legs  # a small room stays on one worker
        os.kill(origin.proc.pid, signal.SIGKILL)
        removed = await viewer.wait_for("stream_removed", timeout=10)
        assert (removed["stream_id"], removed["reason"]) == (stream.id, "node_lost")
        await until(lambda: workers.restarts == 1)
        assert origin not in workers.workers and all(alive(p) for p in workers.pids())
        # The room, the signaling and the other worker went on: publishing again works, on
        # both workers (the second stream goes to the one the first left least loaded).
        await op.request({"type": "chat", "text": "again"})
        for _ in range(2):
            again = await publisher.publish([(PatternTrack(), "probe", "")])
            sub = await watching.subscribe(again.id)
            frames = await receive(sub.tracks[f"{again.id}.0"], 5)
            assert frames[-1].width == 320
        assert all(w.ups for w in workers.workers)
    finally:
        await publisher.close()
        await watching.close()


async def test_workers_stop_with_the_server_even_when_it_is_killed(tmp_path: Path) -> None:
    for how in (stop, lambda p: p.kill()):
        with server_process(tmp_path, "--media-workers", "2") as (_, proc):
            pid = proc.pid
            await until(lambda: len(children(pid)) == 2)  # noqa: B023 - awaited here
            pids = children(pid)
            assert len(pids) == 2
            how(proc)
            proc.wait(10)
            await until(lambda: not any(alive(p) for p in pids))  # noqa: B023 - awaited here


async def test_a_subscriber_of_a_worker_gets_a_refusal_not_a_hang(server: Server) -> None:
    viewer = await server.join(identity="ex")
    media = MediaClient(viewer)
    try:
        with pytest.raises(Exception) as e:
            await media.subscribe("s-000000000000")
        assert getattr(e.value, "code", None) == "no_such_stream"
    finally:
        await media.close()
