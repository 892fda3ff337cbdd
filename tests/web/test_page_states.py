"""Every state of the pages at three widths in two languages: screenshots on one contact sheet,
and axe-core's accessibility check on each (no serious or critical violation)."""

from __future__ import annotations

import html
import re
import time

import pytest
from playwright.async_api import Browser, Page, ViewportSize, expect

from teleconsult.session.roles import Role
from teleconsult.session.room import RoomConfig
from teleconsult.signaling.tokens import mint

from ..conftest import SECRET, Server
from .pages import (
    ARTIFACTS,
    DESKTOP,
    PHONE,
    TABLET,
    accessibility_faults,
    drag_across,
    open_page,
)

SHEET = ARTIFACTS / "states"
SIZES: dict[str, ViewportSize] = {"desktop": DESKTOP, "tablet": TABLET, "phone": PHONE}
LANGUAGES = {"en": "en-US", "zh": "zh-CN"}
# The order the sheet shows them in: a session from the first link to its end.
STATES = [
    "error",
    "joining",
    "operator-live",
    "live",
    "drawing",
    "frozen",
    "held",
    "consent",
    "recording",
    "ended",
    "playback",
]


def write_sheet() -> None:
    """One HTML page with every screenshot taken so far: a row per state, a column per size."""
    rows = []
    for state in STATES:
        cells = []
        for lang in LANGUAGES:
            for size in SIZES:
                name = f"{state}-{size}-{lang}.png"
                img = (
                    f'<a href="{name}"><img src="{name}" alt="{state}, {size}, {lang}"></a>'
                    if (SHEET / name).exists()
                    else "—"
                )
                cells.append(f"<td>{img}</td>")
        rows.append(f"<tr><th>{html.escape(state)}</th>{''.join(cells)}</tr>")
    head = "".join(f"<th>{size} · {lang}</th>" for lang in LANGUAGES for size in SIZES)
    SHEET.mkdir(parents=True, exist_ok=True)
    (SHEET / "index.html").write_text(
        "<!doctype html><meta charset=utf-8><title>teleconsult page states</title>"
        "<style>body{font-family:sans-serif;background:#222;color:#eee}td{vertical-align:top}"
        "img{width:220px;border:1px solid #555}th{text-align:left;padding:4px}</style>"
        "<h1>teleconsult: every page state</h1>"
        f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"
    )


class States:
    """Takes each state's screenshot and checks it with axe-core."""

    def __init__(self, size: str, lang: str) -> None:
        self.size = size
        self.lang = lang
        self.faults: dict[str, list[str]] = {}

    async def take(self, page: Page, state: str) -> None:
        SHEET.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHEET / f"{state}-{self.size}-{self.lang}.png"))
        found = await accessibility_faults(page)
        if found:
            self.faults[state] = found


