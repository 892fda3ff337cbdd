"""A frame held up for everyone: who may, what is checked, who sees it, and what is recorded."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from teleconsult.client.media import MediaClient
from teleconsult.client.signaling import RequestFailed, SignalingClient
from teleconsult.media.synthetic import UltrasoundTrack
from teleconsult.session.roles import Role

from .conftest import Server, running_server
from .media_util import PatternTrack, ToneTrack
from .test_recording import recording_dir, start_recording


def probe_jpeg(n: int = 7, width: int = 640, height: int = 480) -> bytes:
    """A frame of the synthetic ultrasound picture, as the page's canvas would encode it."""
    ok, data = cv2.imencode(".jpg", UltrasoundTrack(width, height, 30).picture(n, n * 33))
    assert ok
    return bytes(data)


def hold(feed: str, jpeg: bytes, **extra: Any) -> dict[str, Any]:
    return {"type": "hold_frame", "feed": feed, "image": base64.b64encode(jpeg).decode(), **extra}


async def test_everyone_sees_the_frame_an_expert_holds_up_until_it_is_released(
    room: tuple[Server, SignalingClient, str],
) -> None:
    server, op, feed = room
    ex = await server.join(role=Role.EXPERT, identity="ex", name="Dr. Wang")
    aud = await server.join(role=Role.AUDIENCE, identity="aud")
    jpeg = probe_jpeg()
    mine = await ex.request(hold(feed, jpeg, media_ts=4_294_000_000))
    assert mine["type"] == "frame_held"
    for c in (op, aud):
        seen = await c.wait_for("frame_held")
        # The very picture the expert froze, its size as the server decoded it.
        assert base64.b64decode(seen["image"]) == jpeg
        assert (seen["width"], seen["height"]) == (640, 480)
        assert (seen["id"], seen["feed"], seen["media_ts"]) == (mine["id"], feed, 4_294_000_000)
        assert seen["author"] == ex.participant_id
    # Someone joining now sees it at once; so does one coming back.
    late = await server.join(role=Role.AUDIENCE, identity="late")
    assert late.welcome["held"]["id"] == mine["id"]
    assert base64.b64decode(late.welcome["held"]["image"]) == jpeg
    # Drawings on the held frame carry its time, like any other drawing on a frozen frame.
    await ex.send(
        {
            "type": "annotate",
            "op": "arrow",
            "id": "a1",
            "feed": feed,
            "media_ts": 4_294_000_000,
            "points": [[0.2, 0.2], [0.5, 0.5]],
        }
    )
    assert (await aud.wait_for("op"))["media_ts"] == 4_294_000_000
    # Another expert may not take it down; its author may.
    ex2 = await server.join(role=Role.EXPERT, identity="ex2")
    with pytest.raises(RequestFailed) as e:
        await ex2.request({"type": "release_frame"})
    assert e.value.code == "forbidden"
    released = await ex.request({"type": "release_frame"})
    assert released == {
        "type": "frame_released",
        "id": mine["id"],
        "by": ex.participant_id,
        "ref": released["ref"],
    }
    for c in (op, aud, late):
        assert (await c.wait_for("frame_released"))["id"] == mine["id"]
    assert (await server.join(role=Role.AUDIENCE, identity="after")).welcome["held"] is None
    with pytest.raises(RequestFailed) as e:
        await ex.request({"type": "release_frame"})
    assert e.value.code == "nothing_held"


async def test_a_new_frame_replaces_the_last_and_the_authors_leaving_releases_it(
    room: tuple[Server, SignalingClient, str],
) -> None:
    server, op, feed = room
    ex = await server.join(role=Role.EXPERT, identity="ex")
    mod = await server.join(role=Role.MODERATOR, identity="mod")
    first = await ex.request(hold(feed, probe_jpeg(1)))
    second = await op.request(hold(feed, probe_jpeg(2)))  # the operator may too
    assert first["id"] != second["id"]
    assert (server.room().held or {}).get("id") == second["id"]
    # A moderator takes down anyone's.
    await mod.request({"type": "release_frame"})
    third = await ex.request(hold(feed, probe_jpeg(3)))
    await ex.send({"type": "leave"})
    gone = await mod.wait_for("frame_released", where=lambda e: e["id"] == third["id"])
    assert gone["by"] is None
    assert server.room().held is None


@pytest.mark.parametrize(
    ("image", "code"),
    [
        ("not base64!", "invalid_image"),
        (base64.b64encode(b"GIF89a" + bytes(100)).decode(), "invalid_image"),
        (
            base64.b64encode(
                cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes()
            ).decode(),
            "invalid_image",
        ),
        (base64.b64encode(probe_jpeg()[:200]).decode(), "invalid_image"),  # cut short
        (base64.b64encode(bytes(600 * 1024)).decode(), "message_too_large"),
    ],
)
async def test_a_bad_frame_is_refused_with_a_code_and_nothing_else_breaks(
    room: tuple[Server, SignalingClient, str], image: str, code: str
) -> None:
    server, op, feed = room
    ex = await server.join(role=Role.EXPERT, identity="ex")
    # Sent, not requested: a message over every limit is refused before its id is read.
    await ex.send({"type": "hold_frame", "feed": feed, "image": image})
    assert (await ex.wait_for("error"))["code"] == code
    assert server.room().held is None
    # The connection and the room go on.
    said = await ex.request({"type": "chat", "text": "still here"})
    assert (await op.wait_for("op", where=lambda x: x["op"] == "chat"))["seq"] == said["seq"]


