"""What clinicians hit in their first hour with the room page, each in real Chromium."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from teleconsult.client.media import MediaClient
from teleconsult.session.roles import Role
from teleconsult.signaling.http_api import join_url
from teleconsult.signaling.tokens import verify

from ..conftest import SECRET, Server, running_server
from ..media_util import PatternTrack
from .pages import PHONE, capturing, open_page, shot


async def start(page: Page, row: str) -> None:
    """Start one of the operator's feeds and wait until it is sent."""
    toggle = page.locator(f'#devices [data-row="{row}"] button.toggle')
    await toggle.click()
    await expect(toggle).to_have_attribute("aria-pressed", "true", timeout=10000)


async def test_a_reload_keeps_the_session_and_a_pasted_link_opens(
    server: Server, chromium: Browser
) -> None:
    observer = await server.join(role=Role.AUDIENCE, identity="observer")
    op = await open_page(chromium, server, Role.OPERATOR, "op", "Sonographer")
    await op.fill('#devices [data-row="source"] .label-input', "Liver")
    await start(op, "source")
    first = await observer.wait_for("stream_added", timeout=10)
    assert "#token" not in op.url and "token" not in op.url

    await op.reload()
    await expect(op.locator("#state")).to_have_attribute("data-state", "joined")
    await expect(op.locator("#participants")).to_contain_text("Sonographer (you)")
    # The feed it sent runs again by itself, with its label.
    again = await observer.wait_for(
        "stream_added", timeout=15, where=lambda e: e["stream"]["id"] != first["stream"]["id"]
    )
    assert again["stream"]["feeds"][0]["label"] == "Liver"
    await expect(op.locator('#devices [data-row="source"] button.toggle')).to_have_text("Stop")
    assert "token" not in op.url
    # Nothing of the token reached the server's logs or a request line: it rides in the fragment.

    # Pasting another person's link into the same tab opens it.
    other = join_url(server.http, "r1", server.token(identity="li", name="Dr. Li"))
    await op.goto(other)
    await expect(op.locator("#participants")).to_contain_text("Dr. Li (you)", timeout=10000)
    assert await capturing(op) == 0  # the operator's camera went with the operator's page


async def test_labels_say_what_is_on_and_stay_when_messages_arrive(
    server: Server, chromium: Browser
) -> None:
    other = await server.join(role=Role.AUDIENCE, identity="aud", name="Trainee")
    ex = await open_page(chromium, server, Role.EXPERT, "ex", "Dr. Li")
    talk = ex.locator("#talk-button")
    await expect(talk).to_have_text(re.compile("Microphone off"))
    await talk.click()
    await expect(talk).to_have_text(re.compile("Microphone on"))
    await expect(talk).to_have_attribute("aria-pressed", "true")
    await ex.click("#hand")
    await expect(ex.locator("#hand")).to_have_text("Lower hand")
    await other.request({"type": "chat", "text": "hello"})
    await expect(ex.locator("#messages")).to_contain_text("hello")
    # Every incoming message used to put the labels back to their first text.
    await expect(talk).to_have_text(re.compile("Microphone on"))
    await expect(ex.locator("#hand")).to_have_text("Lower hand")
    assert await capturing(ex) == 1
    await talk.click()
    await expect(talk).to_have_text(re.compile("Microphone off"))

    # Push-to-talk by holding the button (a touch screen, a gloved hand), and by Space.
    await talk.dispatch_event("pointerdown", {"pointerType": "touch"})
    await expect(talk).to_have_attribute("aria-pressed", "true")
    await talk.dispatch_event("pointerup", {"pointerType": "touch"})
    await talk.dispatch_event("click")
    await expect(talk).to_have_attribute("aria-pressed", "false")
    await ex.locator("body").press("Escape")
    await ex.keyboard.down(" ")
    await expect(talk).to_have_attribute("aria-pressed", "true")
    await ex.keyboard.up(" ")
    await expect(talk).to_have_attribute("aria-pressed", "false")


async def test_every_ending_stops_capture_and_says_why(server: Server, chromium: Browser) -> None:
    op = await open_page(chromium, server, Role.OPERATOR, "op", "Sonographer")
    await start(op, "source")
    await start(op, "microphone")
    ex = await open_page(chromium, server, Role.EXPERT, "ex", "Dr. Li")
    await ex.click("#talk-button")
    await expect(ex.locator("#talk-button")).to_have_attribute("aria-pressed", "true")
    assert await capturing(op) == 2 and await capturing(ex) == 1

    await ex.click("#leave")
    await expect(ex.locator("#ended")).to_contain_text("You left")
    await expect(ex.locator("#main")).to_be_hidden()
    await expect(ex.locator("#rejoin")).to_be_visible()
    assert await capturing(ex) == 0

    mod = await server.join(role=Role.MODERATOR, identity="mod")
    await mod.send({"type": "end_room"})
    await expect(op.locator("#ended")).to_contain_text("This session has ended")
    await expect(op.locator("#main")).to_be_hidden()
    await expect(op.locator("#leave")).to_be_hidden()
    await expect(op.locator("#rejoin")).to_be_hidden()
    await shot(op, "ended-operator")
    assert await capturing(op) == 0


