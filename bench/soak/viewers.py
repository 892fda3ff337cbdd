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

from aiortc import RTCConfiguration
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from teleconsult.client.media import MediaClient
from teleconsult.client.signaling import RequestFailed, SignalingClient
from teleconsult.media.aioice_adapter import use_host_addresses
from teleconsult.media.aiortc_adapter import RelayPeerConnection

from ..media.subscribers import receive_raw


class Counter:
    """Frames (each counted once, retransmissions aside) and audio packets of one viewer."""

    def __init__(self) -> None:
        self.video_frames = 0
        self.audio_packets = 0
        self._seen: dict[int, None] = {}  # recent frame timestamps, oldest first

    def on_packet(self, packet: RtpPacket, codec: RTCRtpCodecParameters, layer: str = "") -> None:
        """Count a packet the viewer's relay receiver hands on."""
        if codec.name == "opus":
            self.audio_packets += 1
        elif packet.marker and packet.timestamp not in self._seen:
            self.video_frames += 1
            self._seen[packet.timestamp] = None
            if len(self._seen) > 64:
                del self._seen[next(iter(self._seen))]


class Viewer:
    """One viewer that keeps its subscription: taken again whenever the server ends it or its
    path fails, as `teleconsult subscribe` does, so a bad minute does not cost the rest."""

    def __init__(self, url: str, room: str, stream: str, token: str) -> None:
        self.args = (url, room, stream, token)
        self.counter = Counter()
        self.resubscribed = 0
        self._client: SignalingClient | None = None
        self._media: MediaClient | None = None
        self._pc: RelayPeerConnection | None = None

    async def start(self) -> None:
        """Join and subscribe (raises if the first subscription fails)."""
        self._client, self._media = await self._take()

    async def _take(self) -> tuple[SignalingClient, MediaClient]:
        self._pc = RelayPeerConnection(RTCConfiguration(iceServers=[]))
        url, room, stream, token = self.args
        return await receive_raw(url, room, stream, token, self._pc, self.counter.on_packet)

    async def keep(self, until: float) -> None:
        """Read the viewer's events until a wall time, subscribing again when it is lost."""
        while time.time() < until and self._client is not None:
            lost = self._pc is None or self._pc.connectionState in ("failed", "closed")
            try:
                event = await self._client.recv(timeout=0.5)
                lost = lost or (
                    event.get("type") == "unsubscribed" and event.get("reason") != "unpublished"
                )
            except TimeoutError:
                pass
            except ConnectionError:
                lost = True
            if lost:
                await self.close()
                for _ in range(20):  # bounded: a minute of tries
                    try:
                        self._client, self._media = await self._take()
                        self.resubscribed += 1
                        break
                    except (OSError, ConnectionError, TimeoutError, RequestFailed):
                        await asyncio.sleep(3)

    async def close(self) -> None:
        """Leave: close the media and the signaling connection."""
        if self._media is not None:
            await self._media.close()
        if self._client is not None:
            await self._client.close()
        self._media = self._client = None


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
    viewers = [Viewer(args.url, args.room, args.stream, t) for t in args.tokens.split(",")]
    for v in viewers:
        await v.start()
    counters = [v.counter for v in viewers]
    end = args.t0 + args.minutes * 60
    keeping = [asyncio.create_task(v.keep(end + 5)) for v in viewers]
    await asyncio.sleep(max(0.0, args.t0 - time.time()))
    minute = 0
    last = [(c.video_frames, c.audio_packets) for c in counters]
    while time.time() < end:
        await asyncio.sleep(max(0.0, args.t0 + (minute + 1) * 60 - time.time()))
        now = [(c.video_frames, c.audio_packets) for c in counters]
        line = {
            "minute": minute,
            "video": [n[0] - p[0] for n, p in zip(now, last, strict=True)],
            "audio": [n[1] - p[1] for n, p in zip(now, last, strict=True)],
            "resubscribed": [v.resubscribed for v in viewers],
        }
        print(json.dumps(line), flush=True)
        last = now
        minute += 1
    print(json.dumps({"done": True, "video": [c.video_frames for c in counters]}), flush=True)
    await asyncio.gather(*keeping)
    for v in viewers:
        await v.close()


if __name__ == "__main__":
    asyncio.run(main())
