"""A Chromium viewer behind a link the test narrows: the SFU sends it a lower simulcast layer
while the link is narrow and the full size again once it widens, one stream throughout whose
decoder never starts over (issue 15)."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

from teleconsult.client.signaling import SignalingClient
from teleconsult.media.aioice_adapter import use_host_addresses
from teleconsult.session.roles import Role
from teleconsult.signaling.tokens import mint

from ..conftest import SECRET, server_process
from ..netns import namespace
from ..simulcast_util import FPS, NARROW_LINK, RATED_LAYERS, SimulcastPublisher
from .conftest import browser_in

ROOM = "van"
FULL = 1280
NARROWED_S = 15
DOWN_WITHIN, SETTLED_AFTER, UP_WITHIN = 5.0, 5.0, 10.0

# In the page: subscribe to the stream and sample the viewer's inbound video every 250 ms.
VIEW = """async ([token, room, stream]) => {
  const { Session } = await import('/protocol.js');
  const viewer = new Session({ url: `ws://${location.host}/ws`, room, token });
  await viewer.connect();
  const sub = await viewer.subscribe(stream);
  const video = document.createElement('video');
  video.muted = true;
  video.srcObject = new MediaStream([...sub.tracks.values()]);
  document.body.append(video);
  await video.play();
  window.__samples = [];
  setInterval(async () => {
    for (const r of (await sub.pc.getStats()).values()) {
      if (r.type !== 'inbound-rtp' || r.kind !== 'video') continue;
      window.__samples.push({ at: Date.now() / 1000, ssrc: r.ssrc, width: r.frameWidth || 0,
                              decoded: r.framesDecoded || 0, keys: r.keyFramesDecoded || 0 });
    }
  }, 250);
}"""


async def samples(page: Any, since: float = 0.0) -> list[dict[str, Any]]:
    return list(await page.evaluate("(t) => window.__samples.filter((s) => s.at >= t)", since))


async def until_width(page: Any, test: Any, since: float, timeout: float) -> float | None:
    """Seconds from `since` until a sample's width passes `test`, or None within `timeout`."""
    for _ in range(int(timeout * 4) + 1):
        hit = next((s for s in await samples(page, since) if test(s["width"])), None)
        if hit is not None:
            return float(hit["at"]) - since
        await asyncio.sleep(0.25)
    return None


def longest_still(rows: list[dict[str, Any]]) -> float:
    """The longest time between samples at which the count of decoded frames did not grow."""
    longest, since = 0.0, rows[0]["at"]
    for a, b in itertools.pairwise(rows):
        if b["decoded"] > a["decoded"]:
            since = b["at"]
        longest = max(longest, b["at"] - since)
    return longest


async def test_a_viewer_behind_a_narrowed_link_goes_down_and_back_up_decoding_throughout(
    tmp_path: Path,
) -> None:
    with namespace(6) as ns, server_process(tmp_path / "data", host=ns.host) as (port, _):
        origin = f"http://{ns.host}:{port}"
        use_host_addresses([ns.host])
        sig = SignalingClient(
            f"ws://{ns.host}:{port}/ws", mint(SECRET, ROOM, Role.OPERATOR, "op", 3600, "op"), ROOM
        )
        publisher = SimulcastPublisher(sig, layers=RATED_LAYERS, frames=90, gop=30)
        try:
            await sig.connect()
            stream = await publisher.publish()
            async with browser_in(ns, origin, tmp_path) as context:
                page = await context.new_page()
                await page.goto(origin + "/room.css")  # any page of the server: its origin
                token = mint(SECRET, ROOM, Role.EXPERT, "ex", 3600, "ex")
                await page.evaluate(VIEW, [token, ROOM, stream])
                start = time.time()
                full = await until_width(page, lambda w: w == FULL, start, 20)
                assert full is not None, (await samples(page))[-5:]
                await asyncio.sleep(2)
                cap = time.time()
                with ns.shaped(*NARROW_LINK):
                    down = await until_width(page, lambda w: 0 < w < FULL, cap, DOWN_WITHIN + 5)
                    await asyncio.sleep(max(0.0, cap + NARROWED_S - time.time()))
                    lift = time.time()
                up = await until_width(page, lambda w: w == FULL, lift, UP_WITHIN + 5)
                rows = await samples(page)
        finally:
            await publisher.close()
            await sig.close()
            use_host_addresses(None)
    capped = [r for r in rows if cap + SETTLED_AFTER <= r["at"] <= lift]
    decoded = capped[-1]["decoded"] - capped[0]["decoded"]
    share = decoded / (FPS * (capped[-1]["at"] - capped[0]["at"]))
    still = longest_still(capped)
    print(
        f"full size {full:.1f} s after joining; down {down} s after the cap; while capped "
        f"{share:.0%} of frames decoded, widths {sorted({r['width'] for r in capped})}, "
        f"longest still {still:.2f} s; full size {up} s after the lift"
    )
    assert down is not None and down <= DOWN_WITHIN, down
    # On the lower layer the picture goes on: nearly every frame, no freeze.
    assert all(0 < r["width"] < FULL for r in capped), sorted({r["width"] for r in capped})
    assert share >= 0.9 and still < 1.0, (share, still)
    assert up is not None and up <= UP_WITHIN, up
    # One stream whose decoder never started over: one SSRC, its frame count only growing.
    assert len({r["ssrc"] for r in rows}) == 1
    assert all(b["decoded"] >= a["decoded"] for a, b in itertools.pairwise(rows))
