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

from aiortc import RTCConfiguration
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from teleconsult.client.media import MediaClient
from teleconsult.client.signaling import SignalingClient
from teleconsult.media.aioice_adapter import use_host_addresses
from teleconsult.media.aiortc_adapter import ForwardingReceiver, RelayPeerConnection
from teleconsult.media.keyframe import vp8_frame_offset

from .publisher import KEY


@dataclass
class Counter:
    """What one subscriber saw."""

    video_frames: int = 0
    audio_packets: int = 0
    connected_at: float | None = None
    first_frame_at: float | None = None
    arrivals: list[tuple[str, float]] = field(default_factory=list)
    heads: dict[int, str] = field(default_factory=dict)
    audio_arrivals: list[float] = field(default_factory=list)

    async def on_packet(
        self, packet: RtpPacket, codec: RTCRtpCodecParameters, layer: str = ""
    ) -> None:
        now = time.time()
        if codec.name == "opus":
            self.audio_packets += 1
            self.audio_arrivals.append(now)
            return
        start = vp8_frame_offset(packet.payload)
        if start is not None:
            self.heads[packet.timestamp] = packet.payload[start : start + KEY].hex()
        if packet.marker:
            # The frame is complete: key it by its first bytes, seen in its first packet.
            self.video_frames += 1
            head = self.heads.pop(packet.timestamp, "")
            self.arrivals.append((head, now))
            if len(self.heads) > 64:
                self.heads.clear()
            if self.first_frame_at is None:
                self.first_frame_at = time.monotonic()


async def subscribe_one(
    url: str, room: str, stream: str, token: str
) -> tuple[Counter, tuple[SignalingClient, MediaClient]]:
    """Join as a viewer and count what arrives, without decoding."""
    counter = Counter()
    pc = RelayPeerConnection(RTCConfiguration(iceServers=[]))

    @pc.on("connectionstatechange")
    def _state() -> None:
        if pc.connectionState == "connected" and counter.connected_at is None:
            counter.connected_at = time.monotonic()

    return counter, await receive_raw(url, room, stream, token, pc, counter.on_packet)


async def receive_raw(
    url: str, room: str, stream: str, token: str, pc: RelayPeerConnection, on_packet: Any
) -> tuple[SignalingClient, MediaClient]:
    """Subscribe a relay peer connection and hand every packet it receives to `on_packet`."""
    client = SignalingClient(url, token, room)
    await client.connect()
    media = MediaClient(client)
    await media.subscribe(stream, pc=pc)
    for t in pc.getTransceivers():
        receiver = t.receiver
        assert isinstance(receiver, ForwardingReceiver)
        receiver.on_packet = on_packet
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
    args = ap.parse_args()
    use_host_addresses(["127.0.0.1"])
    joined: list[tuple[Counter, tuple[SignalingClient, MediaClient]]] = []
    for token in args.tokens.split(","):
        joined.append(await subscribe_one(args.url, args.room, args.stream, token))
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
            }
        )
    await asyncio.to_thread(Path(args.log).write_text, json.dumps(out))
    for _, (client, media) in joined:
        await media.close()
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
