"""Media between real Chromium and the SFU: browsers receive, browsers publish."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, expect

from teleconsult.client.media import MediaClient
from teleconsult.session.roles import Role
from teleconsult.signaling.http_api import join_url

from ..conftest import Server, running_server
from ..media_util import PatternTrack, ToneTrack, receive


@pytest.mark.parametrize("codec", ["VP8", "H264"])
async def test_browser_shows_a_published_probe_feed(
    server: Server, browser: BrowserContext, codec: str
) -> None:
    op_sig = await server.join(role=Role.OPERATOR, identity="op", name="Sonographer")
    op = MediaClient(op_sig)
    try:
        await op.publish(
            [(PatternTrack(), "probe", "Ultrasound"), (ToneTrack(), "microphone", "")],
            video_codec=codec,
        )
        page = await browser.new_page()
        await page.goto(join_url(server.http, "r1", server.token(identity="ex", name="Dr. Li")))
        video = page.locator('video[data-source="probe"]')
        await expect(video).to_have_count(1, timeout=10000)
        await expect(page.locator("figcaption span")).to_have_text("Ultrasound")
        await expect(page.locator("audio")).to_have_count(1)
        # Frames are decoded and painted by the browser, at the publisher's size.
        await page.wait_for_function(
            """() => { const v = document.querySelector('video[data-source="probe"]');
                       return v && v.videoWidth === 320 &&
                              v.getVideoPlaybackQuality().totalVideoFrames > 30; }""",
            timeout=15000,
        )
        (down,) = [d for d in server.hub.sfu.stats()["down"] if d["feed"].endswith(".0")]
        assert down["packets"] > 30
        # Chromium took the redundant audio offered beside Opus, and plays the voice from it.
        await page.wait_for_function(
            "() => Number(document.getElementById('health').dataset.samplesReceived || 0) > 20000",
            timeout=15000,
        )
        (voice,) = [
            t for d in server.hub.sfu.downs.values() for t in d.tracks if t.up.kind == "audio"
        ]
        assert voice.sender.red is not None and voice.sender.red.wrapped > 10
    finally:
        await op.close()


@pytest.mark.parametrize(
    ("codec", "profile"), [("VP8", None), ("H264", "42e01f"), ("H264", "4d001f")]
)
async def test_browser_publishes_to_python_subscriber(
    server: Server, browser: BrowserContext, codec: str, profile: str | None
) -> None:
    page = await browser.new_page()
    await page.goto(server.http + "/room.css")  # any page of the server, for its origin
    token = server.token(role=Role.OPERATOR, identity="op", name="Sonographer")
    stream_id = await page.evaluate(
        """async ([token, codec, profile]) => {
             const { Session } = await import('/protocol.js');
             const session = new Session({ url: `ws://${location.host}/ws`, room: 'r1', token });
             await session.connect();
             const media = await navigator.mediaDevices.getUserMedia(
               { video: { width: 640, height: 480 }, audio: true });
             const feeds = media.getTracks().map((track) => ({ track,
               source: track.kind === 'video' ? 'probe' : 'microphone', label: track.kind }));
             const published = await session.publish(feeds,
               { videoCodec: codec, h264Profile: profile || undefined });
             window.session = session;
             return published.id;
           }""",
        [token, codec, profile],
    )
    ex_sig = await server.join(role=Role.EXPERT, identity="ex")
    ex = MediaClient(ex_sig)
    try:
        room = server.room()
        stream = room.streams[stream_id]
        video_feed = next(f for f in stream.feeds if f.kind == "video")
        assert video_feed.codec == codec
        sub = await ex.subscribe(stream_id)
        # The full size once the publisher's layers and the viewer's estimate have ramped up
        # (on a busy machine the first 30 frames can all be of a lower layer).
        sizes = []
        for _ in range(10):
            frames = await receive(sub.tracks[video_feed.id], 15, timeout=15)
            sizes.append((frames[-1].width, frames[-1].height))
            if sizes[-1] == (640, 480):
                break
        assert sizes[-1] == (640, 480), sizes
        audio_feed = next(f for f in stream.feeds if f.kind == "audio")
        await receive(sub.tracks[audio_feed.id], 20)
        # Chromium's voice comes as RED (each packet again in the next), unwrapped at the relay.
        red = server.hub.sfu.ups[stream_id].tracks[audio_feed.mid].receiver.red
        assert red is not None and red.malformed == 0
        if profile:
            up = server.hub.sfu.ups[stream_id].tracks[video_feed.mid]
            got = str(up.codec.parameters.get("profile-level-id", "")).lower()
            assert got[:2] == profile[:2], json.dumps(up.codec.parameters)
    finally:
        await ex.close()


async def test_browser_publishes_through_turn_only(tmp_path: Path, browser: BrowserContext) -> None:
    # A hospital network that lets nothing through but the TURN server.
    async with running_server(tmp_path, announce="127.0.0.1", turn_allow=["127.0.0.0/8"]) as server:
        page = await browser.new_page()
        await page.goto(server.http + "/room.css")
        token = server.token(role=Role.OPERATOR, identity="op", name="Sonographer")
        stream_id = await page.evaluate(
            """async (token) => {
                 const { Session } = await import('/protocol.js');
                 const session = new Session({ url: `ws://${location.host}/ws`, room: 'r1', token,
                                               relayOnly: true });
                 await session.connect();
                 const media = await navigator.mediaDevices.getUserMedia({ video: true });
                 const published = await session.publish(
                   [{ track: media.getVideoTracks()[0], source: 'probe', label: '' }]);
                 window.session = session;
                 const pc = session.connections.get(published.id);
                 const types = new Set();
                 (await pc.getStats()).forEach((s) => {
                   if (s.type === 'local-candidate') types.add(s.candidateType); });
                 window.candidateTypes = [...types];
                 return published.id;
               }""",
            token,
        )
        assert await page.evaluate("window.candidateTypes") == ["relay"]
        ex = MediaClient(await server.join(role=Role.EXPERT, identity="ex"))
        try:
            sub = await ex.subscribe(stream_id)
            await receive(sub.tracks[f"{stream_id}.0"], 30, timeout=15)
            turn = server.hub.turn
            assert turn is not None and turn.stats.relayed_bytes > 10_000
        finally:
            await ex.close()


async def test_a_feed_the_page_does_not_show_is_paused_and_comes_back(
    server: Server, browser: BrowserContext
) -> None:
    op = MediaClient(await server.join(role=Role.OPERATOR, identity="op", name="Sonographer"))
    try:
        await op.publish([(PatternTrack(), "probe", "Ultrasound")])
        page = await browser.new_page()
        await page.goto(join_url(server.http, "r1", server.token(identity="ex", name="Dr. Li")))
        figure = page.locator("figure[data-feed]")
        await expect(figure).to_have_count(1, timeout=10000)

        def paused() -> bool:
            (down,) = server.hub.sfu.stats()["down"]
            return bool(down["paused"])

        frames = "document.querySelector('video[data-source=\"probe\"]')" + (
            ".getVideoPlaybackQuality().totalVideoFrames"
        )
        await page.wait_for_function(f"() => {frames} > 20", timeout=15000)
        # The tile leaves the screen: the server stops sending it.
        await figure.evaluate("(f) => { f.style.display = 'none'; }")
        for _ in range(100):
            if paused():
                break
            await asyncio.sleep(0.05)
        assert paused()
        # Shown again: sent again, and painted (from a keyframe the server asked for).
        shown = await page.evaluate(frames)
        await figure.evaluate("(f) => { f.style.display = ''; }")
        await page.wait_for_function(f"() => {frames} > {shown + 20}", timeout=15000)
        assert not paused()
    finally:
        await op.close()
