"""kill -9 of the server while recording: every file plays up to 2 s before the kill."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import av

from teleconsult.client.media import MediaClient
from teleconsult.client.signaling import SignalingClient
from teleconsult.media.aioice_adapter import use_host_addresses
from teleconsult.session.roles import Role
from teleconsult.signaling.tokens import mint

from .conftest import SECRET
from .media_util import PacketTrack, ToneTrack, vp8_frames
from .test_media_process import relay_server  # noqa: F401  (the server fixture)


async def test_files_survive_kill_9(
    relay_server: tuple[int, subprocess.Popen[bytes]],  # noqa: F811
    tmp_path: Path,
) -> None:
    relay, process = relay_server
    use_host_addresses(["127.0.0.1"])
    url = f"ws://127.0.0.1:{relay}/ws"
    mod = SignalingClient(url, mint(SECRET, "r1", Role.MODERATOR, "m", 600, "mod"), "r1")
    op = SignalingClient(url, mint(SECRET, "r1", Role.OPERATOR, "o", 600, "op"), "r1")
    await mod.connect()
    await op.connect()
    media = MediaClient(op)
    try:
        await media.publish(
            [
                (PacketTrack("video", vp8_frames(60, 15), 30, 90000), "camera", "Room"),
                (ToneTrack(), "microphone", ""),
            ]
        )
        await mod.send({"type": "record", "action": "start"})
        started = await mod.wait_for("recording", where=lambda e: e["active"] is True)
        await asyncio.sleep(5.0)
        killed_at = time.time()
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    finally:
        await media.close()
        await mod.close()
        await op.close()
        use_host_addresses(None)
    folder = tmp_path / "recordings" / "r1" / started["session_id"]
    manifest = json.loads((folder / "manifest.json").read_text())  # whole, not half-written
    assert manifest["stopped_at"] is None and len(manifest["tracks"]) == 2
    for track in manifest["tracks"]:
        with av.open(str(folder / track["file"])) as c:
            stream = c.streams[0]
            frames = list(c.decode(stream))  # plays: decodes without error
            last = max(f.time for f in frames if f.time is not None)  # type: ignore[union-attr]
        assert len(frames) > 20
        ends_at = manifest["started_at"] + track["start"] + last
        assert killed_at - ends_at <= 2.0, (track["file"], killed_at - ends_at)
