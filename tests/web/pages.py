"""Opening the room page as one person, and the screenshots every page state leaves behind."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Browser, Page, ViewportSize, expect

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
) -> Page:
    """Open one person's join link in a context of its own, and wait until it has joined."""
    context = await browser.new_context(
        viewport=viewport or DESKTOP, locale=locale, has_touch=viewport == PHONE
    )
    await context.add_init_script(LOOPBACK_ONLY)
    await context.add_init_script(WATCH_CAPTURE)
    page = await context.new_page()
    await page.goto(
        join_url(
            server.http, room, server.token(role=role, identity=identity, name=name, room=room)
        )
    )
    if joined:
        await expect(page.locator("#state")).to_have_attribute("data-state", "joined")
    return page


async def capturing(page: Page) -> int:
    """How many of the tracks the page captured still run."""
    return int(
        await page.evaluate("() => window.__captured.filter((t) => t.readyState === 'live').length")
    )


async def shot(page: Page, name: str) -> None:
    """Keep a screenshot of the page as a test artefact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
