"""A node that cannot keep up holds back the slowest viewers' video, not everyone's latency."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from teleconsult.media import overload
from teleconsult.media.aiortc_adapter import ForwardingSender
from teleconsult.media.overload import BEHIND, LOAD, WINDOW, Overload
from teleconsult.media.sfu import Sfu
from teleconsult.session.roles import Role

from .conftest import Server
from .media_util import receive
from .test_media import Peer, join, peers  # noqa: F401 - the fixture
from .test_media_process import TELECONSULT


def windows(load: Overload, floors: list[float], copies: int, start: float = 0.0) -> list[int]:
    """Step through windows whose least wait is each of `floors`; return the held counts."""
    out = []
    for i, floor in enumerate(floors):
        load.waited(floor)
        load.waited(floor + 0.2)  # a keyframe's burst in the same window
        out.append(load.step(start + i * WINDOW, copies))
    return out


def test_keyframe_bursts_and_a_one_off_stall_hold_nothing() -> None:
    load = Overload()
    # Every window has a burst that waited 200 ms, but most reads found no queue.
    assert windows(load, [0.0005] * 40, 16) == [0] * 40
    # A slow disk write held the loop once: one window behind, then caught up.
    assert windows(load, [0.3, 0.001, 0.001], 16, start=20.0) == [0, 0, 0]
    assert load.last_worst > 0.2


def test_falling_behind_holds_a_share_at_a_time_and_catching_up_gives_back_one() -> None:
    load = Overload()
    held = windows(load, [0.06] * 5, 30)
    # Two windows behind, then a tenth of the copies still sent, one step's effect awaited.
    assert held == [0, 3, 3, 6, 6]
    # Caught up: one back after RESTORE_AFTER, then one more after as long again.
    t = 5 * WINDOW
    held = windows(load, [0.001] * 40, 30, start=t)
    first_back = held.index(5)
    assert (first_back * WINDOW) >= overload.RESTORE_AFTER
    assert held.count(5) * WINDOW >= overload.RESTORE_AFTER - WINDOW
    assert held[-1] < 5


def test_a_relapse_after_giving_one_back_waits_longer_next_time() -> None:
    load = Overload()
    windows(load, [0.06] * 2, 10)
    assert load.held == 1
    t = 2 * WINDOW
    held = windows(load, [0.001] * 12, 10, start=t)
    assert held[-1] == 0  # given back after RESTORE_AFTER
    t += 12 * WINDOW
    windows(load, [0.06] * 2, 10, start=t)  # and behind again soon after
    assert load.held == 1 and load.restore_after == 2 * overload.RESTORE_AFTER


async def test_an_overloaded_node_holds_the_slowest_viewer_and_the_others_stay_live(
    server: Server,
    peers: list[Peer],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each video copy made to cost 6 ms (as a node with too many viewers for its CPU): four
    # viewers of a 30 frames/s probe (60 packets/s) need 1.4 s of work a second, two 0.7 s.
    # The publisher is its own process, as a scanner is: it does not slow down with the node.
    # The slowest path is held back first; the others keep a live picture; when the load
    # goes, the held one comes back.
    monkeypatch.setattr(overload, "RESTORE_AFTER", 1.0)
    LOAD.__init__()  # type: ignore[misc]
    token = server.token(role=Role.OPERATOR, name="Scanner", identity="op")
    publisher = await asyncio.create_subprocess_exec(
        TELECONSULT, "publish", "--server", server.http, "--room", "r1", "--token", token,
        "--synthetic", "--size", "320x240", "--fps", "30", "--duration", "60",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert publisher.stdout is not None
        assert b"published" in await asyncio.wait_for(publisher.stdout.readline(), 30)
        await overloaded_then_not(server, peers, monkeypatch)
    finally:
        publisher.terminate()
        await publisher.wait()


async def overloaded_then_not(
    server: Server,
    peers: list[Peer],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    viewers = [await join(server, peers, Role.AUDIENCE, f"v{i}") for i in range(4)]
    (stream_id,) = server.room().streams
    subs = [await v.media.subscribe(stream_id) for v in viewers]
    feed = f"{stream_id}.0"
    for sub in subs:
        await receive(sub.tracks[feed], 5)
    by_viewer = {d.subscriber_id: d.tracks[0] for d in server.hub.sfu.downs.values()}
    slow = viewers[2].sig.participant_id
    for pid, dt in by_viewer.items():
        rate = 100_000 if pid == slow else 5_000_000
        monkeypatch.setattr(dt, "path_rate", lambda r=rate: r)

    heavy = {"on": True}
    forward = ForwardingSender.forward

    def costly(self: ForwardingSender, *args: Any) -> None:
        if heavy["on"] and self.codec is not None and self.codec.mimeType.startswith("video"):
            time.sleep(0.006)  # the loop held, as a CPU-bound copy would hold it
        forward(self, *args)

    monkeypatch.setattr(ForwardingSender, "forward", costly)
    await until(lambda: by_viewer[slow].held, 15)
    # Caught up with fewer copies: the wait is bounded again, and the others see frames.
    await until(lambda: LOAD.held and LOAD.last_floor < BEHIND and LOAD.behind == 0, 15)
    assert by_viewer[slow].held
    held = {v.sig.participant_id for v in viewers if by_viewer[v.sig.participant_id].held}
    live = [s for v, s in zip(viewers, subs, strict=True) if v.sig.participant_id not in held]
    assert len(live) >= 2
    for sub in live:
        await receive(sub.tracks[feed], 10, timeout=5)
    load = server.hub.sfu.stats()["load"]
    assert load["queue_wait"] < BEHIND and load["held"] == LOAD.held >= 1
    assert any(d["held"] and d["held_packets"] > 0 for d in server.hub.sfu.stats()["down"])

    heavy["on"] = False
    await until(lambda: LOAD.held == 0, 15)
    # Sent again from a keyframe: the held viewer decodes the live picture.
    await receive(subs[2].tracks[feed], 10, timeout=5)


async def until(condition: Any, seconds: float) -> None:
    """Wait until the condition holds, or fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within the time"
        await asyncio.sleep(0.1)


def test_a_leg_to_another_worker_or_node_is_never_held() -> None:
    # A leg carries every viewer of the stream where it leads: holding it would take the
    # picture from all of them at once, the opposite of holding back the slowest.
    class Track:
        def __init__(self, rate: float) -> None:
            self.up = SimpleNamespace(kind="video")
            self.paused = self.held = False
            self.rate = rate
            self.attached_at = 0.0

        def path_rate(self) -> float:
            return self.rate

        def hold(self, held: bool) -> None:
            self.held = held

    sfu = Sfu()
    leg, slow, fast = Track(1_000.0), Track(100_000.0), Track(5_000_000.0)
    downs: dict[str, Any] = {
        "d-leg": SimpleNamespace(subscriber_id="cascade:w1", tracks=[leg]),
        "d-slow": SimpleNamespace(subscriber_id="p-1", tracks=[slow]),
        "d-fast": SimpleNamespace(subscriber_id="p-2", tracks=[fast]),
    }
    load: Any = SimpleNamespace(step=lambda now, copies: copies)
    sfu.downs, sfu.load = downs, load
    assert sfu.balance(0.0) == 2  # as far behind as can be: every copy it may hold
    assert (leg.held, slow.held, fast.held) == (False, True, True)
