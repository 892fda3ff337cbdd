"""The pages each role uses, end to end in separate Chromium contexts against the real server."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from playwright.async_api import Browser, Page, expect

from teleconsult.client.signaling import SignalingClient
from teleconsult.session.roles import Role
from teleconsult.signaling.http_api import join_url

from ..conftest import Server, annotation
from .conftest import LOOPBACK_ONLY
from .pages import drag_across, open_page, shot


async def record_states(page: Page) -> None:
    """Keep every connection state the page shows, with whether the banner showed with it.

    The page is often back within a moment, quicker than an assertion could catch the banner.
    """
    await page.evaluate(
        """() => { window.__shown = [];
             new MutationObserver(() => window.__shown.push([
                 document.getElementById("state").dataset.state,
                 !document.getElementById("banner").hidden]))
               .observe(document.getElementById("state"), { attributes: true }); }"""
    )


async def rising(page: Page, attribute: str, above: int) -> None:
    await page.wait_for_function(
        f"() => Number(document.getElementById('health').dataset.{attribute} || 0) > {above}",
        timeout=15000,
    )


async def test_a_consultation_across_the_four_pages(server: Server, chromium: Browser) -> None:
    observer = await server.join(role=Role.AUDIENCE, identity="observer")
    op = await open_page(chromium, server, Role.OPERATOR, "op", "Sonographer")
    await expect(op.locator("#operator")).to_be_visible()
    await op.click('#devices [data-row="source"] button.toggle')
    await op.click('#devices [data-row="microphone"] button.toggle')
    added = await observer.wait_for("stream_added", timeout=10)
    feed = added["stream"]["feeds"][0]
    assert feed["source"] == "probe"
    await expect(op.locator(f'figure.local[data-feed="{feed["id"]}"] video')).to_be_visible()

    ex = await open_page(chromium, server, Role.EXPERT, "ex", "Dr. Li")
    video = ex.locator(f'video[data-feed="{feed["id"]}"]')
    await expect(video).to_be_visible(timeout=10000)
    # The expert's browser decodes the probe feed and receives the operator's voice.
    await rising(ex, "framesDecoded", 20)
    await rising(ex, "samplesReceived", 10000)
    first = int(await ex.locator("#health").get_attribute("data-frames-decoded") or 0)
    await rising(ex, "framesDecoded", first + 10)
    await expect(ex.locator("#health")).to_contain_text("fps")
    # And the size decoded (which layer its link is given).
    await expect(ex.locator("#health")).to_contain_text(re.compile(r"\d+\u00d7\d+"))

    # The expert draws an arrow; the operator sees it on its own preview of that feed.
    await ex.keyboard.press("a")
    await expect(ex.locator('button[data-tool="arrow"]')).to_have_attribute("aria-pressed", "true")
    start, end = (0.25, 0.4), (0.6, 0.7)
    await drag_across(ex, ex.locator(f'svg.overlay[data-feed="{feed["id"]}"]'), start, end)
    arrow = await observer.wait_for("op", timeout=10, where=lambda e: e["op"] == "arrow")
    assert arrow["feed"] == feed["id"]
    assert arrow["points"][0] == pytest.approx(list(start), abs=0.02)
    assert arrow["points"][1] == pytest.approx(list(end), abs=0.02)
    assert isinstance(arrow.get("media_ts"), int)  # anchored to the frame on the expert's screen
    drawn = op.locator(f'svg.overlay[data-feed="{feed["id"]}"] g[data-op="arrow"] line')
    await expect(drawn).to_have_count(1)
    placed = await drawn.evaluate(
        """(line) => {
             const box = line.ownerSVGElement.getBoundingClientRect();
             const v = (a) => line[a].baseVal.value;
             return [v("x1") / box.width, v("y1") / box.height,
                     v("x2") / box.width, v("y2") / box.height];
           }"""
    )
    assert placed == pytest.approx([*start, *end], abs=0.02)

    # The audience watches but cannot draw: the tools are off, and the server would refuse.
    aud = await open_page(chromium, server, Role.AUDIENCE, "aud", "Trainee")
    await expect(aud.locator(f'video[data-feed="{feed["id"]}"]')).to_be_visible(timeout=10000)
    await expect(aud.locator('button[data-tool="arrow"]')).to_be_disabled()
    await expect(aud.locator("#tools-off")).to_be_visible()
    await expect(
        aud.locator(f'svg.overlay[data-feed="{feed["id"]}"] g[data-op="arrow"]')
    ).to_have_count(1)
    await aud.fill("#chat-text", "Which tendon is it?")
    await aud.press("#chat-text", "Enter")
    await expect(ex.locator("#messages li")).to_contain_text("Which tendon is it?")

    # The moderator removes the trainee.
    mod = await open_page(chromium, server, Role.MODERATOR, "mod", "Moderator")
    # The moderator opens "Connections": the operator's feed arriving, and each viewer's copy
    # leaving, with what flows (kbit/s, from two answers) and the viewer's loss and RTT.
    await mod.click("#links summary")
    flowing = re.compile(r"^[1-9]\d*$")
    up = mod.locator(f'#links-table tr[data-kind="up"][data-feed="{feed["id"]}"]')
    await expect(up).to_contain_text("Sonographer ↑", timeout=10000)
    await expect(up.locator("td").nth(3)).to_have_text(flowing, timeout=10000)
    for viewer in ("Dr. Li", "Trainee"):
        down = mod.locator(
            f'#links-table tr[data-kind="down"][data-feed="{feed["id"]}"]', has_text=f"{viewer} ↓"
        )
        await expect(down).to_have_count(1)
        await expect(down.locator("td").nth(3)).to_have_text(flowing, timeout=10000)
        await expect(down.locator("td").nth(5)).to_have_text(re.compile(r"^\d+(\.\d)?%$"))
    assert await mod.locator("#links").is_visible()
    assert not await ex.locator("#links").is_visible()  # a moderator's tool only
    for page, name in ((op, "operator"), (ex, "expert"), (aud, "audience"), (mod, "moderator")):
        await shot(page, name)
    trainee = mod.locator('#participants li[data-role="audience"]', has_text="Trainee")
    await trainee.locator('button[data-action="mod.remove"]').click()
    await expect(aud.locator("#ended")).to_contain_text("removed")
    await expect(
        mod.locator('#participants li[data-role="audience"]', has_text="Trainee")
    ).to_have_count(0)


async def test_the_page_reconnects_and_catches_up(server: Server, chromium: Browser) -> None:
    from teleconsult.client.media import MediaClient

    from ..media_util import PatternTrack

    op = await server.join(role=Role.OPERATOR, identity="op")
    media = MediaClient(op)
    try:
        stream = await media.publish([(PatternTrack(), "probe", "Ultrasound")])
        feed = f"{stream.id}.0"
        ex = await open_page(chromium, server, Role.EXPERT, "ex", "Dr. Li")
        await expect(ex.locator(f'video[data-feed="{feed}"]')).to_be_visible(timeout=10000)
        await op.request(annotation("arrow", "before", feed, [[0.1, 0.1], [0.3, 0.3]]))
        overlay = ex.locator(f'svg.overlay[data-feed="{feed}"]')
        await expect(overlay.locator('g[data-id="before"]')).to_have_count(1)
        # The network drops the expert; the room goes on meanwhile. The page is back at once,
        # so what it showed on the way is recorded rather than caught.
        await record_states(ex)
        await drop(server, "ex")
        await op.request(annotation("ellipse", "during", feed, [[0.4, 0.4], [0.6, 0.6]]))
        # The page may hear of the close after this line: "joined" is what it showed before.
        # A function, not an expression: polling an expression evals it, which the page's
        # content security policy refuses (it did, when the page was not back at once).
        shown = "() => window.__shown.some(([state, banner]) => state === 'reconnecting' && banner)"
        await ex.wait_for_function(shown, timeout=15000)
        await expect(ex.locator("#state")).to_have_attribute("data-state", "joined", timeout=15000)
        await expect(ex.locator("#banner")).to_be_hidden()
        await expect(ex.locator(f'video[data-feed="{feed}"]')).to_be_visible(timeout=10000)
        # What was drawn while it was away is there, and nothing twice.
        await expect(overlay.locator('g[data-id="during"]')).to_have_count(1)
        await expect(overlay.locator('g[data-id="before"]')).to_have_count(1)
    finally:
        await media.close()


async def test_chinese_interface(server: Server, chromium: Browser) -> None:
    context = await chromium.new_context(viewport={"width": 1024, "height": 768}, locale="zh-CN")
    await context.add_init_script(LOOPBACK_ONLY)
    page = await context.new_page()
    await page.goto(
        join_url(server.http, "r1", server.token(role=Role.EXPERT, identity="zh", name="李医生"))
    )
    await expect(page.locator("#state")).to_have_text("已连接")
    await expect(page.locator('button[data-tool="arrow"]')).to_have_text("箭头")
    await page.select_option("#lang", "en")
    await expect(page.locator("#state")).to_have_text("Connected")
    await expect(page.locator('button[data-tool="arrow"]')).to_have_text("Arrow")


async def test_minimal_example_client(server: Server, chromium: Browser) -> None:
    from teleconsult.client.media import MediaClient

    from ..media_util import PatternTrack

    op = await server.join(role=Role.OPERATOR, identity="op")
    media = MediaClient(op)
    try:
        stream = await media.publish([(PatternTrack(), "probe", "Ultrasound")])
        context = await chromium.new_context()
        await context.add_init_script(LOOPBACK_ONLY)
        page = await context.new_page()
        token = server.token(role=Role.EXPERT, identity="ex", name="Example")
        await page.goto(f"{server.http}/example.html#room=r1&token={token}")
        await expect(page.locator("#log")).to_contain_text("joined r1 as expert")
        video = page.locator(f'video[data-feed="{stream.id}.0"]')
        await page.wait_for_function(
            f"""() => {{ const v = document.querySelector('video[data-feed="{stream.id}.0"]');
                        return v && v.videoWidth === 320; }}""",
            timeout=15000,
        )
        await video.click(position={"x": 160, "y": 60})
        pointer = await op.wait_for("pointer")
        assert pointer["feed"] == f"{stream.id}.0"
        assert pointer["points"][0] == pytest.approx([0.5, 0.25], abs=0.03)
        await page.fill("#text", "hello from the example")
        await page.press("#text", "Enter")
        said = await op.wait_for("op", where=lambda e: e["op"] == "chat")
        assert said["text"] == "hello from the example"
    finally:
        await media.close()


async def test_recording_with_consent_from_the_pages(server: Server, chromium: Browser) -> None:
    op = await open_page(chromium, server, Role.OPERATOR, "op", "Sonographer")
    await op.click('#devices [data-row="source"] button.toggle')
    mod = await open_page(chromium, server, Role.MODERATOR, "mod", "Moderator")
    await expect(mod.locator("#recording")).to_be_hidden()
    await expect(op.locator("figure.local video")).to_be_visible()
    await mod.click("#record")
    # A probe image is published: the operator is asked whether the patient consented.
    await expect(op.locator("#consent")).to_be_visible()
    await shot(op, "operator-consent")
    await op.click("#consent-yes")
    for page in (op, mod):
        await expect(page.locator("#recording")).to_be_visible()
    await expect(mod.locator("#record")).to_have_text("Stop recording")
    await mod.click("#record")
    for page in (op, mod):
        await expect(page.locator("#recording")).to_be_hidden()
    (manifest,) = (server.hub.settings.data_dir / "recordings" / "r1").glob("*/manifest.json")
    assert '"identity": "op"' in manifest.read_text()


async def drop(server: Server, identity: str) -> None:
    """The network drops a participant: the server closes its socket."""
    await server.drop(identity)


@asynccontextmanager
async def library_page(
    server: Server, chromium: Browser
) -> AsyncIterator[tuple[Page, str, SignalingClient]]:
    """A page running the web client's protocol library as an expert, beside a probe feed.

    Yields the page (its Session is `window.s`, connected), the feed id and the operator.
    """
    from teleconsult.client.media import MediaClient

    from ..media_util import PatternTrack

    op = await server.join(role=Role.OPERATOR, identity="op")
    media = MediaClient(op)
    context = await chromium.new_context()
    try:
        stream = await media.publish([(PatternTrack(), "probe", "Ultrasound")])
        page = await context.new_page()
        await page.goto(f"{server.http}/example.html")
        await page.evaluate(
            """async (token) => {
                 const { Session } = await import("/protocol.js");
                 window.s = new Session({ url: `ws://${location.host}/ws`, room: "r1", token });
                 await window.s.connect();
               }""",
            server.token(role=Role.EXPERT, identity="ex", name="Dr. Li"),
        )
        yield page, f"{stream.id}.0", op
    finally:
        await context.close()
        await media.close()


async def test_a_drawing_made_while_the_connection_is_down_arrives(
    server: Server, chromium: Browser
) -> None:
    async with library_page(server, chromium) as (page, feed, op):
        # The browser is offline, so the connection stays down until it is back.
        await page.context.set_offline(True)
        await drop(server, "ex")
        await page.wait_for_function("() => window.s.state === 'reconnecting'", timeout=10000)
        # Drawn while the connection is down: sent again once it is back.
        await page.evaluate(
            """(feed) => { window.drawn = window.s.annotate(
                 { op: "arrow", feed, points: [[0.1, 0.1], [0.3, 0.3]] }); }""",
            feed,
        )
        await page.context.set_offline(False)
        arrow = await op.wait_for("op", timeout=15, where=lambda e: e["op"] == "arrow")
        assert arrow["author"] == await page.evaluate("() => window.s.me")
        seq = await page.evaluate("() => window.drawn.then((m) => m.seq)")
        assert seq == arrow["seq"]


async def test_a_drawing_the_room_lost_with_its_node_is_sent_again(
    server: Server, chromium: Browser
) -> None:
    from teleconsult.session.channel import Channel

    async with library_page(server, chromium) as (page, feed, op):
        first = await page.evaluate(
            """async (feed) => {
                 const m = await window.s.annotate(
                   { op: "arrow", feed, points: [[0.1, 0.1], [0.3, 0.3]] });
                 return m.seq;
               }""",
            feed,
        )
        acked = await op.wait_for("op", where=lambda e: e["op"] == "arrow")
        assert acked["seq"] == first
        # What a host killed before its journal reached Redis leaves: the room without the
        # acknowledged arrow. The expert's connection drops and comes back.
        room = server.hub.rooms.get("r1")
        assert room is not None
        kept = [json.loads(encoded) for _, encoded in room.channel.log]
        room.channel = Channel.restore([e for e in kept if e["id"] != acked["id"]])
        await drop(server, "ex")
        again = await op.wait_for("op", timeout=15, where=lambda e: e["op"] == "arrow")
        assert again["id"] == acked["id"] and again["points"] == acked["points"]
        assert {s["id"] for s in room.channel.snapshot()["annotations"]} == {acked["id"]}


async def test_the_pages_run_under_their_content_security_policy(
    server: Server, chromium: Browser
) -> None:
    """No inline script or style, nothing from elsewhere: the policy refuses nothing they use."""
    context = await chromium.new_context()
    refused: list[str] = []
    try:
        page = await context.new_page()
        page.on(
            "console",
            lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None,
        )
        token = server.token(role=Role.MODERATOR, identity="mod", name="Moderator")
        await page.goto(join_url(server.http, "r1", token))
        await expect(page.locator("#state")).to_have_attribute("data-state", "joined")
        await expect(page.locator("#tools button")).not_to_have_count(0)
        await page.goto(f"{server.http}/playback/r1#token={token}")
        await expect(page.locator("#title")).not_to_be_empty()
        await page.goto(f"{server.http}/example.html#room=r1&token={token}")
        await expect(page.locator("#status")).not_to_have_text("connecting…", timeout=5000)
        await page.wait_for_timeout(500)
        used = list(refused)  # what the pages themselves did
        # The policy is there, and is what stops an injected script.
        blocked = await page.evaluate(
            """() => new Promise((resolve) => {
                 document.addEventListener("securitypolicyviolation", () => resolve(true));
                 const s = document.createElement("script");
                 s.textContent = "window.injected = true";
                 document.body.append(s);
                 setTimeout(() => resolve(false), 2000);
               })"""
        )
        assert blocked and not await page.evaluate("() => window.injected === true")
    finally:
        await context.close()
    assert used == []
