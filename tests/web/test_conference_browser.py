"""A conference in real Chromium: the cameras of those who speak are shown, the rest are names
whose pictures the server does not send."""

from __future__ import annotations

import asyncio
from typing import Any

from playwright.async_api import Browser, expect

from teleconsult.client.media import MediaClient
from teleconsult.session.roles import Role

from ..conftest import Server
from ..media_util import PacketTrack, ToneTrack, vp8_frames
from .pages import open_page

LOUD, QUIET = 0.1, 0.0005  # about -20 and -66 dBov


async def test_a_conference_shows_who_speaks_and_pauses_the_cameras_set_aside(
    server: Server, chromium: Browser
) -> None:
    frames = vp8_frames(60, 30)  # a keyframe every 2 s at 15 frames a second
    tones = {n: ToneTrack(QUIET) for n in range(1, 6)}
    clients = [MediaClient(await server.join(role=Role.OPERATOR, identity="op", name="Sono"))]
    try:
        await clients[0].publish([(PacketTrack("video", frames, 15, 90000), "probe", "Probe")])
        ids: dict[int, str] = {}
        for n, tone in tones.items():
            expert = await server.join(role=Role.EXPERT, identity=f"e{n}", name=f"Dr. {n}")
            ids[n] = expert.participant_id
            clients.append(MediaClient(expert))
            camera = PacketTrack("video", frames, 15, 90000)
            await clients[-1].publish([(camera, "camera", "Camera"), (tone, "microphone", "Mic")])
        page = await open_page(chromium, server, Role.AUDIENCE, "aud", "Trainee")
        cameras = page.locator("figure:has(video[data-source='camera'])")
        await expect(cameras).to_have_count(5, timeout=15000)
        # Four cameras fit in the strip beside the probe; the fifth is a name.
        await expect(page.locator("figure.aside")).to_have_count(1)
        await expect(page.locator("#feeds .names button")).to_have_count(1)

        def down(participant: int) -> dict[str, Any]:
            """The server's copy of one expert's camera to the page."""
            (d,) = [
                d
                for d in server.hub.sfu.stats()["down"]
                if d["feed"].endswith(".0") and d["of"] in of[participant]
            ]
            return dict(d)

        of = {
            n: {u["stream"] for u in server.hub.sfu.stats()["up"] if u["participant_id"] == p}
            for n, p in ids.items()
        }
        aside = await page.locator("figure.aside").get_attribute("data-participant")
        (first,) = [n for n, p in ids.items() if p == aside]
        for _ in range(100):
            if down(first)["paused"]:
                break
            await asyncio.sleep(0.05)
        assert down(first)["paused"]
        sent = down(first)["packets"]
        await asyncio.sleep(0.5)
        assert down(first)["packets"] == sent  # a name costs no picture

        # The one set aside speaks: its camera comes into the strip and is painted again (from a
        # keyframe); the longest quiet of the others becomes a name, and its picture stops.
        tones[first].amplitude = LOUD
        shown = page.locator(f"figure[data-participant='{aside}']")
        await expect(shown).not_to_have_class("aside", timeout=5000)
        await expect(shown).to_be_visible()
        frames_js = (
            f"document.querySelector(\"figure[data-participant='{aside}'] video\")"
            ".getVideoPlaybackQuality().totalVideoFrames"
        )
        painted = await page.evaluate(frames_js)
        await page.wait_for_function(f"() => {frames_js} > {painted + 15}", timeout=15000)
        assert not down(first)["paused"]
        await expect(page.locator("figure.aside")).to_have_count(1)
        later = await page.locator("figure.aside").get_attribute("data-participant")
        assert later != aside
        (second,) = [n for n, p in ids.items() if p == later]
        for _ in range(100):
            if down(second)["paused"]:
                break
            await asyncio.sleep(0.05)
        assert down(second)["paused"]
        # Its name, chosen, makes it the large picture, painted.
        await page.locator("#feeds .names button").click()
        big = page.locator(f"figure.main[data-participant='{later}']")
        await expect(big).to_be_visible(timeout=5000)
        frames_js = (
            f"document.querySelector(\"figure[data-participant='{later}'] video\")"
            ".getVideoPlaybackQuality().totalVideoFrames"
        )
        await page.wait_for_function(f"() => {frames_js} > 10", timeout=15000)
    finally:
        for c in clients:
            await c.close()


async def test_the_moderator_sees_the_hands_in_order_and_gives_the_floor(
    server: Server, chromium: Browser
) -> None:
    experts = [await server.join(role=Role.EXPERT, identity=f"e{n}", name=f"Dr. {n}") for n in "12"]
    asking = [await server.join(role=Role.AUDIENCE, identity=n, name=f"Student {n}") for n in "yx"]
    mod = await open_page(chromium, server, Role.MODERATOR, "mod", "Chair")
    for who in asking:
        await who.request({"type": "raise_hand", "raised": True})
    queue = mod.locator("#hands-list li")
    await expect(queue).to_have_count(2)
    await expect(queue.first).to_contain_text("Student y")  # the first to raise it
    await queue.first.locator("button[data-action='mod.floor']").click()
    granted = await asking[0].wait_for("granted")
    assert granted["floor"] is True
    await expect(queue).to_have_count(1)  # given the floor, the hand comes down
    await expect(queue.first).to_contain_text("Student x")
    # The one with the floor keeps the room: everyone else is muted.
    await mod.locator(
        f"#participants li[data-participant='{asking[0].participant_id}'] "
        "button[data-action='mod.mute_others']"
    ).click()
    for who in experts:

        def mine(e: dict[str, Any], me: str = who.participant_id) -> bool:
            return bool(e["participant_id"] == me)

        assert (await who.wait_for("muted", where=mine))["muted"] is True
    room = server.room()
    assert not room.participants[asking[0].participant_id].muted
    await expect(
        mod.locator(f"#participants li[data-participant='{experts[0].participant_id}']")
    ).to_contain_text("muted")
