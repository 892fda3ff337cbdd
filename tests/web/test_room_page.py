"""The join link opens a page that joins the room and shows who is there, in real Chromium."""

from __future__ import annotations

import time

from playwright.async_api import BrowserContext as Browser
from playwright.async_api import expect

from teleconsult.session.roles import Role
from teleconsult.signaling.http_api import join_url
from teleconsult.signaling.tokens import mint

from ..conftest import SECRET, Server


async def test_join_link_shows_presence_live(server: Server, browser: Browser) -> None:
    op = await server.join(role=Role.OPERATOR, name="Sonographer", identity="op")
    page = await browser.new_page()
    link = join_url(server.http, "r1", server.token(role=Role.EXPERT, name="Dr. Li", identity="li"))
    await page.goto(link)
    await expect(page.locator("#state")).to_have_attribute("data-state", "joined")
    people = page.locator("#participants li")
    await expect(people).to_have_count(2)
    await expect(page.locator("#participants")).to_contain_text("Dr. Li (you)")
    await expect(page.locator('#participants li[data-role="operator"]')).to_contain_text(
        "Sonographer"
    )
    # The token is taken out of the address bar once read.
    assert "#token" not in page.url
    assert (await op.wait_for("joined"))["participant"]["name"] == "Dr. Li"

    audience = await server.join(role=Role.AUDIENCE, name="Trainee", identity="t")
    await expect(people).to_have_count(3)
    await audience.close()
    await expect(people).to_have_count(2)

    await page.click("#leave")
    me = await op.wait_for("left", where=lambda e: e["reason"] != "disconnected")
    assert me["reason"] == "left"
    await expect(page.locator("#ended")).to_contain_text("You left")


async def test_expired_link_says_what_to_do(server: Server, browser: Browser) -> None:
    page = await browser.new_page()
    token = mint(SECRET, "r1", Role.EXPERT, "Late", 60, "late", now=time.time() - 120)
    await page.goto(join_url(server.http, "r1", token))
    await expect(page.locator("#ended")).to_contain_text("expired")
    await expect(page.locator("#state")).to_have_attribute("data-state", "closed")
    room = server.hub.rooms.get("r1")
    assert room is None or not room.participants


async def test_page_reconnects_after_the_socket_drops(server: Server, browser: Browser) -> None:
    op = await server.join(role=Role.OPERATOR, identity="op")
    page = await browser.new_page()
    await page.goto(join_url(server.http, "r1", server.token(identity="li", name="Dr. Li")))
    await expect(page.locator("#state")).to_have_attribute("data-state", "joined")
    await op.wait_for("joined")
    # Cut every connection of the expert from the server side, as a network drop would.
    await server.drop("li")
    # A dropped connection is not a goodbye: the others see it away, then back as itself.
    away = await op.wait_for("presence")
    assert away["connected"] is False
    back = await op.wait_for("presence", timeout=10)
    assert back == {"type": "presence", "participant_id": away["participant_id"], "connected": True}
    await expect(page.locator("#state")).to_have_attribute("data-state", "joined")
    await expect(page.locator("#participants li")).to_have_count(2)
