"""The relay as its own process: frames flow, and it creates no decoder and no encoder."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest

from teleconsult.client.media import MediaClient
from teleconsult.client.signaling import SignalingClient
from teleconsult.media.aioice_adapter import use_host_addresses
from teleconsult.session.roles import Role
from teleconsult.signaling.tokens import mint

from .conftest import SECRET, server_process
from .media_util import PatternTrack, ToneTrack, receive, tone_level

TELECONSULT = str(Path(sys.executable).parent / "teleconsult")


@pytest.fixture
def relay_server(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """`teleconsult serve` as its own process on a free port; yields (port, process)."""
    with server_process(tmp_path) as running:
        yield running


@pytest.fixture
def relay(relay_server: tuple[int, subprocess.Popen[bytes]]) -> int:
    return relay_server[0]


async def metrics(port: int) -> dict[str, float]:
    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    values = {}
    for line in (await asyncio.to_thread(fetch)).splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def test_relay_process_forwards_without_any_codec(relay: int) -> None:
    use_host_addresses(["127.0.0.1"])
    url = f"ws://127.0.0.1:{relay}/ws"
    op_sig = SignalingClient(url, mint(SECRET, "r1", Role.OPERATOR, "op", 600, "op"), "r1")
    ex_sig = SignalingClient(url, mint(SECRET, "r1", Role.EXPERT, "ex", 600, "ex"), "r1")
    await op_sig.connect()
    await ex_sig.connect()
    op, ex = MediaClient(op_sig), MediaClient(ex_sig)
    try:
        stream = await op.publish([(PatternTrack(), "probe", ""), (ToneTrack(), "microphone", "")])
        sub = await ex.subscribe(stream.id)
        video = await receive(sub.tracks[f"{stream.id}.0"], 30)
        audio = await receive(sub.tracks[f"{stream.id}.1"], 50)
        assert video[-1].width == 320 and tone_level(audio[-25:]) > 1000
        m = await metrics(relay)
        assert m["teleconsult_media_up_tracks"] == 2
        assert m["teleconsult_media_down_tracks"] == 2
        assert m['teleconsult_media_codecs_created_total{kind="decoder"}'] == 0
        assert m['teleconsult_media_codecs_created_total{kind="encoder"}'] == 0
        sent = [v for k, v in m.items() if k.startswith("teleconsult_media_down_packets_total")]
        assert len(sent) == 2 and min(sent) > 20
    finally:
        await op.close()
        await ex.close()
        await op_sig.close()
        await ex_sig.close()
        use_host_addresses(None)


async def test_codec_counter_sees_a_peer_that_does_transcode() -> None:
    # The proof above is only as good as the counter: a plain aiortc pair must register.
    from aiortc import RTCConfiguration, RTCPeerConnection

    from teleconsult.media.aiortc_codecs import CODECS_CREATED, count_codecs

    count_codecs()
    before = dict(CODECS_CREATED)
    use_host_addresses(["127.0.0.1"])
    a = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    b = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    got: asyncio.Future[object] = asyncio.get_running_loop().create_future()

    @b.on("track")
    def _track(track: object) -> None:
        if not got.done():
            got.set_result(track)

    try:
        a.addTrack(PatternTrack())
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        track = await asyncio.wait_for(got, 5)
        await receive(track, 3)  # type: ignore[arg-type]
        assert CODECS_CREATED["encoder"] > before["encoder"]
        assert CODECS_CREATED["decoder"] > before["decoder"]
    finally:
        await a.close()
        await b.close()
        use_host_addresses(None)


def cli_args(relay: int, tmp_path: Path) -> list[str]:
    """What `publish` and `subscribe` need to reach the relay's room "cli"."""
    server = ["--server", f"http://127.0.0.1:{relay}", "--room", "cli"]
    return [*server, "--secret", SECRET, "--data-dir", str(tmp_path)]


