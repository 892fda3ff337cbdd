"""What users of Jitsi Meet, Galene and LiveKit Meet expect of the room page, in real Chromium."""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from teleconsult.client.media import MediaClient
from teleconsult.session.roles import Role

from ..conftest import Server
from ..media_util import PatternTrack
from .pages import drag_across, open_page


async def expert_talking(chromium: Browser, server: Server) -> Page:
    """An expert page whose microphone is on."""
    ex = await open_page(chromium, server, Role.EXPERT, "ex", "Dr. Li")
    await ex.click("#talk-button")
    await expect(ex.locator("#talk-button")).to_have_attribute("aria-pressed", "true")
    return ex


async def test_microphone_and_speaker_are_chosen_and_kept(
    server: Server, chromium: Browser
) -> None:
    ex = await expert_talking(chromium, server)
    await ex.click("#settings summary")
    mic = ex.locator("#mic-choice")
    await expect(mic.locator("option", has_text="Fake Audio Input 2")).to_have_count(1)
    second = await mic.locator("option", has_text="Fake Audio Input 2").get_attribute("value")
    await mic.select_option(second)
    # The microphone changes while talking, without a new offer: the sender sends the new one.
    await ex.wait_for_function(
        """(id) => {
             const live = window.__captured.filter((t) => t.readyState === "live");
             return live.length === 1 && live[0].getSettings().deviceId === id;
           }""",
        arg=second,
    )
    audience = await open_page(chromium, server, Role.AUDIENCE, "aud", "Trainee")
    await expect(audience.locator("#feeds audio")).to_have_count(1, timeout=10000)
    # The voice heard is the new microphone's (the old track is stopped).
    await expect(audience.locator("#speaker")).to_have_text("Speaking: Dr. Li", timeout=15000)
    speaker = audience.locator("#speaker-choice")
    await audience.click("#settings summary")
    await expect(speaker.locator("option", has_text="Fake Audio Output 1")).to_have_count(1)
    out = await speaker.locator("option", has_text="Fake Audio Output 1").get_attribute("value")
    await speaker.select_option(out)
    await audience.wait_for_function(
        """(id) => [...document.querySelectorAll("#feeds audio")].length > 0
             && [...document.querySelectorAll("#feeds audio")].every((a) => a.sinkId === id)""",
        arg=out,
    )
    # Both are kept by the browser for the next session.
    await audience.reload()
    await audience.click("#settings summary")
    await expect(audience.locator("#speaker-choice")).to_have_value(out or "")


async def test_the_speaker_is_shown_with_everyones_connection(
    server: Server, chromium: Browser
) -> None:
    await expert_talking(chromium, server)
    aud = await open_page(chromium, server, Role.AUDIENCE, "aud", "Trainee")
    await expect(aud.locator("#speaker")).to_have_text("Speaking: Dr. Li", timeout=15000)
    li = aud.locator('#participants li[data-role="expert"]')
    await expect(li).to_have_class(re.compile("speaking"))
    await expect(li.locator(".quality")).to_have_attribute("data-quality", "good", timeout=5000)
    # Volume, per person heard: the expert's voice at 30 %.
    slider = li.locator("input.volume")
    await slider.fill("30")
    volume = await aud.evaluate(
        "() => [...document.querySelectorAll('#feeds audio')].map((a) => a.volume)"
    )
    assert volume == [pytest.approx(0.3)]
    # The moderator mutes the expert: nobody speaks once the hold is over.
    mod = await server.join(role=Role.MODERATOR, identity="mod")
    ex_id = next(p["id"] for p in mod.welcome["participants"] if p["identity"] == "ex")
    await mod.send({"type": "mute", "participant": ex_id})
    await expect(aud.locator("#speaker")).to_be_hidden(timeout=10000)


async def test_the_participant_list_is_not_rebuilt_by_pointers(
    server: Server, chromium: Browser
) -> None:
    op = await server.join(role=Role.OPERATOR, identity="op", name="Station")
    media = MediaClient(op)
    try:
        stream = await media.publish([(PatternTrack(), "probe", "Ultrasound")])
        mod = await open_page(chromium, server, Role.MODERATOR, "mod", "Moderator")
        await expect(mod.locator("#participants li")).to_have_count(2)
        await mod.evaluate(
            "() => document.querySelectorAll('#participants li').forEach((li) => li.__kept = 1)"
        )
        ex = await server.join(role=Role.EXPERT, identity="ex")
        await expect(mod.locator("#participants li")).to_have_count(3)
        await mod.evaluate(
            "() => document.querySelectorAll('#participants li').forEach((li) => li.__kept = 1)"
        )
        for i in range(30):
            await ex.send(
                {
                    "type": "annotate",
                    "op": "pointer",
                    "feed": f"{stream.id}.0",
                    "points": [[i / 30, 0.5]],
                }
            )
        await expect(mod.locator("svg.overlay .pointer")).to_have_count(1, timeout=10000)
        kept = await mod.evaluate(
            "() => [...document.querySelectorAll('#participants li')].every((li) => li.__kept)"
        )
        assert kept
    finally:
        await media.close()


async def tile_of_probe(server: Server, chromium: Browser, role: Role) -> tuple[Page, str, Any]:
    """A page of `role` showing an operator's probe feed; returns it, the feed and the media."""
    op = await server.join(role=Role.OPERATOR, identity="op", name="Station")
    media = MediaClient(op)
    stream = await media.publish([(PatternTrack(), "probe", "Ultrasound")])
    page = await open_page(chromium, server, role, "ex", "Dr. Li")
    feed = f"{stream.id}.0"
    await page.wait_for_function(
        f"""() => document.querySelector('video[data-feed="{feed}"]')?.videoWidth > 0""",
        timeout=15000,
    )
    return page, feed, media


