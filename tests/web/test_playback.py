"""The playback page: recorded feeds in step, and the annotations live at the time sought."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from playwright.async_api import BrowserContext, expect

from teleconsult.client.media import MediaClient
from teleconsult.session.roles import Role

from ..conftest import Server, annotation, join_and_remove
from ..media_util import PacketTrack, ToneTrack, vp8_frames

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"


async def test_playback_shows_what_was_drawn_when(server: Server, browser: BrowserContext) -> None:
    mod = await server.join(role=Role.MODERATOR, identity="mod")
    op = await server.join(role=Role.OPERATOR, identity="op")
    media = MediaClient(op)
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
        await asyncio.sleep(1.5)
        await op.request(annotation("arrow", "early", feed, [[0.2, 0.2], [0.4, 0.4]]))
        await asyncio.sleep(1.5)
        await op.request({"type": "annotate", "op": "delete", "id": "d1", "target": "early"})
        await op.request(annotation("ellipse", "late", feed, [[0.5, 0.5], [0.7, 0.7]]))
        await op.request({"type": "chat", "id": "c1", "text": "Note the fluid"})
        await asyncio.sleep(1.5)
        await mod.send({"type": "record", "action": "stop"})
        await mod.wait_for("recording", where=lambda e: e["active"] is False)
    finally:
        await media.close()
    (folder,) = (server.hub.settings.data_dir / "recordings" / "r1").iterdir()
    log = [json.loads(x) for x in (folder / "channel.jsonl").read_text().splitlines()]
    t = {e["id"]: e["t"] for e in log if e.get("type") == "op"}

    # File links that live a minute: the page renews them 3 s after it opens (a minute early).
    server.hub.settings.recording_link_ttl = 63
    page = await browser.new_page()
    token = server.token(role=Role.EXPERT, identity="ex")
    await page.goto(f"{server.http}/playback/r1#token={token}")
    video = page.locator(f'video[data-feed="{feed}"]')
    await expect(video).to_have_count(1)
    await page.wait_for_function(
        f"""() => document.querySelector('video[data-feed="{feed}"]').readyState >= 2""",
        timeout=10000,
    )
    overlay = page.locator(f'svg.overlay[data-feed="{feed}"]')

    async def at(seconds: float) -> None:
        await page.evaluate(f"window.player.seek({seconds})")

    await at((t["early"] + t["d1"]) / 2)  # after the arrow was drawn, before it was deleted
    await expect(overlay.locator('g[data-id="early"]')).to_have_count(1)
    await expect(overlay.locator('g[data-id="late"]')).to_have_count(0)
    await expect(page.locator("#messages li")).to_have_count(0)
    await at(t["late"] + 0.3)
    await expect(overlay.locator('g[data-id="late"]')).to_have_count(1)
    await expect(overlay.locator('g[data-id="early"]')).to_have_count(0)
    await expect(page.locator("#messages")).to_contain_text("Note the fluid")
    await at(t["early"] - 0.3)  # back before anything was drawn
    await expect(overlay.locator("g")).to_have_count(0)
    # It plays: the clock and the picture move together, at the chosen speed.
    await page.select_option("#speed", "2")
    await page.click("#play")
    await page.wait_for_function(
        f"""() => document.querySelector('video[data-feed="{feed}"]').currentTime > 0.5""",
        timeout=10000,
    )
    assert await video.evaluate("v => v.playbackRate") == 2
    drift = await page.evaluate(
        f"""() => {{ const v = document.querySelector('video[data-feed="{feed}"]');
                    return Math.abs(window.player.state.time - v.currentTime); }}"""
    )
    assert drift < 1.5  # the track starts within the keyframe wait of the session clock
    # Fresh file links replaced the first ones, and the picture went on with them.
    first = await video.evaluate("v => v.src")
    await page.wait_for_function(
        f"""(first) => document.querySelector('video[data-feed="{feed}"]').src !== first""",
        arg=first,
        timeout=15000,
    )
    await at(0.2)  # from the start again
    if not await page.evaluate("window.player.state.playing"):
        await page.click("#play")
    await page.wait_for_function(
        f"""() => document.querySelector('video[data-feed="{feed}"]').currentTime > 0.8""",
        timeout=10000,
    )
    await page.screenshot(path=str(ARTIFACTS / "playback.png"))


async def test_the_playback_page_refuses_a_revoked_or_removed_link(
    server: Server, browser: BrowserContext
) -> None:
    from teleconsult.signaling.tokens import verify

    from ..conftest import SECRET

    page = await browser.new_page()
    valid = server.token(role=Role.EXPERT, identity="ex-valid")
    await page.goto(f"{server.http}/playback/r1#token={valid}")
    await expect(page.locator("#main")).to_be_visible()
    await expect(page.locator("#problem")).to_be_hidden()
    # A revoked link, and the link of an expert a moderator removed: the page says no.
    revoked = server.token(role=Role.EXPERT, identity="ex-revoked")
    grant = verify(SECRET, revoked)
    await server.hub.revoke("r1", grant.token_id, grant.expires_at)
    mod = await server.join(role=Role.MODERATOR, identity="mod")
    removed = server.token(role=Role.EXPERT, identity="ex-removed")
    await join_and_remove(server, mod, removed, "ex-removed")
    for token in (revoked, removed, server.token(role=Role.AUDIENCE, identity="aud")):
        other = await browser.new_page()
        await other.goto(f"{server.http}/playback/r1#token={token}")
        await expect(other.locator("#problem")).to_be_visible()
        await expect(other.locator("#main")).to_be_hidden()
        await other.close()
