"""Benchmark subscribers: many per process, counting frames without decoding, logging arrivals.

Usage: python -m bench.media.subscribers URL ROOM STREAM LOG --tokens T1,T2,... [--stagger S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiortc import RTCConfiguration, RTCSessionDescription
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from teleconsult.client.media import MediaClient
from teleconsult.client.replay import KEY
from teleconsult.client.signaling import SignalingClient
from teleconsult.media.aioice_adapter import use_host_addresses
from teleconsult.media.aiortc_adapter import ForwardingReceiver, RelayPeerConnection
from teleconsult.media.keyframe import vp8_frame_offset, vp8_keyframe_start

from ..janus.client import Janus
from .publisher import get_sdp, put_sdp


@dataclass
class Counter:
    """What one subscriber saw."""

    video_frames: int = 0
    audio_packets: int = 0
    connected_at: float | None = None
    first_frame_at: float | None = None
    arrivals: list[tuple[str, float]] = field(default_factory=list)
    heads: dict[int, str] = field(default_factory=dict)
    keys: set[int] = field(default_factory=set)
    audio_arrivals: list[float] = field(default_factory=list)
    # Video packets received in each whole second of wall time: the relay's output rate.
    per_second: dict[int, int] = field(default_factory=dict)

    def on_packet(self, packet: RtpPacket, codec: RTCRtpCodecParameters, layer: str = "") -> None:
        now = time.time()
        if codec.name == "opus":
            self.audio_packets += 1
            self.audio_arrivals.append(now)
            return
        second = int(now)
        self.per_second[second] = self.per_second.get(second, 0) + 1
        start = vp8_frame_offset(packet.payload)
        if start is not None:
            self.heads[packet.timestamp] = packet.payload[start : start + KEY].hex()
            if self.first_frame_at is None and vp8_keyframe_start(packet.payload):
                self.keys.add(packet.timestamp)
        if packet.marker:
            # The frame is complete: key it by its first bytes, seen in its first packet.
            self.video_frames += 1
            head = self.heads.pop(packet.timestamp, "")
            self.arrivals.append((head, now))
            if len(self.heads) > 64:
                self.heads.clear()
            # The first frame a decoder can show: a keyframe, whole (a relay that starts a
            # viewer mid-GOP delivers frames before it that cannot be decoded).
            if self.first_frame_at is None and packet.timestamp in self.keys:
                self.first_frame_at = time.monotonic()


def count_with(pc: RelayPeerConnection, on_packet: Any) -> None:
    """Hand every packet the connection's receivers get to `on_packet`, undecoded."""
    for t in pc.getTransceivers():
        receiver = t.receiver
        assert isinstance(receiver, ForwardingReceiver)
        receiver.on_packet = on_packet


async def answer_counting(pc: RelayPeerConnection, offer: str, on_packet: Any) -> str:
    """Answer an offer with a counting viewer's connection; returns the answer SDP."""
    await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    assert pc.localDescription is not None
    count_with(pc, on_packet)
    return str(pc.localDescription.sdp)


class JanusViewer:
    """A viewer of a Janus VideoRoom feed, with the same raw receiver as ours."""

    def __init__(self, url: str, feed: int, pc: RelayPeerConnection, on_packet: Any) -> None:
        self.janus = Janus(url)
        self.feed = feed
        self.pc = pc
        self.on_packet = on_packet

    async def start(self) -> None:
        """Join as subscriber, answer Janus's offer and count what arrives."""
        await self.janus.connect()
        offer = await self.janus.subscribe(self.feed)
        await self.janus.start(await answer_counting(self.pc, offer, self.on_packet))

    async def close(self) -> None:
        """Leave: close the peer connection and the Janus session."""
        await self.pc.close()
        await self.janus.close()


class DirectViewer:
    """A viewer connected straight to the publisher (SDP traded through a folder)."""

    def __init__(self, folder: str, pc: RelayPeerConnection, on_packet: Any) -> None:
        self.folder = Path(folder)
        self.pc = pc
        self.on_packet = on_packet

    async def start(self) -> None:
        """Answer the publisher's offer and count what arrives."""
        offer = await get_sdp(self.folder / "offer.sdp")
        put_sdp(self.folder / "answer.sdp", await answer_counting(self.pc, offer, self.on_packet))

    async def close(self) -> None:
        """Close the peer connection."""
        await self.pc.close()


async def subscribe_one(
    url: str, room: str, stream: str, token: str, janus: bool = False, direct: bool = False
) -> tuple[Counter, Any]:
    """Join as a viewer and count what arrives, without decoding."""
    counter = Counter()
    pc = RelayPeerConnection(RTCConfiguration(iceServers=[]))

    @pc.on("connectionstatechange")
    def _state() -> None:
        if pc.connectionState == "connected" and counter.connected_at is None:
            counter.connected_at = time.monotonic()

    if janus or direct:
        viewer: JanusViewer | DirectViewer = (
            DirectViewer(url, pc, counter.on_packet)
            if direct
            else JanusViewer(url, int(stream), pc, counter.on_packet)
        )
        await viewer.start()
        return counter, viewer
    return counter, await receive_raw(url, room, stream, token, pc, counter.on_packet)


async def receive_raw(
    url: str, room: str, stream: str, token: str, pc: RelayPeerConnection, on_packet: Any
) -> tuple[SignalingClient, MediaClient]:
    """Subscribe a relay peer connection and hand every packet it receives to `on_packet`."""
    client = SignalingClient(url, token, room)
    await client.connect()
    media = MediaClient(client)
    await media.subscribe(stream, pc=pc)
    count_with(pc, on_packet)
    return client, media


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("room")
    ap.add_argument("stream")
    ap.add_argument("log")
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--stagger", type=float, default=0.0, help="seconds between joins")
    ap.add_argument("--duration", type=float, default=30)
    ap.add_argument("--janus", action="store_true", help="URL is Janus's WebSocket API")
    ap.add_argument("--direct", action="store_true", help="URL is a folder to trade SDP in")
    args = ap.parse_args()
    use_host_addresses(["127.0.0.1"])
    joined: list[tuple[Counter, Any]] = []
    for token in args.tokens.split(","):
        joined.append(
            await subscribe_one(args.url, args.room, args.stream, token, args.janus, args.direct)
        )
        if args.stagger:
            await asyncio.sleep(args.stagger)
    print(json.dumps({"subscribed": len(joined)}), flush=True)
    await asyncio.sleep(args.duration)
    out = []
    for counter, _ in joined:
        first = None
        if counter.first_frame_at is not None and counter.connected_at is not None:
            first = counter.first_frame_at - counter.connected_at
        out.append(
            {
                "video_frames": counter.video_frames,
                "audio_packets": counter.audio_packets,
                "audio_arrivals": counter.audio_arrivals,
                "connected_to_first_frame": first,
                "arrivals": counter.arrivals,
                "per_second": counter.per_second,
            }
        )
    await asyncio.to_thread(Path(args.log).write_text, json.dumps(out))
    for _, peer in joined:
        if isinstance(peer, JanusViewer | DirectViewer):
            await peer.close()
            continue
        client, media = peer
        await media.close()
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
