"""A browser publishing through the relay is allowed what its path carries, as in a direct call."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser

from teleconsult.session.roles import Role

from ..conftest import Server
from .conftest import LOOPBACK_ONLY, chromium_filming, write_y4m

# What a probe feed must reach on loopback, within this long after it starts (issue 15).
FULL = (1920, 1080)
AT_LEAST = 1_500_000
WITHIN = 15

# Samples, once a second for `seconds`, what the sender was allowed and sent (its largest
# layer, and which simulcast layers went) and what the receiver decoded: from both ends'
# getStats.
SAMPLE = """
async function sample(sender, receiver, seconds) {
  const out = [];
  let last = null;
  for (let i = 0; i < seconds; i++) {
    await new Promise((r) => setTimeout(r, 1000));
    const s = { t: i + 1 };
    for (const r of (await sender.getStats()).values()) {
      if (r.type === "candidate-pair" && r.nominated && r.availableOutgoingBitrate)
        s.allowed = r.availableOutgoingBitrate;
      if (r.type !== "outbound-rtp" || r.kind !== "video") continue;
      if ((r.frameWidth || 0) >= (s.sentWidth || 0)) {
        s.sentWidth = r.frameWidth; s.sentHeight = r.frameHeight; s.target = r.targetBitrate;
      }
      if (r.rid && r.bytesSent > 0) s.layers = [...(s.layers || []), r.rid].sort();
    }
    for (const r of (await receiver.getStats()).values()) {
      if (r.type === "inbound-rtp" && r.kind === "video") {
        s.width = r.frameWidth; s.decoded = r.framesDecoded;
        if (last) s.bitrate = 8 * (r.bytesReceived - last.bytes) / ((r.timestamp - last.ts) / 1000);
        last = { bytes: r.bytesReceived, ts: r.timestamp };
      }
    }
    out.push(s);
  }
  return out;
}
"""


@pytest.fixture
async def chromium(tmp_path: Path) -> AsyncIterator[Browser]:
    # A 1080p ultrasound-like clip (speckle changes every frame) as the browser's camera.
    clip = tmp_path / "probe-1080p.y4m"
    write_y4m(clip, frames=30, width=FULL[0], height=FULL[1])
    async with chromium_filming(clip) as browser:
        yield browser


def reached(samples: list[dict[str, Any]]) -> int | None:
    """Return the second at which the receiver first decoded full size at the bitrate wanted."""
    for s in samples:
        if s.get("width") == FULL[0] and (s.get("bitrate") or 0) >= AT_LEAST:
            return int(s["t"])
    return None


async def test_a_probe_feed_through_the_relay_gets_what_the_path_carries(
    server: Server, chromium: Browser
) -> None:
    context = await chromium.new_context()
    await context.add_init_script(LOOPBACK_ONLY)
    page = await context.new_page()
    await page.goto(server.http + "/room.css")  # any page of the server, for its origin
    op = server.token(role=Role.OPERATOR, identity="op", name="Sonographer")
    ex = server.token(role=Role.EXPERT, identity="ex", name="Dr. Li")
    relayed = await page.evaluate(
        """async ([op, ex, width, height, seconds]) => {
          __SAMPLE__
          const { Session } = await import('/protocol.js');
          const media = await navigator.mediaDevices.getUserMedia({ video: { width, height } });
          const connect = async (token) => {
            const s = new Session({ url: `ws://${location.host}/ws`, room: 'r1', token });
            await s.connect();
            return s;
          };
          const publisher = await connect(op), viewer = await connect(ex);
          const track = media.getVideoTracks()[0];
          const published = await publisher.publish([{ track, source: 'probe', label: 'Probe' }]);
          const sub = await viewer.subscribe(published.id);
          const video = document.createElement('video');
          video.muted = true;
          video.srcObject = new MediaStream([...sub.tracks.values()]);
          document.body.append(video);
          await video.play();
          const samples = await sample(published.pc, sub.pc, seconds);
          publisher.leave(); viewer.leave();
          return samples;
        }""".replace("__SAMPLE__", SAMPLE),
        [op, ex, FULL[0], FULL[1], WITHIN + 3],
    )
    direct = await page.evaluate(
        """async ([width, height, seconds]) => {
          __SAMPLE__
          const { SEND_POLICY } = await import('/protocol.js');
          const media = await navigator.mediaDevices.getUserMedia({ video: { width, height } });
          const track = media.getVideoTracks()[0];
          const policy = SEND_POLICY.probe;
          track.contentHint = policy.contentHint;
          const a = new RTCPeerConnection(), b = new RTCPeerConnection();
          a.onicecandidate = (e) => e.candidate && b.addIceCandidate(e.candidate);
          b.onicecandidate = (e) => e.candidate && a.addIceCandidate(e.candidate);
          const t = a.addTransceiver(track, { direction: 'sendonly',
                                              sendEncodings: [{ maxBitrate: policy.maxBitrate }] });
          const shown = new Promise((resolve) => { b.ontrack = (e) => resolve(e.track); });
          await a.setLocalDescription();
          await b.setRemoteDescription(a.localDescription);
          await b.setLocalDescription();
          await a.setRemoteDescription(b.localDescription);
          await t.sender.setParameters({ ...t.sender.getParameters(),
                                         degradationPreference: policy.degradationPreference });
          const video = document.createElement('video');
          video.muted = true;
          video.srcObject = new MediaStream([await shown]);
          document.body.append(video);
          await video.play();
          const samples = await sample(a, b, seconds);
          a.close(); b.close();
          return samples;
        }""".replace("__SAMPLE__", SAMPLE),
        [FULL[0], FULL[1], WITHIN + 3],
    )
    print(json.dumps({"relayed": relayed, "direct": direct}))
    # The baseline: on this machine, a direct call gets there (else the test proves nothing).
    assert reached(direct) is not None, direct
    when = reached(relayed)
    assert when is not None and when <= WITHIN, relayed
    # Through the relay the page sent the three simulcast layers, the full size among them.
    assert relayed[-1].get("layers") == ["f", "h", "q"], relayed