def published_and_seen(common: list[str], source: list[str]) -> dict[str, Any]:
    """Run `publish` with a source and `subscribe` for 4 s beside it; return what it saw."""
    publisher = subprocess.Popen(
        [TELECONSULT, "publish", *common, *source, "--duration", "12"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert publisher.stdout is not None
        first = publisher.stdout.readline()  # printed once the stream is published
        assert '"published"' in first
        out = subprocess.run(
            [TELECONSULT, "subscribe", *common, "--duration", "4"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        (feed,) = json.loads(out.stdout.splitlines()[-1])["summary"].values()
        return dict(feed)
    finally:
        publisher.terminate()
        publisher.wait(10)
        if publisher.stdout:
            publisher.stdout.close()


def test_publish_and_subscribe_commands_report_latency(relay: int, tmp_path: Path) -> None:
    feed = published_and_seen(cli_args(relay, tmp_path), ["--synthetic", "--size", "320x240"])
    assert feed["frames"] >= 60
    assert 0 < feed["latency_ms_p50"] < 500
    assert feed["first_frame_ms"] < 3000


def short_clip(path: Path, frames: int = 15) -> None:
    """A half-second clip of a real ultrasound image, written by ffmpeg's own tools (PyAV)."""
    from .web.browser_recording import ultrasound_y4m

    y4m = path.with_suffix(".y4m")
    ultrasound_y4m(y4m, frames)
    if path.suffix == ".y4m":
        return
    with av.open(str(y4m)) as src, av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        for frame in src.decode(video=0):
            frame.pts = None
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


@pytest.mark.parametrize("suffix", [".mp4", ".y4m"])
def test_publish_file_sends_its_frames_looped(relay: int, tmp_path: Path, suffix: str) -> None:
    clip = tmp_path / f"clip{suffix}"
    short_clip(clip)
    common = cli_args(relay, tmp_path)
    feed = published_and_seen(common, ["--file", str(clip)])
    # A half-second clip seen for 4 s: looped, at its own 30 frames a second.
    assert feed["frames"] >= 90, feed
    garbage = tmp_path / "broken.mp4"
    garbage.write_bytes(b"not a video" * 100)
    for bad, says in ((garbage, "cannot read"), (tmp_path / "missing.mp4", "no such file")):
        refused = subprocess.run(
            [TELECONSULT, "publish", *common, "--file", str(bad), "--duration", "5"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2 and says in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr


@pytest.mark.parametrize("consented", [True, False])
async def test_a_station_answers_the_request_to_record_as_it_was_started(
    relay: int, tmp_path: Path, consented: bool
) -> None:
    """Nobody sits at a CLI station: it answers from its `--patient-consented` flag."""
    flag = ["--patient-consented"] if consented else []
    args = [*cli_args(relay, tmp_path), "--synthetic", "--size", "320x240", "--duration", "20"]
    publisher = await asyncio.create_subprocess_exec(
        TELECONSULT, "publish", *args, *flag, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    token = mint(SECRET, "cli", Role.MODERATOR, "Moderator", 600, "mod")
    mod = SignalingClient(f"ws://127.0.0.1:{relay}/ws", token, "cli")
    try:
        assert publisher.stdout is not None
        assert b'"published"' in await asyncio.wait_for(publisher.stdout.readline(), 30)
        await mod.connect()
        await mod.send({"type": "record", "action": "start"})
        assert (await mod.wait_for("recording", timeout=5))["pending"] is True
        if consented:
            started = await mod.wait_for("recording", timeout=10, where=lambda e: e["active"])
            assert started["consent"]["identity"]
            await mod.send({"type": "record", "action": "stop"})
            await mod.wait_for("recording", timeout=10, where=lambda e: not e["active"])
        else:
            over = await mod.wait_for("recording", timeout=10)
            assert not over["pending"] and not over["active"]
            await mod.wait_for("consent_declined", timeout=5)
    finally:
        await mod.close()
        publisher.terminate()
        await asyncio.wait_for(publisher.wait(), 10)
