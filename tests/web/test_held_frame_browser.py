"""A frame held up for everyone, in real Chromium: the expert's frozen frame on every page, and
in the playback of the recording at the time it was shown."""

from __future__ import annotations

import asyncio
import base64
import json
import re

import cv2
import numpy as np
from playwright.async_api import Browser, BrowserContext, Locator, expect

from teleconsult.client.media import MediaClient
from teleconsult.session.roles import Role

from ..conftest import Server
from ..media_util import PacketTrack, ToneTrack, vp8_frames
from ..test_held_frame import hold, probe_jpeg
from .pages import drag_across, open_page
from .test_meeting_features import tile_of_probe


def grey(data: bytes) -> np.ndarray:
    """Decode a PNG or JPEG to grey levels."""
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert pixels is not None
    return pixels.astype(np.int16)


async def still_of(figure: Locator) -> np.ndarray:
    """The picture a tile holds still, as its page draws it."""
    url = await figure.locator("canvas.frozen").evaluate("(c) => c.toDataURL('image/png')")
    return grey(base64.b64decode(url.split(",", 1)[1]))


async def test_everyone_sees_the_frame_the_expert_holds_up(
    server: Server, chromium: Browser
) -> None:
    observer = await server.join(role=Role.AUDIENCE, identity="observer")
    ex, feed, media = await tile_of_probe(server, chromium, Role.EXPERT)
    try:
        aud = await open_page(chromium, server, Role.AUDIENCE, "aud", "Trainee")
        theirs = aud.locator(f'figure[data-feed="{feed}"]')
        await expect(theirs.locator("video").first).to_be_visible(timeout=15000)
        mine = ex.locator(f'figure[data-feed="{feed}"]')
        hold_button = mine.locator('button[data-action="hold"]')
        await expect(hold_button).to_be_hidden()  # nothing frozen, nothing to show
        await ex.keyboard.press("h")
        await expect(hold_button).to_be_visible()
        await ex.keyboard.press("g")  # the key (a foot pedal) does what the button does
        held = await observer.wait_for("frame_held", timeout=10)
        jpeg = grey(base64.b64decode(held["image"]))
        frozen = await still_of(mine)
        # The very frame the expert froze, at its own size, JPEG-close.
        assert jpeg.shape == frozen.shape == (held["height"], held["width"])
        assert np.abs(jpeg - frozen).mean() < 3
        assert held["media_ts"] == int(
            await mine.locator("canvas.frozen").get_attribute("data-media-ts") or -1
        )
        await expect(hold_button).to_have_attribute("aria-pressed", "true")
        # The trainee's page shows it in place of the live picture, which goes on in the corner.
        await expect(theirs).to_have_class(re.compile("is-held"))
        assert np.abs(await still_of(theirs) - jpeg).mean() < 3
        corner = theirs.locator("video.live-corner")
        first = await corner.evaluate("(v) => v.currentTime")
        await aud.wait_for_timeout(600)
        assert await corner.evaluate("(v) => v.currentTime") > first
        await expect(aud.locator("#notices")).to_contain_text(
            "Dr. Li is showing everyone a held frame"
        )
        await expect(theirs.locator('button[data-action="hold"]')).to_be_hidden()
        # What the expert draws on it reaches the trainee on it, naming the frame.
        await ex.keyboard.press("a")
        await drag_across(ex, mine.locator("svg.overlay"), (0.3, 0.3), (0.6, 0.6))
        arrow = await observer.wait_for("op", timeout=10, where=lambda e: e["op"] == "arrow")
        assert arrow["media_ts"] == held["media_ts"]
        await expect(theirs.locator(f'svg.overlay g[data-id="{arrow["id"]}"]')).to_have_count(1)
        # Someone joining now sees it at once.
        late = await open_page(chromium, server, Role.AUDIENCE, "late", "Late trainee")
        await expect(late.locator(f'figure[data-feed="{feed}"]')).to_have_class(
            re.compile("is-held"), timeout=15000
        )
        # The expert takes it down: every page goes back to the live picture.
        await hold_button.click()
        released = await observer.wait_for("frame_released", timeout=10)
        assert released["id"] == held["id"]
        for page in (aud, late):
            figure = page.locator(f'figure[data-feed="{feed}"]')
            await expect(figure).not_to_have_class(re.compile("is-held"))
            await expect(figure.locator("canvas.frozen, video.live-corner")).to_have_count(0)
        await expect(aud.locator("#notices")).to_contain_text("The held frame was taken down")
    finally:
        await media.close()


async def test_playback_shows_the_held_frame_while_it_was_held(
    server: Server, browser: BrowserContext
) -> None:
    mod = await server.join(role=Role.MODERATOR, identity="mod")
    op = await server.join(role=Role.OPERATOR, identity="op")
    media = MediaClient(op)
    jpeg = probe_jpeg(5)
    try:
        stream = await media.publish(
            [
                (PacketTrack("video", vp8_frames(60, 15), 30, 90000), "camera", "Room"),
                (ToneTrack(), "microphone", ""),
            ]
        )
        feed = f"{stream.id}.0"
        await mod.send({"type": "record", "action": "start"})
        await mod.wait_for("recording", where=lambda e: e["active"] is True)
        await asyncio.sleep(1.0)
        await op.request(hold(feed, jpeg))
        await asyncio.sleep(1.5)
        await op.request({"type": "release_frame"})
        await asyncio.sleep(1.0)
        await mod.send({"type": "record", "action": "stop"})
        await mod.wait_for("recording", where=lambda e: e["active"] is False)
    finally:
        await media.close()
    (folder,) = (server.hub.settings.data_dir / "recordings" / "r1").iterdir()
    log = [json.loads(x) for x in (folder / "channel.jsonl").read_text().splitlines()]
    shown = next(e["t"] for e in log if e["type"] == "frame_held")
    gone = next(e["t"] for e in log if e["type"] == "frame_released")

    page = await browser.new_page()
    await page.goto(f"{server.http}/playback/r1#token={server.token(identity='ex')}")
    figure = page.locator(f'figure[data-feed="{feed}"]')
    await expect(figure).to_have_count(1)
    image = figure.locator("img.held")
    await page.evaluate(f"window.player.seek({(shown + gone) / 2})")
    await expect(figure).to_have_class(re.compile("is-held"))
    await expect(image).to_be_visible()
    await page.wait_for_function(
        "() => document.querySelector('img.held')?.naturalWidth === 640", timeout=10000
    )
    # The page shows the recorded file's picture (fetched past its Content-Security-Policy).
    url = await image.evaluate(
        """(img) => { const c = document.createElement("canvas");
                      c.width = img.naturalWidth; c.height = img.naturalHeight;
                      c.getContext("2d").drawImage(img, 0, 0); return c.toDataURL("image/png"); }"""
    )
    assert np.abs(grey(base64.b64decode(url.split(",", 1)[1])) - grey(jpeg)).mean() < 1
    await page.evaluate(f"window.player.seek({gone + 0.3})")
    await expect(image).to_be_hidden()
    await page.evaluate(f"window.player.seek({shown - 0.3})")  # back before it was held
    await expect(image).to_be_hidden()
    await expect(figure).not_to_have_class(re.compile("is-held"))