@pytest.mark.parametrize("lang", list(LANGUAGES))
@pytest.mark.parametrize("size", list(SIZES))
async def test_every_page_state(server: Server, chromium: Browser, size: str, lang: str) -> None:
    states = States(size, lang)
    viewport, locale = SIZES[size], LANGUAGES[lang]

    async def page(
        role: Role,
        identity: str,
        name: str,
        room: str = "r1",
        joined: bool = True,
        token: str | None = None,
    ) -> Page:
        return await open_page(
            chromium,
            server,
            role,
            identity,
            name,
            viewport=viewport,
            locale=locale,
            room=room,
            joined=joined,
            token=token,
        )

    # A link that has expired.
    expired = mint(SECRET, "r1", Role.EXPERT, "Late", 60, "late", now=time.time() - 120)
    error = await page(Role.EXPERT, "late", "Late", joined=False, token=expired)
    await expect(error.locator("#ended")).to_be_visible()
    await states.take(error, "error")

    # Waiting in a lobby for a moderator.
    server.hub.rooms.create("lobby", server.hub.now(), RoomConfig(title="Tumour board", lobby=True))
    waiting = await page(Role.AUDIENCE, "guest", "Guest", room="lobby", joined=False)
    await expect(waiting.locator("#state")).to_have_attribute("data-state", "waiting")
    await states.take(waiting, "joining")

    # The operator sends the probe image and a voice; the expert sees and hears it.
    op = await page(Role.OPERATOR, "op", "王医生" if lang == "zh" else "Sonographer")
    await op.fill('#devices [data-row="source"] .depth-input', "8")
    for row in ("source", "microphone"):
        toggle = op.locator(f'#devices [data-row="{row}"] button.toggle')
        await toggle.click()
        await expect(toggle).to_have_attribute("aria-pressed", "true", timeout=10000)
    ex = await page(Role.EXPERT, "ex", "李医生" if lang == "zh" else "Dr. Li")
    await expect(op.locator("#participants li")).to_have_count(2)
    await states.take(op, "operator-live")
    video = ex.locator("#feeds figure.main video")
    await expect(video).to_have_count(1, timeout=10000)
    await ex.wait_for_function(
        "() => document.querySelector('#feeds figure.main video')?.videoWidth > 0", timeout=15000
    )
    await states.take(ex, "live")

    # The expert draws an arrow and measures.
    overlay = ex.locator("#feeds figure.main svg.overlay")
    for key, (a, b) in (("a", ((0.2, 0.3), (0.5, 0.6))), ("r", ((0.3, 0.2), (0.3, 0.8)))):
        await ex.keyboard.press(key)
        await drag_across(ex, overlay, a, b)
    await expect(overlay.locator('g[data-op="ruler"] text')).to_contain_text("mm")
    await states.take(ex, "drawing")
    await ex.keyboard.press("h")
    await expect(ex.locator("#feeds figure.main")).to_have_class(re.compile("is-frozen"))
    await states.take(ex, "frozen")
    # Shown to everyone: the operator sees on its own preview what the expert points at.
    await ex.keyboard.press("g")
    await expect(op.locator("#feeds figure.is-held")).to_have_count(1, timeout=10000)
    await states.take(op, "held")
    await ex.keyboard.press("g")  # taken down: every page, the expert's too, goes live again
    await expect(op.locator("#feeds figure.is-held")).to_have_count(0, timeout=10000)
    await expect(ex.locator("#feeds figure.main")).not_to_have_class(re.compile("is-frozen"))

    # The moderator asks to record; the operator confirms the patient's consent.
    mod = await page(Role.MODERATOR, "mod", "主持人" if lang == "zh" else "Moderator")
    mod.on("dialog", lambda d: d.accept())
    await mod.click("#record")
    await expect(op.locator("#consent")).to_be_visible(timeout=10000)
    await states.take(op, "consent")
    await op.click("#consent-yes")
    await expect(mod.locator("#recording")).to_be_visible(timeout=10000)
    await states.take(mod, "recording")
    await ex.wait_for_timeout(1500)
    await mod.click("#record")
    await expect(mod.locator("#recording")).to_be_hidden(timeout=10000)

    # The recording replayed; then the moderator ends the session.
    player = await page(Role.EXPERT, "ex2", "Reviewer", joined=False)
    await player.goto(f"{server.http}/playback/r1#token={server.token(identity='ex2')}")
    await expect(player.locator("video").first).to_be_attached(timeout=10000)
    await states.take(player, "playback")
    await mod.click("#end")
    await expect(ex.locator("#ended")).to_be_visible(timeout=10000)
    assert await ex.evaluate("() => window.__captured.every((t) => t.readyState === 'ended')")
    await states.take(ex, "ended")
    write_sheet()
    assert not states.faults, "\n".join(f"{k}: {v}" for k, v in states.faults.items())


async def test_the_example_client_passes_the_accessibility_check(
    server: Server, chromium: Browser
) -> None:
    context = await chromium.new_context(bypass_csp=True)
    page = await context.new_page()
    await page.goto(f"{server.http}/example.html")
    assert await accessibility_faults(page) == []
    await context.close()