async def test_who_may_hold_a_frame_and_of_what(
    room: tuple[Server, SignalingClient, str],
) -> None:
    server, _, feed = room
    aud = await server.join(role=Role.AUDIENCE, identity="aud")
    ex = await server.join(role=Role.EXPERT, identity="ex")
    jpeg = probe_jpeg()
    with pytest.raises(RequestFailed) as e:
        await aud.request(hold(feed, jpeg))
    assert e.value.code == "forbidden"
    with pytest.raises(RequestFailed) as e:
        await ex.request(hold("s-nothing.0", jpeg))
    assert e.value.code == "no_such_feed"
    # Only a hold_frame may be larger than the usual message limit.
    with pytest.raises(RequestFailed) as e:
        await ex.request({"type": "chat", "text": "x" * 100_000})
    assert e.value.code == "message_too_large" and "65536" in str(e.value)
    # About once a second: a burst of two, then the third is refused.
    await ex.request(hold(feed, jpeg))
    await ex.request(hold(feed, jpeg))
    await ex.send(hold(feed, jpeg, id="third"))
    refused = await ex.wait_for("error")
    assert refused["code"] == "rate_limited"
    lines = (server.hub.settings.data_dir / "audit.jsonl").read_text().splitlines()
    audit = [json.loads(line) for line in lines]
    held = [(a["identity"], a["outcome"]) for a in audit if a["action"] == "hold_frame"]
    assert held == [("aud", "denied"), ("ex", "ok"), ("ex", "ok")]  # who showed what, when


def test_a_slow_reader_is_sent_only_the_newest_held_frame(tmp_path: Path) -> None:
    from teleconsult.signaling.config import Secrets, Settings
    from teleconsult.signaling.connection import Connection
    from teleconsult.signaling.hub import Hub

    hub = Hub(Settings(data_dir=tmp_path), Secrets("s" * 40, "k"))
    conn = Connection(None, hub)  # type: ignore[arg-type]  # push() never touches the socket
    for i in range(50):
        conn.push({"type": "frame_held", "id": f"held-{i}", "author": "a", "image": "x" * 1000})
        if i == 10:
            conn.push({"type": "frame_released", "id": "held-10", "by": "a"})
    queued = list(conn.out._queue)  # type: ignore[attr-defined]
    assert [type(x).__name__ for x in queued] == ["_LatestSlot", "dict"]
    assert conn.latest["frame_held"]["id"] == "held-49"


async def test_a_held_frame_is_recorded_as_a_file_and_in_the_log(tmp_path: Path) -> None:
    async with running_server(tmp_path, announce="127.0.0.1") as server:
        op = await server.join(role=Role.OPERATOR, identity="op")
        mod = await server.join(role=Role.MODERATOR, identity="mod")
        ex = await server.join(role=Role.EXPERT, identity="ex", name="Dr. Wang")
        media = MediaClient(op)
        try:
            stream = await media.publish(
                [(PatternTrack(), "probe", "Ultrasound"), (ToneTrack(), "microphone", "Mic")]
            )
            feed = f"{stream.id}.0"
            before = await ex.request(hold(feed, probe_jpeg(1)))  # held when recording starts
            await start_recording(mod, op)
            jpeg = probe_jpeg(2)
            during = await ex.request(hold(feed, jpeg, media_ts=123))
            await asyncio.sleep(0.3)
            await ex.request({"type": "release_frame"})
            await asyncio.sleep(0.3)
            await mod.send({"type": "record", "action": "stop"})
            await ex.wait_for("recording", where=lambda e: e["active"] is False)
        finally:
            await media.close()
        folder = recording_dir(server)
        manifest = json.loads((folder / "manifest.json").read_text())
        files = {h["id"]: h for h in manifest["held_frames"]}
        assert set(files) == {before["id"], during["id"]}
        assert (folder / files[during["id"]]["file"]).read_bytes() == jpeg
        log = [json.loads(line) for line in (folder / "channel.jsonl").read_text().splitlines()]
        held = next(e for e in log if e["type"] == "frame_held" and e["id"] == during["id"])
        assert "image" not in held  # the log names the file; it does not carry the picture
        assert (held["media_ts"], held["author_name"]) == (123, "Dr. Wang")
        released = next(e for e in log if e["type"] == "frame_released")
        assert released["id"] == during["id"] and released["t"] > held["t"]

        # The file is served to a holder of the recording like its other files, as a JPEG.
        def get(url: str, key: str | None = None) -> tuple[str, bytes]:
            req = urllib.request.Request(url if "://" in url else server.http + url)
            if key:
                req.add_header("Authorization", f"Bearer {key}")
            with urllib.request.urlopen(req, timeout=5) as r:
                return str(r.headers["Content-Type"]), r.read()

        expert = server.token(identity="ex")
        _, body = await asyncio.to_thread(get, f"/api/recordings/r1/{folder.name}", expert)
        link = json.loads(body)["links"][files[during["id"]]["file"]]
        assert await asyncio.to_thread(get, link) == ("image/jpeg", jpeg)
