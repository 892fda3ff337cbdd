"""A session recorded from real Chromium: an ultrasound clip as the camera, a microphone, a
resolution change mid-recording, and an expert who draws and chats before and during it."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from playwright.async_api import expect

from teleconsult.session.roles import Role
from teleconsult.signaling.http_api import join_url

from ..conftest import Server, annotation
from .conftest import LOOPBACK_ONLY, chromium_filming

# Where US1_UNCR.dcm burns in the hospital and patient details: the top 100 of 480 rows.
HEADER_BAND = (0.0, 0.0, 1.0, 100 / 480)
# The expert's arrows, drawn on the picture in fractions of it: one before the recording
# starts (it must be in the recording from its first frame), one during it.
BEFORE = [[0.30, 0.70], [0.55, 0.45]]
DURING = [[0.70, 0.40], [0.85, 0.75]]
# A colour no ultrasound picture has, to find the arrows in exported frames.
GREEN = {"color": "#00ff00", "width": 5}
# Keep every camera and microphone track a page opens, to change its constraints later.
KEEP_TRACKS = """
(() => {
  const open = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  window.__tracks = [];
  navigator.mediaDevices.getUserMedia = async (c) => {
    const media = await open(c);
    window.__tracks.push(...media.getTracks());
    return media;
  };
})();
"""


def ultrasound_y4m(path: Path, frames: int = 60) -> tuple[int, int]:
    """Write a clip of a real ultrasound image (pydicom-data's US1_UNCR.dcm), drifting slowly."""
    import data_store  # type: ignore[import-untyped]
    import pydicom

    dcm = Path(data_store.__file__).parent / "data" / "US1_UNCR.dcm"
    rgb = pydicom.dcmread(dcm).pixel_array
    height, width = rgb.shape[:2]
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F30:1 Ip A1:1 C420jpeg\n".encode())
        for n in range(frames):
            img = np.ascontiguousarray(np.roll(rgb, n % 8, axis=0))
            yuv = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
            f.write(b"FRAME\n" + b"".join(bytes(p) for p in yuv.planes))
    return width, height


@dataclass
class BrowserRecording:
    """What the test made: the session's folder and id, and when things happened in it."""

    folder: Path
    session_id: str
    feed: str
    manifest: dict[str, Any]
    log: list[dict[str, Any]]
    resized_at: float  # session seconds at which the camera went to 320x240


def channel_log(folder: Path) -> list[dict[str, Any]]:
    """The channel log's entries."""
    text = (folder / "channel.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def record_from_chromium(server: Server, tmp: Path, seconds: float = 8.0) -> BrowserRecording:
    """Record a consult whose probe feed and microphone come from real Chromium."""
    clip = tmp / "ultrasound.y4m"
    ultrasound_y4m(clip)
    expert = await server.join(role=Role.EXPERT, identity="li", name="Dr. Li")
    mod = await server.join(role=Role.MODERATOR, identity="mod", name="Moderator")
    async with chromium_filming(clip) as browser:
        context = await browser.new_context(viewport={"width": 1024, "height": 768})
        await context.add_init_script(LOOPBACK_ONLY)
        await context.add_init_script(KEEP_TRACKS)
        page = await context.new_page()
        token = server.token(role=Role.OPERATOR, identity="op", name="Sonographer Wang")
        await page.goto(join_url(server.http, "r1", token))
        await expect(page.locator("#state")).to_have_attribute("data-state", "joined")
        await page.click('#devices [data-row="source"] button.toggle')
        await page.click('#devices [data-row="microphone"] button.toggle')
        added = await expert.wait_for(
            "stream_added", where=lambda e: e["stream"]["feeds"][0]["kind"] == "video"
        )
        feed = added["stream"]["feeds"][0]["id"]
        await expert.wait_for(
            "stream_added", where=lambda e: e["stream"]["feeds"][0]["kind"] == "audio"
        )
        await expert.request({**annotation("arrow", "before", feed, BEFORE), "style": GREEN})
        await expert.request({"type": "chat", "id": "c-before", "text": "Look at the arrow"})
        await mod.send({"type": "record", "action": "start"})
        await page.click("#consent-yes")
        started = await mod.wait_for("recording", where=lambda e: e["active"] is True)
        started_at = asyncio.get_running_loop().time()
        await asyncio.sleep(seconds / 3)
        await expert.request({**annotation("arrow", "during", feed, DURING), "style": GREEN})
        await expert.request({"type": "chat", "id": "c-during", "text": "And this one"})
        await asyncio.sleep(seconds / 6)
        resized_at = asyncio.get_running_loop().time() - started_at
        await page.evaluate(
            """() => Promise.all(window.__tracks.filter((t) => t.kind === "video")
                 .map((t) => t.applyConstraints({ width: 320, height: 240 })))"""
        )
        await asyncio.sleep(seconds / 2)
        await mod.send({"type": "record", "action": "stop"})
        await mod.wait_for("recording", where=lambda e: e["active"] is False)
        await context.close()
    (folder,) = (server.hub.settings.data_dir / "recordings" / "r1").iterdir()
    manifest = json.loads((folder / "manifest.json").read_text())
    return BrowserRecording(
        folder, started["session_id"], feed, manifest, channel_log(folder), resized_at
    )
