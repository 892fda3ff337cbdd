"""A full disk stops the recording with an error everyone sees; the session goes on."""

from __future__ import annotations

import json
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from teleconsult.client.media import MediaClient
from teleconsult.client.signaling import SignalingClient
from teleconsult.media.aioice_adapter import use_host_addresses
from teleconsult.media.synthetic import UltrasoundTrack
from teleconsult.session.roles import Role
from teleconsult.signaling.tokens import mint

from .conftest import SECRET, server_process
from .media_util import receive

LIMIT = 400_000  # bytes any file of the server may grow to: a disk that fills up


def small_disk() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing us


@pytest.fixture
def cramped_server(tmp_path: Path) -> Iterator[int]:
    with server_process(tmp_path, preexec_fn=small_disk) as (port, _):
        yield port


async def test_disk_full(cramped_server: int, tmp_path: Path) -> None:
    use_host_addresses(["127.0.0.1"])
    url = f"ws://127.0.0.1:{cramped_server}/ws"
    mod = SignalingClient(url, mint(SECRET, "r1", Role.MODERATOR, "m", 600, "mod"), "r1")
    op = SignalingClient(url, mint(SECRET, "r1", Role.OPERATOR, "o", 600, "op"), "r1")
    ex = SignalingClient(url, mint(SECRET, "r1", Role.EXPERT, "e", 600, "ex"), "r1")
    for c in (mod, op, ex):
        await c.connect()
    pub, sub = MediaClient(op), MediaClient(ex)
    try:
        stream = await pub.publish([(UltrasoundTrack(640, 480), "camera", "Room")])
        watching = await sub.subscribe(stream.id)
        await mod.send({"type": "record", "action": "start"})
        await mod.wait_for("recording", where=lambda e: e["active"] is True)
        err = await ex.wait_for("error", timeout=60)
        assert err["code"] == "recording_failed"
        stopped = await mod.wait_for("recording", where=lambda e: e["active"] is False)
        assert stopped["by"] is None  # the server stopped it
        # The consultation goes on: the expert still gets the picture, the room still talks.
        await receive(watching.tracks[f"{stream.id}.0"], 30)
        await ex.send({"type": "ping", "ts": 1})
        assert (await ex.wait_for("pong"))["ts"] == 1
    finally:
        await pub.close()
        await sub.close()
        for c in (mod, op, ex):
            await c.close()
        use_host_addresses(None)
    (manifest,) = (tmp_path / "recordings" / "r1").glob("*/manifest.json")
    written = json.loads(manifest.read_text())  # what was written is whole
    assert written["session_id"] and written["stopped_at"] is not None
    assert "File too large" in written["error"]  # and says why it ended