async def test_the_expert_is_told_when_the_operator_goes_and_a_second_one_comes(
    tmp_path: Path, chromium: Browser
) -> None:
    # A short reconnect grace: an operator whose network dropped is given up after 3 s.
    async with running_server(tmp_path, announce="127.0.0.1", reconnect_grace=3.0) as server:
        await operator_goes_and_comes(server, chromium)


async def operator_goes_and_comes(server: Server, chromium: Browser) -> None:
    op = await server.join(role=Role.OPERATOR, identity="op", name="Sonographer")
    media = MediaClient(op)
    try:
        await media.publish([(PatternTrack(), "probe", "Ultrasound")])
        ex = await open_page(chromium, server, Role.EXPERT, "ex", "Dr. Li")
        await expect(ex.locator("#feeds video")).to_have_count(1, timeout=10000)

        await server.drop("op")  # the network drops the operator
        await expect(ex.locator("#notices")).to_contain_text(
            "Sonographer (operator) lost the connection"
        )
        await expect(ex.locator("#notices")).to_contain_text(
            "Sonographer (operator) left", timeout=10000
        )
        await expect(ex.locator("#notices")).not_to_contain_text("lost the connection")
        await expect(ex.locator("#nofeeds")).to_contain_text("Sonographer (operator) left")
    finally:
        await media.close()

    first = await server.join(role=Role.OPERATOR, identity="op1", name="Wang")
    second = await server.join(role=Role.OPERATOR, identity="op2", name="Zhao")
    one, two = MediaClient(first), MediaClient(second)
    try:
        await one.publish([(PatternTrack(), "probe", "Liver")])
        await two.publish([(PatternTrack(), "probe", "Kidney")])
        await expect(ex.locator("#notices")).to_contain_text("A second operator, Zhao, joined")
        tiles = ex.locator("#feeds figure")
        await expect(tiles).to_have_count(2, timeout=10000)
        # Both pictures on screen at once, without scrolling.
        for i in range(2):
            box = await tiles.nth(i).bounding_box()
            assert box is not None and box["y"] + box["height"] <= 768, box
    finally:
        await one.close()
        await two.close()


async def test_the_moderator_sees_a_start_wait_for_consent_and_can_take_it_back(
    server: Server, chromium: Browser
) -> None:
    op = await server.join(role=Role.OPERATOR, identity="op", name="Station")
    media = MediaClient(op)
    people = [await server.join(role=Role.EXPERT, identity=f"ex{i}") for i in range(12)]
    try:
        await media.publish([(PatternTrack(), "probe", "Ultrasound")])
        mod = await open_page(chromium, server, Role.MODERATOR, "mod", "Moderator")
        await expect(mod.locator("#participants li")).to_have_count(14)
        # With 14 people, the session's controls are on screen, not 1,371 px down.
        for control in ("#record", "#end"):
            box = await mod.locator(control).bounding_box()
            assert box is not None and box["y"] + box["height"] <= 768, (control, box)

        await mod.click("#record")
        await op.wait_for("consent_requested", timeout=5)
        await expect(mod.locator("#record-wait")).to_be_visible()
        await expect(mod.locator("#record")).to_have_text("Cancel recording request")
        await shot(mod, "moderator-waiting-for-consent")
        await mod.click("#record")
        await expect(mod.locator("#record-wait")).to_be_hidden()
        await expect(mod.locator("#record")).to_have_text("Start recording")
        assert server.room().recording.pending_by == ""

        # Asked again, the operator declines: the moderator is told.
        await mod.click("#record")
        await op.wait_for("consent_requested", timeout=5)
        await op.send({"type": "consent", "confirmed": False})
        await expect(mod.locator("#notices")).to_contain_text("did not consent")
        await expect(mod.locator("#record")).to_have_text("Start recording")

        # Asked again and confirmed: the recorder appears, named, with nothing to press.
        await mod.click("#record")
        await op.wait_for("consent_requested", timeout=5)
        await op.send({"type": "consent", "confirmed": True})
        await expect(mod.locator("#recording")).to_be_visible(timeout=10000)
        recorder = mod.locator('#participants li[data-role="recorder"]')
        await expect(recorder).to_have_count(1)
        await expect(recorder.locator(".role")).to_have_text("recorder")
        await expect(recorder.locator("button, select")).to_have_count(0)
        await mod.click("#record")
        await expect(mod.locator("#recording")).to_be_hidden(timeout=10000)
    finally:
        await media.close()
        for p in people:
            await p.close()


