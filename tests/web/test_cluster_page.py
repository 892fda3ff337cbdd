"""The room page on a cluster: reached through a node that does not host the room, and carried
through the loss of the node that did."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from playwright.async_api import Browser, expect

from teleconsult.client.media import MediaClient
from teleconsult.session.roles import Role
from teleconsult.signaling.http_api import join_url
from teleconsult.signaling.tokens import mint

from ..conftest import SECRET, annotation
from ..media_util import PatternTrack
from ..redis_server import RedisServer
from ..test_cluster import node
from .conftest import LOOPBACK_ONLY
from .pages import shot
from .test_pages import record_states


async def frames(page: object) -> int:
    value = await page.evaluate(  # type: ignore[attr-defined]
        "() => Number(document.getElementById('health').dataset.framesDecoded || 0)"
    )
    return int(value)


async def test_the_page_rides_out_the_loss_of_the_rooms_node(
    tmp_path: Path, redis: RedisServer, chromium: Browser
) -> None:
    with node(tmp_path, redis, "a") as a, node(tmp_path, redis, "b") as b:
        op = a.client("ward-3", Role.OPERATOR, "op")  # the room opens on node a
        await op.connect()
        media = MediaClient(op)
        try:
            stream = await media.publish([(PatternTrack(), "probe", "Ultrasound")])
            feed = f"{stream.id}.0"
            # The expert's page reaches node b: signaling relayed to a, media cascaded to b.
            context = await chromium.new_context(viewport={"width": 1024, "height": 768})
            await context.add_init_script(LOOPBACK_ONLY)
            page = await context.new_page()
            token = mint(SECRET, "ward-3", Role.EXPERT, "Dr. Li", 3600, "ex")
            await page.goto(join_url(f"http://127.0.0.1:{b.port}", "ward-3", token))
            await expect(page.locator("#state")).to_have_attribute("data-state", "joined")
            await expect(page.locator(f'video[data-feed="{feed}"]')).to_be_visible(timeout=10000)
            await page.wait_for_function(
                "() => Number(document.getElementById('health').dataset.framesDecoded || 0) > 20",
                timeout=15000,
            )
            await op.request(annotation("arrow", "before", feed, [[0.1, 0.1], [0.3, 0.3]]))
            overlay = page.locator(f'svg.overlay[data-feed="{feed}"]')
            await expect(overlay.locator('g[data-id="before"]')).to_have_count(1)

            await media.close()
            await record_states(page)
            os.kill(a.proc.pid, signal.SIGKILL)  # the room's node dies
            a.proc.wait(5)
            # The page reconnects by itself and the room comes back on node b, drawing intact.
            await page.wait_for_function(
                "() => window.__shown.some(([s, banner]) => s === 'reconnecting' && banner)",
                timeout=10000,
            )
            await expect(page.locator("#state")).to_have_attribute(
                "data-state", "joined", timeout=20000
            )
            await expect(page.locator("#banner")).to_be_hidden()
            await shot(page, "expert-after-node-loss")
            # The operator's station reconnects too (through b) and publishes again.
            op2 = b.client("ward-3", Role.OPERATOR, "op")
            await op2.connect()
            media2 = MediaClient(op2)
            try:
                again = await media2.publish([(PatternTrack(), "probe", "Ultrasound")])
                feed2 = f"{again.id}.0"
                await expect(page.locator(f'video[data-feed="{feed2}"]')).to_be_visible(
                    timeout=10000
                )
                before = await frames(page)
                await page.wait_for_function(
                    "() => Number(document.getElementById('health').dataset.framesDecoded || 0)"
                    f" > {before + 20}",
                    timeout=15000,
                )
                await op2.request(annotation("arrow", "after", feed2, [[0.5, 0.5], [0.7, 0.7]]))
                overlay2 = page.locator(f'svg.overlay[data-feed="{feed2}"]')
                await expect(overlay2.locator('g[data-id="after"]')).to_have_count(1)
                # The drawing made before the loss is kept in the channel, not shown twice.
                shapes = {s["id"] for s in op2.welcome["channel"]["annotations"]}
                assert "before" in shapes
            finally:
                await media2.close()
                await op2.close()
        finally:
            await media.close()
            await op.close()


async def test_a_session_recorded_on_one_node_plays_from_another(
    tmp_path: Path, redis: RedisServer, chromium: Browser
) -> None:
    import asyncio

    from ..media_util import PacketTrack, vp8_frames

    with node(tmp_path, redis, "a") as a, node(tmp_path, redis, "b") as b:
        mod = a.client("teaching", Role.MODERATOR, "mod")
        await mod.connect()
        media = MediaClient(mod)
        try:
            stream = await media.publish(
                [(PacketTrack("video", vp8_frames(60, 15), 30, 90000), "camera", "Room")]
            )
            feed = f"{stream.id}.0"
            await mod.send({"type": "record", "action": "start"})
            await mod.wait_for("recording", where=lambda e: e["active"] is True)
            await asyncio.sleep(1.0)
            await mod.request(annotation("arrow", "shown", feed, [[0.2, 0.2], [0.4, 0.4]]))
            await asyncio.sleep(1.5)
            await mod.send({"type": "record", "action": "stop"})
            await mod.wait_for("recording", where=lambda e: e["active"] is False)
        finally:
            await media.close()
            await mod.close()
        await asyncio.sleep(0.5)
        # The files are on a; the page is opened on b: links go to a (cross-origin).
        context = await chromium.new_context()
        page = await context.new_page()
        token = mint(SECRET, "teaching", Role.EXPERT, "Dr. Li", 3600, "ex")
        await page.goto(f"http://127.0.0.1:{b.port}/playback/teaching#token={token}")
        video = page.locator(f'video[data-feed="{feed}"]')
        await expect(video).to_have_count(1, timeout=10000)
        await page.wait_for_function(
            f"""() => document.querySelector('video[data-feed="{feed}"]').readyState >= 2""",
            timeout=10000,
        )
        src = await video.evaluate("v => v.src")
        assert src.startswith(f"http://127.0.0.1:{a.port}/")
        await page.evaluate("window.player.seek(2.2)")
        overlay = page.locator(f'svg.overlay[data-feed="{feed}"]')
        await expect(overlay.locator('g[data-id="shown"]')).to_have_count(1)
