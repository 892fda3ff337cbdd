"""A session recorded from real Chromium exports, plays back whole and starts with the room."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import av
import numpy as np
import pytest
import pytest_asyncio
from playwright.async_api import expect

from teleconsult.session.roles import Role

from ..conftest import Server, running_server
from ..need import executable
from ..test_media_process import TELECONSULT
from .browser_recording import BEFORE, DURING, HEADER_BAND, BrowserRecording, record_from_chromium
from .conftest import CHROMIUM_ARGS

pytestmark = pytest.mark.asyncio(loop_scope="module")

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def recorded(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[Server, BrowserRecording]]:
    """One recording for the module: made once, read by each test."""
    data = tmp_path_factory.mktemp("browser-recording")
    async with running_server(data, announce="127.0.0.1") as server:
        yield server, await record_from_chromium(server, data)


def ffprobe(path: Path) -> dict[str, object]:
    out = subprocess.run(
        [
            executable("ffprobe"),
            "-v",
            "error",
            "-show_format",
            "-show_streams",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


async def teleconsult(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the command line, off the loop."""
    return await asyncio.to_thread(
        subprocess.run, [TELECONSULT, *args], capture_output=True, text=True, timeout=120
    )


def middle(points: list[list[float]], width: int, height: int) -> tuple[int, int]:
    return (
        round((points[0][0] + points[1][0]) / 2 * width),
        round((points[0][1] + points[1][1]) / 2 * height),
    )


def green_at(img: np.ndarray, x: int, y: int) -> bool:
    b, g, r = (img[y - 6 : y + 7, x - 6 : x + 7][..., i].astype(int) for i in range(3))
    return bool(((g > 180) & (r < 90) & (b < 90)).any())


async def test_the_recording_is_seekable_and_follows_the_browser(
    recorded: tuple[Server, BrowserRecording],
) -> None:
    _, rec = recorded
    tracks = {t["kind"]: t for t in rec.manifest["tracks"]}
    assert set(tracks) == {"video", "audio"}
    video = tracks["video"]
    # The picture changed size when the camera did, and the file went on across it.
    assert len(video["sizes"]) >= 2, video
    assert (video["width"], video["height"]) == (640, 480)
    for track in rec.manifest["tracks"]:
        probe = ffprobe(rec.folder / track["file"])
        duration = float(probe["format"]["duration"])  # type: ignore[index]
        # Written at stop: a player shows the length and seeks by the cues.
        assert duration == pytest.approx(track["duration"], abs=0.1), track
        assert track["start"] is not None and 0 <= track["start"] < 2.0
        assert (
            track["start"] + duration
            > rec.manifest["stopped_at"] - rec.manifest["started_at"] - 1.5
        ), track
    # The log starts with what the room showed: the arrow and the words drawn and said before.
    first = rec.log[0]
    assert (first["t"], first["type"]) == (0.0, "snapshot")
    (arrow,) = first["channel"]["annotations"]
    (said,) = first["channel"]["chat"]
    assert arrow["id"] == "before" and said["text"] == "Look at the arrow"
    assert (said["author_name"], said["author_role"]) == ("Dr. Li", "expert")
    names = {p["identity"]: (p["name"], p["role"]) for p in rec.manifest["participants"].values()}
    assert names["op"] == ("Sonographer Wang", "operator")


async def test_the_export_burns_in_both_arrows_and_masks_the_header(
    recorded: tuple[Server, BrowserRecording], tmp_path: Path
) -> None:
    server, rec = recorded
    data_dir = str(server.hub.settings.data_dir)
    out = tmp_path / "teaching.mp4"
    mask = ",".join(f"{v:.4f}" for v in HEADER_BAND)
    done = await teleconsult(
        "export", rec.session_id, "--out", str(out), "--mask", mask, "--data-dir", data_dir
    )
    assert done.returncode == 0, done.stderr
    assert "100%" in done.stderr
    assert await asyncio.to_thread(os.listdir, tmp_path) == ["teaching.mp4"]  # no part left
    probe = ffprobe(out)
    kinds = sorted(s["codec_name"] for s in probe["streams"])  # type: ignore[attr-defined]
    assert kinds == ["aac", "h264"]
    (video,) = [t for t in rec.manifest["tracks"] if t["kind"] == "video"]
    length = float(probe["format"]["duration"])  # type: ignore[index]
    assert length == pytest.approx(video["duration"], abs=0.3)
    drawn = next(e["t"] for e in rec.log if e.get("id") == "during")
    with av.open(str(out)) as c:
        frames = [(float(f.time or 0), f.to_ndarray(format="bgr24")) for f in c.decode(video=0)]
    assert len(frames) >= 0.9 * video["frames"]
    assert {img.shape[:2] for _, img in frames} == {(480, 640)}  # one size, though it changed
    before, during = middle(BEFORE, 640, 480), middle(DURING, 640, 480)
    resized = [img for t, img in frames if video["start"] + t > rec.resized_at + 1.0]
    assert resized, "no frame after the camera changed size"
    for t, img in frames:
        # The arrow drawn before the recording is on its very first frame, and stays.
        assert green_at(img, *before), t
        at = video["start"] + t
        if at < drawn - 0.2:
            assert not green_at(img, *during), t
        elif at > drawn + 0.2:
            assert green_at(img, *during), t
        # The header band is black at every size the browser sent.
        x, y, w, h = (round(v) for v in (0, 0, 640, HEADER_BAND[3] * 480))
        assert img[y : y + h, x : x + w].mean() < 3, t
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    preview = ARTIFACTS / "export-preview.png"
    looked = await teleconsult(
        "export", rec.session_id, "--out", str(preview), "--preview", "--at", "1",
        "--mask", "0,0,640,100", "--data-dir", data_dir,
    )  # fmt: skip
    assert looked.returncode == 0, looked.stderr
    with av.open(str(preview)) as c:
        (picture,) = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    assert picture.shape[:2] == (480, 640) and green_at(picture, *before)
    assert picture[5:95, 5:635].mean() < 3  # masked (pixels of the native size), outlined red
    assert picture[0, 320, 2] > 200 and picture[0, 320, :2].max() < 60


