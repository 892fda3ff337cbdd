"""Soak viewers: several subscribers in one process, counting frames without decoding.

Usage: python -m bench.soak.viewers URL ROOM STREAM T0 --tokens T1,T2,... --minutes M
Prints one JSON line a minute (minute k counts what arrived between T0 + 60k and T0 + 60k+60
seconds of wall time) and a last line with the totals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from aiortc import RTCConfiguration
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from media.aiortc_adapter import RelayPeerConnection, use_host_addresses

from ..media.subscribers import receive_raw


class Counter:
    """Frames (each counted once, retransmissions aside) and audio packets of one viewer."""

    def __init__(self) -> None:
        self.video_frames = 0
        self.audio_packets = 0
        self._seen: dict[int, None] = {}  # recent frame timestamps, oldest first

    async def on_packet(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        """Count a packet the viewer's relay receiver hands on."""
        if codec.name == "opus":
            self.audio_packets += 1
        elif packet.marker and packet.timestamp not in self._seen:
            self.video_frames += 1
            self._seen[packet.timestamp] = None
            if len(self._seen) > 64:
                del self._seen[next(iter(self._seen))]


async def subscribe_one(url: str, room: str, stream: str, token: str) -> tuple[Counter, Any]:
    """Join as a viewer and receive a stream without decoding it."""
    counter = Counter()
    pc = RelayPeerConnection(RTCConfiguration(iceServers=[]))
    return counter, await receive_raw(url, room, stream, token, pc, counter.on_packet)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("room")
    ap.add_argument("stream")
    ap.add_argument("t0", type=float, help="wall time the minutes count from")
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--minutes", type=float, required=True)
    args = ap.parse_args()
    use_host_addresses(["127.0.0.1"])
    joined = [
        await subscribe_one(args.url, args.room, args.stream, t) for t in args.tokens.split(",")
    ]
    counters = [c for c, _ in joined]
    await asyncio.sleep(max(0.0, args.t0 - time.time()))
    end = args.t0 + args.minutes * 60
    minute = 0
    last = [(c.video_frames, c.audio_packets) for c in counters]
    while time.time() < end:
        await asyncio.sleep(max(0.0, args.t0 + (minute + 1) * 60 - time.time()))
        now = [(c.video_frames, c.audio_packets) for c in counters]
        line = {
            "minute": minute,
            "video": [n[0] - p[0] for n, p in zip(now, last, strict=True)],
            "audio": [n[1] - p[1] for n, p in zip(now, last, strict=True)],
        }
        print(json.dumps(line), flush=True)
        last = now
        minute += 1
    print(json.dumps({"done": True, "video": [c.video_frames for c in counters]}), flush=True)
    for _, (client, media) in joined:  # type: ignore[misc]
        await media.close()
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