async def test_freeze_frame_holds_the_frame_and_drawings_name_it(
    server: Server, chromium: Browser
) -> None:
    observer = await server.join(role=Role.AUDIENCE, identity="observer")
    ex, feed, media = await tile_of_probe(server, chromium, Role.EXPERT)
    try:
        figure = ex.locator(f'figure[data-feed="{feed}"]')
        await ex.keyboard.press("h")
        await expect(figure).to_have_class(re.compile("is-frozen"))
        held = int(await figure.locator("canvas.frozen").get_attribute("data-media-ts") or -1)
        assert held >= 0
        # The live picture goes on in the corner.
        corner = figure.locator("video.live-corner")
        first = await corner.evaluate("(v) => v.currentTime")
        await ex.wait_for_timeout(600)
        assert await corner.evaluate("(v) => v.currentTime") > first
        # An arrow drawn on the held frame names it, not the live one of now.
        await ex.keyboard.press("a")
        await drag_across(ex, figure.locator("svg.overlay"), (0.3, 0.3), (0.6, 0.6))
        arrow = await observer.wait_for("op", timeout=10, where=lambda e: e["op"] == "arrow")
        assert arrow["media_ts"] == held
        # The held frame is still on screen, under the arrow; the live picture has moved on.
        same = await figure.evaluate(
            """(fig) => {
                 const held = fig.querySelector("canvas.frozen");
                 const v = fig.querySelector("video.live-corner");
                 const c = document.createElement("canvas");
                 c.width = held.width; c.height = held.height;
                 c.getContext("2d").drawImage(v, 0, 0, c.width, c.height);
                 const a = held.getContext("2d").getImageData(0, 0, c.width, c.height).data;
                 const b = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
                 let diff = 0;
                 for (let i = 0; i < a.length; i += 4) diff += Math.abs(a[i] - b[i]);
                 return diff / (a.length / 4);
               }"""
        )
        assert same > 1  # grey levels apart on average: the live picture is another frame
        await ex.keyboard.press("h")
        await expect(figure).not_to_have_class(re.compile("is-frozen"))
        await expect(figure.locator("canvas.frozen, video.live-corner")).to_have_count(0)
    finally:
        await media.close()


async def test_zoom_and_pan_keep_drawings_on_the_spot(server: Server, chromium: Browser) -> None:
    observer = await server.join(role=Role.AUDIENCE, identity="observer")
    ex, feed, media = await tile_of_probe(server, chromium, Role.EXPERT)
    try:
        figure = ex.locator(f'figure[data-feed="{feed}"]')
        before = await figure.locator("svg.overlay").bounding_box()
        await figure.locator('button[data-action="zoom_in"]').click()
        await ex.keyboard.press("+")
        await ex.keyboard.press("+")
        await expect(figure).to_have_attribute("data-zoom", "1.95")
        await ex.keyboard.press("ArrowLeft")  # a look at the left of the picture
        zoomed = await figure.locator("svg.overlay").bounding_box()
        assert before is not None and zoomed is not None
        assert zoomed["width"] == pytest.approx(before["width"] * 1.953125, rel=0.02)
        # An arrow drawn at a point of the magnified picture lands at that point of the frame.
        await ex.keyboard.press("a")
        fig = await figure.bounding_box()
        assert fig is not None
        x0, y0 = fig["x"] + fig["width"] * 0.5, fig["y"] + 60
        x1, y1 = x0 + 80, y0 + 60
        await ex.mouse.move(x0, y0)
        await ex.mouse.down()
        await ex.mouse.move(x1, y1, steps=4)
        await ex.mouse.up()
        arrow = await observer.wait_for("op", timeout=10, where=lambda e: e["op"] == "arrow")
        expected = [
            [(x - zoomed["x"]) / zoomed["width"], (y - zoomed["y"]) / zoomed["height"]]
            for x, y in ((x0, y0), (x1, y1))
        ]
        got = [c for point in arrow["points"] for c in point]
        assert got == pytest.approx([c for point in expected for c in point], abs=0.01)
        await ex.keyboard.press("0")
        await expect(figure).to_have_attribute("data-zoom", "1")
        # Full screen, and back.
        await figure.locator('button[data-action="fullscreen"]').click()
        await ex.wait_for_function(
            f"""() => document.fullscreenElement?.dataset.feed === "{feed}" """
        )
        await ex.keyboard.press("m")
        await ex.wait_for_function("() => document.fullscreenElement === null")
    finally:
        await media.close()


async def test_an_expert_shares_a_screen(server: Server, chromium: Browser) -> None:
    observer = await server.join(role=Role.AUDIENCE, identity="observer")
    ex = await open_page(chromium, server, Role.EXPERT, "ex", "Dr. Li")
    await ex.click("#share")
    added = await observer.wait_for("stream_added", timeout=10)
    (feed,) = added["stream"]["feeds"]
    assert feed["source"] == "screen" and feed["kind"] == "video"
    assert feed["width"] > 0 and feed["height"] > 0  # the shared screen's own size
    await expect(ex.locator("#share")).to_have_text("Stop sharing")
    aud = await open_page(chromium, server, Role.AUDIENCE, "aud", "Trainee")
    await aud.wait_for_function(
        f"""() => document.querySelector('video[data-feed="{feed["id"]}"]')?.videoWidth > 0""",
        timeout=15000,
    )
    await ex.click("#share")
    removed = await observer.wait_for("stream_removed", timeout=10)
    assert removed["stream_id"] == added["stream"]["id"]
    await expect(aud.locator(f'video[data-feed="{feed["id"]}"]')).to_have_count(0)
    assert await ex.evaluate("() => window.__captured.every((t) => t.readyState === 'ended')")
