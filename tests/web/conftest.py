"""A real headless Chromium, driven by Playwright."""

from __future__ import annotations

import math
import shlex
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
from playwright.async_api import Browser, BrowserContext, async_playwright

from teleconsult.media.synthetic import UltrasoundTrack

from ..need import executable
from ..netns import Namespace

# Without these Chromium reaches for Google's services, which this network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    # WebRTC on loopback, with a fake camera and microphone and no permission prompt.
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]


def voice_wav() -> Path:
    """A microphone's sound that counts as speech: talk at about -18 dBov for 1.6 s, a 0.4 s
    pause, looped by Chromium. Its own fake microphone only beeps for 20 ms twice a second,
    which the server rightly never takes for a speaker (media/loudness.py)."""
    path = Path(__file__).resolve().parents[2] / "test-artifacts" / "web" / "voice.wav"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        t = np.arange(96000) / 48000
        # A voice's fundamental and harmonics, its loudness moving with the syllables.
        pitch = sum(np.sin(2 * math.pi * 140 * k * t) / k for k in range(1, 6))
        syllables = 0.6 + 0.4 * np.sin(2 * math.pi * 4 * t) ** 2
        talk = 0.12 * 32767 * pitch / 2.3 * syllables * (t < 1.6)
        with wave.open(str(path), "wb") as f:
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(48000)
            f.writeframes(talk.astype(np.int16).tobytes())
    return path


def chromium_args() -> list[str]:
    """Chromium's options, its fake microphone speaking."""
    return [*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={voice_wav()}"]


# Tests talk to 127.0.0.1 only: keep the browser's other host candidates out of its SDP.
LOOPBACK_ONLY = """
(() => {
  const desc = Object.getOwnPropertyDescriptor(RTCPeerConnection.prototype, "localDescription");
  Object.defineProperty(RTCPeerConnection.prototype, "localDescription", {
    get() {
      const d = desc.get.call(this);
      if (!d) return d;
      const sdp = d.sdp.split("\\r\\n").filter(
        (l) => !l.startsWith("a=candidate:") || l.includes(" 127.0.0.1 ")).join("\\r\\n");
      return { type: d.type, sdp, toJSON() { return { type: d.type, sdp }; } };
    },
  });
})();
"""


@pytest.fixture
async def browser() -> AsyncIterator[BrowserContext]:
    path = executable("chromium", "chromium-browser")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=path, headless=True, args=chromium_args())
        context = await b.new_context()
        await context.add_init_script(LOOPBACK_ONLY)
        try:
            yield context
        finally:
            await b.close()


@asynccontextmanager
async def browser_in(
    ns: Namespace, origin: str, tmp: Path, trusted_spki: str | None = None
) -> AsyncIterator[BrowserContext]:
    """A real Chromium whose network is a namespace's: it reaches `origin` over the veth pair.

    Playwright drives it over pipes, so only its traffic crosses the namespace. An http origin
    is not loopback, so it is declared secure for the camera and microphone; an https one is
    secure on its own, its certificate trusted by its key's hash (`trusted_spki`), as a
    hospital's browsers trust its CA.
    """
    launcher = tmp / "chromium-in-namespace"
    chromium = executable("chromium", "chromium-browser")
    argv = " ".join(shlex.quote(a) for a in ns.command([chromium]))
    launcher.write_text(f'#!/bin/sh\nexec {argv} "$@"\n')
    launcher.chmod(0o755)
    if trusted_spki is not None:
        args = [*chromium_args(), f"--ignore-certificate-errors-spki-list={trusted_spki}"]
    else:
        args = [*chromium_args(), f"--unsafely-treat-insecure-origin-as-secure={origin}"]
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=str(launcher), headless=True, args=args)
        try:
            yield await b.new_context()
        finally:
            await b.close()


def write_y4m(path: Path, frames: int = 60, width: int = 320, height: int = 240) -> None:
    """A short clip of the synthetic ultrasound source, for Chromium's fake camera."""
    source = UltrasoundTrack(width, height, 30)
    with path.open("wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F30:1 Ip A1:1 C420jpeg\n".encode())
        chroma = np.full((height // 2, width // 2), 128, np.uint8).tobytes()
        for n in range(frames):
            f.write(b"FRAME\n" + source.picture(n, 0).tobytes() + chroma + chroma)


@asynccontextmanager
async def chromium_filming(clip: Path) -> AsyncIterator[Browser]:
    """A real Chromium whose camera shows a y4m clip (looped)."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=executable("chromium", "chromium-browser"),
            headless=True,
            args=[*chromium_args(), f"--use-file-for-fake-video-capture={clip}"],
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def chromium(tmp_path: Path) -> AsyncIterator[Browser]:
    """A real Chromium whose camera films the synthetic ultrasound clip."""
    clip = tmp_path / "probe.y4m"
    write_y4m(clip)
    async with chromium_filming(clip) as browser:
        yield browser
