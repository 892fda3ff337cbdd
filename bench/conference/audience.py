"""Listeners of a case conference, many in one process, counting what arrives without decoding.

Usage: python -m bench.conference.audience URL ROOM T0 --tokens T1,T2,... --duration S
       [--experts 15] [--strip 4] [--all]

Each listener subscribes to every stream its welcome lists and (unless --all) sets aside the
experts' cameras beyond the strip as the web client does (docs/web_client.md, "A conference"):
those who spoke last stay. At the end it prints one JSON line: each listener's findings
against the script of bench.conference.speakers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCConfiguration
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from teleconsult.client.media import MediaClient, Subscription
from teleconsult.client.signaling import SignalingClient
from teleconsult.media.aioice_adapter import use_host_addresses
from teleconsult.media.aiortc_adapter import ForwardingReceiver, RelayPeerConnection

from .speakers import STEP, talkers

WINDOW = 0.1  # seconds of one bucket of arrivals
GAP = 0.4  # seconds without a voice's packets after which its next packet starts it again


@dataclass
class Heard:
    """What one listener received of one feed."""

    buckets: dict[int, int] = field(default_factory=dict)  # 100 ms window → packets
    frames: dict[int, int] = field(default_factory=dict)  # whole second → video frames
    starts: list[float] = field(default_factory=list)  # when the voice came after a gap
    last: float = 0.0
    bytes: int = 0
    seen: dict[int, None] = field(default_factory=dict)  # recent frames' timestamps


class Listener:
    """One audience member: every stream subscribed, every packet counted by feed."""

    def __init__(self, url: str, room: str, token: str, t0: float) -> None:
        self.url, self.room, self.token, self.t0 = url, room, token, t0
        self.heard: dict[str, Heard] = {}  # "who:kind:source" → what arrived
        self.sig: SignalingClient | None = None
        self.media: MediaClient | None = None
        self.subs: dict[str, tuple[Subscription, str]] = {}  # who → subscription, camera feed

    def counter(self, key: str) -> Any:
        """A receiver's packet hook that counts into `key`."""
        heard = self.heard.setdefault(key, Heard())
        video = ":video:" in key

        def on_packet(packet: RtpPacket, codec: RTCRtpCodecParameters, layer: str = "") -> None:
            now = time.time()
            heard.bytes += len(packet.payload) + 12
            if video:
                # A frame once, however often its last packet came (a retransmission).
                if packet.marker and packet.timestamp not in heard.seen:
                    heard.seen[packet.timestamp] = None
                    if len(heard.seen) > 64:
                        del heard.seen[next(iter(heard.seen))]
                    second = math.floor(now - self.t0)  # the second before t0 is -1
                    heard.frames[second] = heard.frames.get(second, 0) + 1
                return
            window = int((now - self.t0) // WINDOW)
            heard.buckets[window] = heard.buckets.get(window, 0) + 1
            if now - heard.last > GAP:
                heard.starts.append(now - self.t0)
            heard.last = now

        return on_packet

    async def join(self) -> None:
        """Join and subscribe to every stream (feeds named who:kind:source)."""
        self.sig = SignalingClient(self.url, self.token, self.room)
        await self.sig.connect()
        self.media = MediaClient(self.sig)
        ids = {p["id"]: p["identity"] for p in self.sig.welcome["participants"]}
        for stream in self.sig.welcome["streams"]:
            who = ids[stream["participant_id"]]
            feeds = {f["id"]: f for f in stream["feeds"]}
            pc = RelayPeerConnection(RTCConfiguration(iceServers=[]))
            sub = await self.media.subscribe(stream["id"], pc=pc)
            camera = ""
            for feed, track in sub.tracks.items():
                f = feeds[feed]
                key = f"{who}:{f['kind']}:{f['source']}"
                if who != "op" and f["source"] == "camera":
                    camera = feed
                for t in pc.getTransceivers():
                    if t.receiver.track is track:
                        receiver = t.receiver
                        assert isinstance(receiver, ForwardingReceiver)
                        receiver.on_packet = self.counter(key)
            self.subs[who] = (sub, camera)

    async def follow(self, until: float, strip: int | None) -> None:
        """Read events until a wall time; with a strip, pause the cameras set aside."""
        assert self.sig is not None and self.media is not None
        recent: list[str] = []  # participants, the latest to start speaking first
        ids = {p["id"]: p["identity"] for p in (self.sig.welcome or {}).get("participants", [])}
        paused: set[str] = set()
        while time.time() < until:
            try:
                event = await self.sig.recv(timeout=0.5)
            except TimeoutError:
                continue
            if event.get("type") == "joined":
                ids[event["participant"]["id"]] = event["participant"]["identity"]
            if strip is None or event.get("type") != "speaking" or not event.get("speaking"):
                continue
            who = ids.get(event["participant_id"], "")
            recent = [who, *[w for w in recent if w != who]]
            cameras = [w for w, (_, camera) in self.subs.items() if camera]
            rank = {w: recent.index(w) if w in recent else len(recent) for w in cameras}
            aside = set(sorted(cameras, key=lambda w: rank[w])[strip:])
            for w in cameras:
                if (w in aside) != (w in paused):
                    sub, camera = self.subs[w]
                    await self.media.pause(sub.id, w in aside, [camera])
                    paused ^= {w}

    def findings(self, duration: float, experts: int) -> dict[str, Any]:
        """How what arrived compares with the script."""
        voices = {k.split(":")[0]: h for k, h in self.heard.items() if ":audio:" in k}
        steps = int(duration // STEP)
        exact, third_packets, latencies = 0, 0, []
        most = 0
        for window in range(int(duration / WINDOW)):
            most = max(most, sum(1 for h in voices.values() if h.buckets.get(window)))
        for step in range(steps):
            main, second, third = (f"e{n}" for n in talkers(step, experts))
            start = step * STEP
            # Midway through the step the three loudest are the chair, main and second.
            mid = range(int((start + 4.3) / WINDOW), int((start + 4.7) / WINDOW))
            got = {w for w, h in voices.items() if any(h.buckets.get(x) for x in mid)}
            exact += got == {"e0", main, second}
            # The third talks from 3 s to 6 s, softer than the others: never heard.
            talk = range(int((start + 3.0) / WINDOW), int((start + 6.0) / WINDOW))
            third_packets += sum(voices[third].buckets.get(x, 0) for x in talk)
            for who, onset in ((main, start), (second, start + 2.0)):
                came = [s for s in voices[who].starts if onset - 0.1 <= s <= onset + 2.0]
                if step and came:  # the first step starts with everyone joining
                    latencies.append(came[0] - onset)
                elif step:
                    latencies.append(float("inf"))
        probe = next(h for k, h in self.heard.items() if k == "op:video:probe")
        seconds = [probe.frames.get(s, 0) for s in range(1, int(duration) - 1)]
        return {
            "steps": steps,
            "exact_top3": exact,
            "third_packets": third_packets,
            "most_voices_at_once": most,
            "onset_latency": latencies,
            "probe_fps_min": min(seconds, default=0),
            "probe_frames": sum(probe.frames.get(s, 0) for s in range(int(duration))),
            "bytes": sum(h.bytes for h in self.heard.values()),
            "voice_packets": sum(sum(h.buckets.values()) for h in voices.values()),
        }

    async def close(self) -> None:
        """Leave."""
        if self.media is not None:
            await self.media.close()
        if self.sig is not None:
            await self.sig.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("room")
    ap.add_argument("t0", type=float)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--duration", type=float, required=True)
    ap.add_argument("--experts", type=int, default=15)
    ap.add_argument("--strip", type=int, default=4)
    ap.add_argument("--all", action="store_true", help="pause nothing (the forward-all room)")
    ap.add_argument("--address", default="127.0.0.1", help="the address to send media from")
    args = ap.parse_args()
    use_host_addresses([args.address])
    listeners = [Listener(args.url, args.room, t, args.t0) for t in args.tokens.split(",")]
    gate = asyncio.Semaphore(4)  # joins at once: a burst of DTLS handshakes stalls the loop

    async def join(listener: Listener) -> None:
        async with gate:
            await listener.join()

    await asyncio.gather(*(join(x) for x in listeners))
    print(json.dumps({"joined": len(listeners), "at": time.time()}), flush=True)
    end = args.t0 + args.duration
    strip = None if args.all else args.strip
    await asyncio.gather(*(x.follow(end, strip) for x in listeners))
    out = [x.findings(args.duration, args.experts) for x in listeners]
    print(json.dumps({"listeners": out}), flush=True)
    for x in listeners:
        await x.close()


if __name__ == "__main__":
    asyncio.run(main())
