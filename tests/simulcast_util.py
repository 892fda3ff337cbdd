"""A simulcast publisher as a browser is one: layers of the synthetic ultrasound, pre-encoded,
sent on one video section with one SSRC per layer and each packet named by its rid. For tests
and for bench/shaped."""

from __future__ import annotations

import asyncio
import fractions
import re
import time
from contextlib import suppress

import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtp import RtpPacket

from teleconsult.client.signaling import SignalingClient
from teleconsult.media.simulcast import RID_URI
from teleconsult.media.synthetic import UltrasoundTrack

from .media_util import connected, extension_map

LAYERS = {"lo": (160, 120), "mid": (320, 240), "hi": (640, 480)}
# A probe feed's layers at the rates a browser sends them (rid: width, height, bits/s), and a
# link the full size does not fit: the shaped bench and the Chromium test use both.
RATED_LAYERS: dict[str, tuple[int, int, int | None]] = {
    "q": (320, 180, 150_000),
    "h": (640, 360, 500_000),
    "f": (1280, 720, 1_800_000),
}
NARROW_LINK = ("tbf", "rate", "1mbit", "burst", "16kb", "latency", "300ms")
FPS = 30
PAYLOAD = 1000  # bytes of a frame per packet


def vp8_frames(
    width: int, height: int, count: int, gop: int, bitrate: int | None = None
) -> list[tuple[bytes, bool]]:
    """Encode `count` frames of the synthetic ultrasound at one size: (frame, keyframe). Frame
    n carries n in its stamp (media/stamp.py), for a viewer to check what it decoded."""
    source = UltrasoundTrack(width, height, FPS)
    ctx = av.CodecContext.create("libvpx", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = fractions.Fraction(1, FPS)
    ctx.bit_rate = bitrate or width * height * 3
    ctx.gop_size = gop
    ctx.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    out = []
    for n in range(count):
        frame = av.VideoFrame.from_ndarray(source.picture(n, 0), format="gray").reformat(
            format="yuv420p"
        )
        frame.pts = n
        for packet in ctx.encode(frame):
            out.append((bytes(packet), bool(packet.is_keyframe)))
    return out


class SimulcastPublisher:
    """Publishes one probe feed in layers (rid: width, height, bits/s), looping a clip of each."""

    def __init__(
        self,
        signaling: SignalingClient,
        layers: dict[str, tuple[int, int, int | None]] | None = None,
        frames: int = 60,
        gop: int = 15,
        simulcast: bool = True,
    ) -> None:
        self.signaling = signaling
        # Without simulcast, one layer sent as a plain stream (no rid), for a comparison.
        self.simulcast = simulcast
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        chosen = layers or {rid: (w, h, None) for rid, (w, h) in LAYERS.items()}
        self.clips = {rid: vp8_frames(w, h, frames, gop, b) for rid, (w, h, b) in chosen.items()}
        assert simulcast or len(self.clips) == 1
        self.task: asyncio.Task[None] | None = None
        self.frames_sent = 0

    async def publish(self) -> str:
        """Offer the layers; start sending once connected; return the stream id."""
        self.pc.addTransceiver("video", direction="sendonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        assert self.pc.localDescription is not None
        offer = self.pc.localDescription.sdp
        if not self.simulcast:
            self.rid_id = 0
            return await self._offer(offer)
        # The rid extension, unless aiortc offers it already (as it does in a process where
        # the SFU added it to aiortc's list).
        named = re.search(rf"^a=extmap:(\d+) {re.escape(RID_URI)}", offer, re.M)
        self.rid_id = int(named.group(1)) if named else 12
        extmap = "" if named else f"a=extmap:12 {RID_URI}\r\n"
        offer = offer.replace(
            "a=sendonly\r\n",
            "a=sendonly\r\n"
            + extmap
            + "".join(f"a=rid:{rid} send\r\n" for rid in self.clips)
            + "a=simulcast:send "
            + ";".join(self.clips)
            + "\r\n",
        )
        return await self._offer(offer)

    async def _offer(self, offer: str) -> str:
        """Send the offer, take the answer, start sending; return the stream id."""
        reply = await self.signaling.request(
            {"type": "publish", "sdp": offer, "feeds": [{"mid": "0", "source": "probe"}]}
        )
        self.answer = reply["sdp"]
        await self.pc.setRemoteDescription(RTCSessionDescription(reply["sdp"], "answer"))
        self.task = asyncio.create_task(self._send())
        return str(reply["stream"])

    async def _send(self) -> None:
        transceiver = self.pc.getTransceivers()[0]
        transport = await connected(self.pc)
        ids = extension_map(*([(self.rid_id, RID_URI)] if self.simulcast else []))
        found = re.search(r"^m=video \d+ \S+ (\d+)", self.answer, re.M)
        assert found is not None
        pt = int(found.group(1))
        seqs = {rid: 1000 * (i + 1) for i, rid in enumerate(self.clips)}
        ssrcs = {rid: 0x1000 + i for i, rid in enumerate(self.clips)}
        if not self.simulcast:
            ssrcs = {rid: transceiver.sender._ssrc for rid in self.clips}
        start = time.monotonic()
        n = 0
        while True:
            for rid, clip in self.clips.items():
                data, _ = clip[n % len(clip)]
                chunks = [data[i : i + PAYLOAD] for i in range(0, len(data), PAYLOAD)]
                for k, chunk in enumerate(chunks):
                    packet = RtpPacket(
                        payload_type=pt,
                        marker=int(k == len(chunks) - 1),
                        sequence_number=seqs[rid] & 0xFFFF,
                        timestamp=(n * 3000) & 0xFFFFFFFF,
                        ssrc=ssrcs[rid],
                        payload=bytes([0x10 if k == 0 else 0x00]) + chunk,
                    )
                    packet.extensions.mid = "0"
                    if self.simulcast:
                        packet.extensions.rtp_stream_id = rid
                    seqs[rid] += 1
                    with suppress(ConnectionError):
                        await transport._send_rtp(packet.serialize(ids))
            n += 1
            self.frames_sent = n
            await asyncio.sleep(max(0.0, start + n / FPS - time.monotonic()))

    async def close(self) -> None:
        """Stop sending and hang up."""
        if self.task is not None:
            self.task.cancel()
            with suppress(asyncio.CancelledError):
                await self.task
        await self.pc.close()