async def test_an_export_that_fails_says_why_and_leaves_nothing(
    recorded: tuple[Server, BrowserRecording], tmp_path: Path
) -> None:
    from teleconsult.recording.export import ExportError, export

    _server, rec = recorded
    (video,) = [t for t in rec.manifest["tracks"] if t["kind"] == "video"]
    broken = tmp_path / "broken"
    await asyncio.to_thread(shutil.copytree, rec.folder, broken)
    # A ruined picture file: a Matroska header and nothing readable after it.
    await asyncio.to_thread((broken / video["file"]).write_bytes, b"\x1a\x45\xdf\xa3" + bytes(4000))
    out = tmp_path / "teaching.mp4"
    with pytest.raises(ExportError) as failed:
        await asyncio.to_thread(export, broken, out, [])
    assert "\n" not in str(failed.value)
    assert await asyncio.to_thread(os.listdir, tmp_path) == ["broken"]  # nothing at the target
    for bad in ("0,0,640", "0,0,1.5,x", "0.5,0.5,0,0.1"):
        with pytest.raises(ExportError):
            await asyncio.to_thread(export, rec.folder, out, [bad])
    assert await asyncio.to_thread(os.listdir, tmp_path) == ["broken"]


async def test_playback_starts_with_the_room_and_plays_every_track_to_its_end(
    recorded: tuple[Server, BrowserRecording],
) -> None:
    from playwright.async_api import async_playwright

    server, rec = recorded
    ends = {t["feed"]: t["start"] + t["duration"] for t in rec.manifest["tracks"]}
    span = max(ends.values())
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=executable("chromium", "chromium-browser"),
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            page = await browser.new_page()
            token = server.token(role=Role.EXPERT, identity="trainee", name="Trainee")
            await page.goto(f"{server.http}/playback/r1#token={token}")
            overlay = page.locator(f'svg.overlay[data-feed="{rec.feed}"]')
            await expect(overlay).to_have_count(1)
            # At time 0: the arrow drawn before the recording, and the words said about it,
            # by name and role.
            await page.evaluate("window.player.seek(0)")
            await expect(overlay.locator('g[data-id="before"]')).to_have_count(1)
            await expect(overlay.locator('g[data-id="during"]')).to_have_count(0)
            await expect(page.locator("#messages li")).to_have_count(1)
            await expect(page.locator("#messages li")).to_contain_text("Dr. Li")
            await expect(page.locator("#messages li")).to_contain_text("expert")
            await expect(page.locator("#messages li")).to_contain_text("Look at the arrow")
            # Play the last seconds: every track, picture and voice, plays to its own end.
            await page.evaluate(
                """() => { window.__reached = {};
                     for (const m of document.querySelectorAll('#feeds video, #feeds audio'))
                       m.addEventListener('timeupdate', () => {
                         window.__reached[m.dataset.feed] = Math.max(
                           window.__reached[m.dataset.feed] || 0, m.currentTime); }); }"""
            )
            await page.evaluate(f"window.player.seek({span - 3.0})")
            await page.click("#play")
            await page.wait_for_function(
                f"() => window.player.state.time >= {span} && !window.player.state.playing",
                timeout=15000,
            )
            await asyncio.sleep(0.5)
            reached = await page.evaluate("window.__reached")
            for t in rec.manifest["tracks"]:
                assert reached.get(t["feed"], 0) >= t["duration"] - 0.5, (t["file"], reached)
            await page.screenshot(path=str(ARTIFACTS / "playback-browser-recording.png"))
        finally:
            await browser.close()
