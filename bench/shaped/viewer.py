"""One viewer on a shaped link: decodes what it gets and checks every picture's stamp.

Usage: python -m bench.shaped.viewer URL ROOM STREAM TOKEN ADDRESS T0 --seconds S
                                     [--loss 0.1] [--delay 0.05]

Run inside the viewer's network namespace. With --loss and --delay its media (RTP and RTCP,
both ways) is dropped at that rate and held that long each way, in this process, since this
kernel has no netem. Prints one JSON line a second (second k counts what was decoded between
T0 + k and T0 + k + 1 of wall time) and a last line with the totals.

A picture counts as corrupted when it fails to decode, its stamp (media/stamp.py, the clip's
frame number) cannot be read, or the stamp disagrees with its RTP timestamp: a decoder fed a
frame whose references it never got shows garbage, not an error.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import queue
import random
import threading
import time
from typing import Any

import aioice.ice
import av
from aiortc import RTCConfiguration
from aiortc.codecs.vpx import vp8_depayload
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from teleconsult.media import stamp
from teleconsult.media.aioice_adapter import use_host_addresses
from teleconsult.media.aiortc_adapter import RelayPeerConnection
from teleconsult.media.aiortc_codecs import add_relay_codecs
from teleconsult.recording.frames import FrameAssembler

from ..media.subscribers import receive_raw

TICKS_PER_FRAME = 3000  # 90 kHz at 30 frames/s, the publisher's spacing


def shape_media(loss: float, delay: float, seed: int = 1) -> None:
    """Drop RTP/RTCP at `loss` and hold it `delay` seconds, both ways, on every ICE socket."""
    rng = random.Random(seed)
    received = aioice.ice.StunProtocol.datagram_received

    def media(data: bytes | str) -> bool:
        return isinstance(data, bytes) and len(data) > 1 and 128 <= data[0] <= 191

    def arriving(self: Any, data: bytes | str, addr: tuple[Any, ...]) -> None:
        if not media(data):
            received(self, data, addr)
        elif rng.random() >= loss:
            asyncio.get_running_loop().call_later(delay, received, self, data, addr)

    async def sending(self: Any, data: bytes, addr: tuple[str, int]) -> None:
        if not media(data):
            self.transport.sendto(data, addr)
        elif rng.random() >= loss:
            asyncio.get_running_loop().call_later(delay, self.transport.sendto, data, addr)

    aioice.ice.StunProtocol.datagram_received = arriving  # type: ignore[method-assign]
    aioice.ice.StunProtocol.send_data = sending  # type: ignore[method-assign]


class Watcher:
    """Assembles, decodes and checks one video track's frames; counts audio aside."""

    def __init__(self, clip_frames: int) -> None:
        self.clip = clip_frames
        self.assembler = FrameAssembler("VP8", 90000, vp8_depayload)
        self.decoder = av.CodecContext.create("vp8", "r")
        self.decoded: list[float] = []  # arrival times of good pictures
        self.corrupted: list[float] = []
        self.bytes: list[tuple[float, int]] = []
        self.width = 0
        self._last: tuple[int, int] | None = None  # (timestamp, frame number) of the last good
        # Decoding and checking run on a thread of their own (PyAV lets go of the GIL while
        # it decodes): done in the event loop they held back the packets behind each big
        # frame, and the transport-wide feedback reported their late arrival as congestion.
        self._frames: queue.SimpleQueue[tuple[int, bytes, bool, float] | None] = queue.SimpleQueue()
        self._worker = threading.Thread(target=self._work, daemon=True)
        self._worker.start()

    def _work(self) -> None:
        while (item := self._frames.get()) is not None:
            self._check(*item)

    def close(self) -> None:
        """Stop the decoding thread once what it has is checked (bounded: 10 s)."""
        self._frames.put(None)
        self._worker.join(10)

    def on_packet(self, packet: RtpPacket, codec: RTCRtpCodecParameters, layer: str = "") -> None:
        """Take a packet the relay receiver hands on."""
        now = time.time()
        self.bytes.append((now, len(packet.payload) + packet.padding_size))
        if codec.name != "VP8":
            return
        for frame in self.assembler.push(
            packet.sequence_number, packet.timestamp, bool(packet.marker), packet.payload
        ):
            self._frames.put((frame.timestamp, frame.data, frame.keyframe, now))

    def _check(self, timestamp: int, data: bytes, key: bool, now: float) -> None:
        try:
            pictures = self.decoder.decode(av.Packet(data))
        except av.FFmpegError:
            self.corrupted.append(now)
            self._last = None
            return
        for picture in pictures:
            self.width = picture.width
            read = stamp.read(picture.to_ndarray(format="gray"))
            if read is None:
                self.corrupted.append(now)
                self._last = None
                continue
            number = read[1]
            if self._last is not None and not key:
                ticks = (timestamp - self._last[0]) % (1 << 32)
                if (self._last[1] + round(ticks / TICKS_PER_FRAME)) % self.clip != number:
                    self.corrupted.append(now)
                    self._last = None
                    continue
            self._last = (timestamp, number)
            self.decoded.append(now)


def second(watcher: Watcher, start: float) -> dict[str, Any]:
    """What the watcher decoded in the second from `start`."""
    end = start + 1
    times = [t for t in watcher.decoded if start <= t < end]
    points = [start, *times, end]
    return {
        "decoded": len(times),
        "corrupted": sum(1 for t in watcher.corrupted if start <= t < end),
        "width": watcher.width,
        "kbps": round(sum(n for t, n in watcher.bytes if start <= t < end) * 8 / 1000),
        "still_s": round(max(b - a for a, b in itertools.pairwise(points)), 3),
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    for name in ("url", "room", "stream", "token", "address"):
        ap.add_argument(name)
    ap.add_argument("t0", type=float, help="wall time the seconds count from")
    ap.add_argument("--seconds", type=int, required=True)
    ap.add_argument("--clip", type=int, default=90, help="frames in the publisher's clip")
    ap.add_argument("--loss", type=float, default=0.0)
    ap.add_argument("--delay", type=float, default=0.0, help="seconds each way")
    args = ap.parse_args()
    use_host_addresses([args.address])
    add_relay_codecs()  # transport-wide feedback: the server's estimate of this viewer's link
    if args.loss or args.delay:
        shape_media(args.loss, args.delay)
    watcher = Watcher(args.clip)
    pc = RelayPeerConnection(RTCConfiguration(iceServers=[]))
    client, media = await receive_raw(
        args.url, args.room, args.stream, args.token, pc, watcher.on_packet
    )
    print(json.dumps({"subscribed": True}), flush=True)
    try:
        for k in range(args.seconds):
            await asyncio.sleep(max(0.0, args.t0 + k + 1 - time.time()))
            print(json.dumps({"t": k, **second(watcher, args.t0 + k)}), flush=True)
            # Keep a minute of history: what the report of a later second reads.
            cut = time.time() - 60
            watcher.bytes = [x for x in watcher.bytes if x[0] >= cut]
        print(json.dumps({"done": True, "decoded": len(watcher.decoded)}), flush=True)
    finally:
        await media.close()
        await client.close()
        watcher.close()


if __name__ == "__main__":
    asyncio.run(main())
