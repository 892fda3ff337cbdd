"""A publisher whose media path is lost: its stream waits, then goes on under the same id, and
each viewer's picture comes back on the same subscription, its numbering continuous."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from teleconsult.client.media import MediaClient
from teleconsult.client.signaling import RequestFailed, SignalingClient
from teleconsult.session.roles import Role

from .conftest import running_server
from .media_util import PatternTrack, receive


async def test_a_lost_publisher_path_resumes_under_the_same_stream(tmp_path: Path) -> None:
    async with running_server(tmp_path, announce="127.0.0.1") as server:
        op = MediaClient(await server.join(role=Role.OPERATOR, identity="op"))
        ex_sig = await server.join(role=Role.EXPERT, identity="ex")
        ex = MediaClient(ex_sig)
        try:
            stream = await op.publish([(PatternTrack(), "probe", "Ultrasound")])
            sub = await ex.subscribe(stream.id)
            track = sub.tracks[f"{stream.id}.0"]
            await receive(track, 10)
            down = next(iter(server.hub.sfu.downs.values())).tracks[0]
            # The publisher's path is lost: its connection to the server ends under it.
            await stream.pc.close()
            state = await ex_sig.wait_for("stream_state", timeout=10)
            assert state == {
                "type": "stream_state",
                "stream_id": stream.id,
                "state": "reconnecting",
            }
            next_seq = down.rewriter.next_seq
            # It publishes again: the same stream, the same viewers.
            t0 = time.monotonic()
            again = await op.publish([(PatternTrack(), "probe", "Ultrasound")], replace=stream.id)
            assert again.id == stream.id
            live = await ex_sig.wait_for("stream_state", timeout=5)
            assert live["state"] == "live"
            await receive(track, 5, timeout=5)  # the subscription it had
            assert time.monotonic() - t0 < 2.0
            # The viewer's numbering went on where it stopped: no gap, no jump back.
            assert down.sender.cache.get(next_seq % 65536) is not None
            assert not any(e["type"] in ("stream_removed", "stream_added") for e in ex_sig.drain())
            up = server.hub.sfu.stats()["up"][0]
            assert up["state"] == "live" and up["packets"] > 0
        finally:
            await op.close()
            await ex.close()


async def test_a_stream_never_resumed_is_removed_after_the_grace(tmp_path: Path) -> None:
    async with running_server(
        tmp_path, announce="127.0.0.1", reconnect_grace=1.5, sweep_interval=0.2
    ) as server:
        op = MediaClient(await server.join(role=Role.OPERATOR, identity="op"))
        ex = await server.join(role=Role.EXPERT, identity="ex")
        try:
            stream = await op.publish([(PatternTrack(), "probe", "")])
            await ex.wait_for("stream_added")
            await stream.pc.close()
            assert (await ex.wait_for("stream_state", timeout=10))["state"] == "reconnecting"
            removed = await ex.wait_for("stream_removed", timeout=5)
            assert removed == {
                "type": "stream_removed",
                "stream_id": stream.id,
                "reason": "interrupted",
            }
            await asyncio.sleep(0.3)
            assert stream.id not in server.hub.sfu.ups
        finally:
            await op.close()


async def test_new_media_for_a_stream_must_carry_its_feeds(tmp_path: Path) -> None:
    async with running_server(tmp_path, announce="127.0.0.1") as server:
        op_sig = await server.join(role=Role.OPERATOR, identity="op")
        op = MediaClient(op_sig)
        other = MediaClient(await server.join(role=Role.EXPERT, identity="ex"))
        try:
            stream = await op.publish([(PatternTrack(), "probe", "")])
            up = server.hub.sfu.ups[stream.id]
            for _ in range(100):
                if up.pc.connectionState == "connected":
                    break
                await asyncio.sleep(0.05)

            try:
                await op.publish([(PatternTrack(), "camera", "")], replace=stream.id)
            except RequestFailed as e:
                assert e.code == "feeds_mismatch"
            else:
                raise AssertionError("a camera replaced a probe")
            try:
                await other.publish([(PatternTrack(), "camera", "")], replace=stream.id)
            except RequestFailed as e:
                assert e.code == "no_such_stream"  # not another participant's stream
            else:
                raise AssertionError("someone else's stream was taken over")
            assert up.pc.connectionState == "connected" and server.hub.sfu.ups[stream.id] is up
        finally:
            await op.close()
            await other.close()


class ClientAt(SignalingClient):
    """A signaling client whose connection leaves from a given local address."""

    def __init__(self, local: str, *args: Any) -> None:
        super().__init__(*args)
        self.local = local

    async def open(self, timeout: float = 10.0) -> None:
        self.ws = await connect(
            self.url, ping_interval=None, open_timeout=timeout, local_addr=(self.local, 0)
        )
        self.last_heard = asyncio.get_running_loop().time()
        self._reader = asyncio.create_task(self._read())


async def test_a_reconnect_from_another_address_marks_its_media_lost_at_once(
    tmp_path: Path,
) -> None:
    async with running_server(tmp_path, announce="127.0.0.1") as server:
        op_sig = await server.join(role=Role.OPERATOR, identity="op")
        op = MediaClient(op_sig)
        ex_sig = await server.join(role=Role.EXPERT, identity="ex")
        ex = MediaClient(ex_sig)
        again: list[SignalingClient] = []
        try:
            stream = await op.publish([(PatternTrack(), "probe", "Ultrasound")])
            sub = await ex.subscribe(stream.id)
            await receive(sub.tracks[f"{stream.id}.0"], 5)

            async def back(identity: str, role: Role, local: str) -> dict[str, Any]:
                token = server.token(role=role, identity=identity)
                client = ClientAt(local, server.ws_url, token, "r1")
                again.append(client)
                return await client.connect()

            # Back from the same address (a blink): everything held, nothing lost.
            welcome = await back("ex", Role.EXPERT, "127.0.0.1")
            assert welcome["subscriptions"] == [sub.id]
            assert [s["state"] for s in welcome["streams"]] == ["live"]
            # Back from another address (a handover): the old paths are dead, and the welcome
            # says so before ICE consent would: the subscription ended, the stream waits.
            welcome = await back("ex", Role.EXPERT, "127.0.0.2")
            assert welcome["subscriptions"] == []
            welcome = await back("op", Role.OPERATOR, "127.0.0.2")
            assert [(s["id"], s["state"]) for s in welcome["streams"]] == [
                (stream.id, "reconnecting")
            ]
            state = await again[-2].wait_for("stream_state", timeout=5)
            assert state["stream_id"] == stream.id and state["state"] == "reconnecting"
            # The stream goes on under its id once published again from the new address.
            republished = MediaClient(again[-1])
            renewed = await republished.publish(
                [(PatternTrack(), "probe", "Ultrasound")], replace=stream.id
            )
            assert renewed.id == stream.id
            live = await again[-2].wait_for("stream_state", timeout=5)
            assert live["state"] == "live"
            await republished.close()
        finally:
            await op.close()
            await ex.close()
            for client in again:
                await client.close()