async def test_rulers_measure_in_millimetres_from_the_depth_the_operator_enters(
    server: Server, chromium: Browser
) -> None:
    observer = await server.join(role=Role.AUDIENCE, identity="observer")
    op = await open_page(chromium, server, Role.OPERATOR, "op", "Sonographer")
    await start(op, "source")
    added = await observer.wait_for("stream_added", timeout=10)
    feed = added["stream"]["feeds"][0]
    assert (feed["width"], feed["height"]) == (320, 240)  # the fake camera's clip
    ex = await open_page(chromium, server, Role.EXPERT, "ex", "Dr. Li")
    overlay = ex.locator(f'svg.overlay[data-feed="{feed["id"]}"]')
    await expect(overlay).to_be_visible(timeout=10000)

    async def ruler() -> dict[str, Any]:
        await ex.keyboard.press("r")
        box = await overlay.bounding_box()
        assert box is not None
        # Top to bottom of the picture: its full height.
        await ex.mouse.move(box["x"] + box["width"] / 2, box["y"] + 1)
        await ex.mouse.down()
        await ex.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] - 1, steps=4)
        await ex.mouse.up()
        return await observer.wait_for("op", timeout=10, where=lambda e: e["op"] == "ruler")

    uncalibrated = await ruler()
    assert uncalibrated["length"]["unit"] == "px"
    await expect(ex.locator('g[data-op="ruler"] text').last).to_have_text(
        re.compile(r"^\d+(\.\d)? px$")
    )

    # The sonographer enters the machine's depth, 8 cm: the picture's height is 80 mm.
    depth = op.locator('#devices [data-row="source"] .depth-input')
    await depth.fill("8")
    await depth.press("Enter")
    changed = await observer.wait_for("feed_changed", timeout=5)
    assert changed["feed"]["pixel_spacing_mm"] == pytest.approx(80 / 240, rel=1e-5)
    measured = await ruler()
    assert measured["length"]["unit"] == "mm"
    assert 76 <= measured["length"]["value"] <= 80
    await expect(ex.locator('g[data-op="ruler"] text').last).to_have_text(
        re.compile(r"^\d+(\.\d+)? mm$")
    )
    # The first ruler keeps the length it was drawn with.
    await expect(ex.locator('g[data-op="ruler"] text').first).to_contain_text("px")


async def test_a_phone_shows_every_control_and_the_fonts_it_needs(
    server: Server, chromium: Browser
) -> None:
    ex = await open_page(
        chromium, server, Role.EXPERT, "ex", "李医生", viewport=PHONE, locale="zh-CN"
    )
    for control in ("#leave", "#talk-button", "#hand", "#lang"):
        box = await ex.locator(control).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (
            control
        )
        assert box["height"] >= 44, control  # reachable with gloves
    await expect(ex.locator("#leave")).to_have_text("离开")
    # Chinese text and the raised hand are drawn with glyphs of their own, not one box for all.
    distinct = await ex.evaluate(
        """() => {
             const draw = (ch) => {
               const c = document.createElement("canvas");
               c.width = c.height = 40;
               const g = c.getContext("2d");
               g.font = "32px " + getComputedStyle(document.body).fontFamily;
               g.fillText(ch, 2, 32);
               return Array.from(g.getImageData(0, 0, 40, 40).data).join();
             };
             const missing = draw("\\u{E000}");  // a private-use point no font has: the box
             const other = (ch) => draw(ch === "诊" ? "会" : "诊");
             return ["会", "诊", "✋"].map((ch) => draw(ch) !== missing && draw(ch) !== other(ch));
           }"""
    )
    assert distinct == [True, True, True]
    await ex.click("#hand")
    await expect(ex.locator("#participants .hand")).to_contain_text("✋")
    await shot(ex, "phone-zh-hand")


async def test_a_revoked_link_is_told_why(server: Server, chromium: Browser) -> None:
    token = server.token(role=Role.EXPERT, identity="ex", name="Dr. Li")
    context = await chromium.new_context()
    page = await context.new_page()
    await page.goto(join_url(server.http, "r1", token))
    await expect(page.locator("#state")).to_have_attribute("data-state", "joined")
    grant = verify(SECRET, token)
    await server.hub.revoke("r1", grant.token_id, grant.expires_at)
    await expect(page.locator("#ended")).to_contain_text("Your link was withdrawn")
    # And after a reload, the server's refusal says the same.
    await page.reload()
    await expect(page.locator("#ended")).to_contain_text("Your link was withdrawn")
    await context.close()


async def test_an_operator_made_expert_stops_sending(server: Server, chromium: Browser) -> None:
    observer = await server.join(role=Role.AUDIENCE, identity="observer")
    op = await open_page(chromium, server, Role.OPERATOR, "op", "Sonographer")
    await start(op, "source")
    added = await observer.wait_for("stream_added", timeout=10)
    mod = await server.join(role=Role.MODERATOR, identity="mod")
    me = next(p["id"] for p in mod.welcome["participants"] if p["identity"] == "op")
    await mod.send({"type": "set_role", "participant": me, "role": "expert"})
    removed = await observer.wait_for("stream_removed", timeout=10)
    assert removed["stream_id"] == added["stream"]["id"]
    await expect(op.locator("#operator")).to_be_hidden()
    await expect(op.locator("#notices")).to_contain_text("Your role is now: expert")
    assert await capturing(op) == 0
