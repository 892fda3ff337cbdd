"""Opening the room page as one person, and the screenshots every page state leaves behind."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Browser, Locator, Page, ViewportSize, expect

from teleconsult.session.roles import Role
from teleconsult.signaling.http_api import join_url

from ..conftest import Server
from .conftest import LOOPBACK_ONLY

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"

# Every camera, microphone and screen the page opens, to tell whether capture stopped.
WATCH_CAPTURE = """
(() => {
  window.__captured = [];
  const md = navigator.mediaDevices;
  for (const name of ["getUserMedia", "getDisplayMedia"]) {
    const real = md[name] && md[name].bind(md);
    if (!real) continue;
    md[name] = async (c) => {
      const s = await real(c);
      window.__captured.push(...s.getTracks());
      return s;
    };
  }
})();
"""

DESKTOP = ViewportSize(width=1024, height=768)
TABLET = ViewportSize(width=820, height=1180)
PHONE = ViewportSize(width=390, height=844)


async def open_page(
    browser: Browser,
    server: Server,
    role: Role,
    identity: str,
    name: str,
    *,
    viewport: ViewportSize | None = None,
    locale: str = "en-US",
    room: str = "r1",
    joined: bool = True,
    token: str | None = None,
) -> Page:
    """Open one person's join link in a context of its own, and wait until it has joined.

    The context lets tests add axe-core's script past the page's Content-Security-Policy.
    """
    context = await browser.new_context(
        viewport=viewport or DESKTOP, locale=locale, has_touch=viewport == PHONE, bypass_csp=True
    )
    await context.add_init_script(LOOPBACK_ONLY)
    await context.add_init_script(WATCH_CAPTURE)
    page = await context.new_page()
    token = token or server.token(role=role, identity=identity, name=name, room=room)
    await page.goto(join_url(server.http, room, token))
    if joined:
        await expect(page.locator("#state")).to_have_attribute("data-state", "joined")
    return page


async def capturing(page: Page) -> int:
    """How many of the tracks the page captured still run."""
    return int(
        await page.evaluate("() => window.__captured.filter((t) => t.readyState === 'live').length")
    )


AXE = Path(__file__).resolve().parents[2] / "node_modules" / "axe-core" / "axe.min.js"


async def accessibility_faults(page: Page) -> list[str]:
    """The serious and critical violations axe-core finds on the page as it is now."""
    if not await page.evaluate("() => Boolean(window.axe)"):
        await page.add_script_tag(path=str(AXE))
    found = await page.evaluate(
        """async () => (await axe.run(document, { resultTypes: ["violations"] })).violations
             .filter((v) => v.impact === "serious" || v.impact === "critical")
             .map((v) => `${v.id} (${v.impact}): ` +
                  v.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", "))"""
    )
    return list(found)


async def shot(page: Page, name: str) -> None:
    """Keep a screenshot of the page as a test artefact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


async def drag_across(
    page: Page, target: Locator, start: tuple[float, float], end: tuple[float, float]
) -> None:
    """Drag the mouse over an element, between points given as fractions of its box."""
    box = await target.bounding_box()
    assert box is not None
    await page.mouse.move(box["x"] + start[0] * box["width"], box["y"] + start[1] * box["height"])
    await page.mouse.down()
    await page.mouse.move(
        box["x"] + end[0] * box["width"], box["y"] + end[1] * box["height"], steps=4
    )
    await page.mouse.up()
