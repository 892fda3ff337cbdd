"""Media sources and sinks for tests: real aiortc tracks on loopback."""

from __future__ import annotations

import asyncio
import fractions
import math
import time
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap

from teleconsult.media import stamp


class PatternTrack(VideoStreamTrack):
    """Video whose frames show a bright bar that moves one step a frame over a dark field."""

    def __init__(self, width: int = 320, height: int = 240) -> None:
        super().__init__()
        self.width, self.height = width, height
        self.count = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        img = np.full((self.height, self.width, 3), 16, dtype=np.uint8)
        x = (self.count * 8) % (self.width - 16)
        img[:, x : x + 16] = 235
        self.count += 1
        frame = av.VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class ToneTrack(AudioStreamTrack):
    """A 440 Hz tone, 20 ms frames of 48 kHz mono; `amplitude` (of full scale) may change, or
    `burst` it for an exact number of frames (however late the sender runs)."""

    def __init__(self, amplitude: float = 0.3) -> None:
        super().__init__()
        self.amplitude = amplitude
        self.bursts: list[float] = []  # the amplitudes of the next frames, before `amplitude`
        self.sample = 0
        self.start: float | None = None

    async def recv(self) -> av.AudioFrame:
        n = 960
        if self.start is None:
            self.start = time.monotonic()
        else:
            await asyncio.sleep(max(0.0, self.start + self.sample / 48000 - time.monotonic()))
        t = (np.arange(n) + self.sample) / 48000
        amplitude = self.bursts.pop(0) if self.bursts else self.amplitude
        tone = (amplitude * 32767 * np.sin(2 * math.pi * 440 * t)).astype(np.int16)
        out = av.AudioFrame.from_ndarray(tone.reshape(1, -1), format="s16", layout="mono")
        out.sample_rate = 48000
        out.pts, out.time_base = self.sample, fractions.Fraction(1, 48000)
        self.sample += n
        return out


async def receive(track: MediaStreamTrack, count: int, timeout: float = 10.0) -> list[Any]:
    """Decode `count` frames (video or audio, as the track is) from a received track, or fail
    after `timeout` seconds."""
    frames: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(frames) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"decoded {len(frames)} of {count} frames in {timeout} s")
        frames.append(await asyncio.wait_for(track.recv(), left))
    return frames


def bar_position(frame: av.VideoFrame) -> int:
    """Return the x of the bright bar a PatternTrack frame shows (from the decoded picture)."""
    gray = frame.to_ndarray(format="gray")
    return int(np.argmax(gray.mean(axis=0) > 128))


def tone_level(frames: list[av.AudioFrame]) -> float:
    """Return the RMS of decoded audio on a 16-bit scale (0 for silence)."""
    scale = 32767.0 if frames and frames[0].format.name.startswith("flt") else 1.0
    data = np.concatenate([f.to_ndarray().astype(np.float64).ravel() * scale for f in frames])
    return float(np.sqrt(np.mean(data**2)))


class PacketTrack(MediaStreamTrack):
    """Sends pre-encoded frames as they are (aiortc packetizes without encoding), paced."""

    def __init__(self, kind: str, frames: list[bytes], rate: float, clock: int) -> None:
        super().__init__()
        self.kind = kind
        self.frames = frames
        self.rate = rate
        self.clock = clock
        self.n = 0
        self.start: float | None = None
        self.sent: list[tuple[int, float]] = []  # (index into frames, wall time)
        self.lags: list[float] = []  # seconds each send came after its scheduled time

    async def recv(self) -> av.Packet[Any]:
        if self.start is None:
            self.start = time.monotonic()
        await asyncio.sleep(max(0.0, self.start + self.n / self.rate - time.monotonic()))
        index = self.n % len(self.frames)
        packet = av.Packet(self.frames[index])
        packet.pts = int(self.n * self.clock / self.rate)
        packet.time_base = fractions.Fraction(1, self.clock)
        self.sent.append((index, time.time()))
        self.lags.append(time.monotonic() - (self.start + self.n / self.rate))
        self.n += 1
        return packet

    def lateness(self, since: float, until: float) -> float:
        """How much the sender's lag behind its schedule varied in a wall-clock window, seconds."""
        sent = zip(self.sent, self.lags, strict=True)
        lags = [lag for (_, t), lag in sent if since <= t <= until]
        return max(lags) - min(lags) if lags else 0.0


def vp8_frames(count: int, keyframe_every: int, width: int = 320, height: int = 240) -> list[bytes]:
    """Encode the synthetic ultrasound source to VP8 frames, keyframes at a fixed interval."""
    from aiortc.codecs.vpx import Vp8Encoder, vp8_depayload

    from teleconsult.media.synthetic import UltrasoundTrack

    source = UltrasoundTrack(width, height, 30)
    encoder = Vp8Encoder()
    out = []
    for n in range(count):
        img = source.picture(n, 1_700_000_000_000 + n * 33)
        frame = av.VideoFrame.from_ndarray(img, format="gray").reformat(format="yuv420p")
        frame.pts, frame.time_base = n * 3000, fractions.Fraction(1, 90000)
        payloads, _ = encoder.encode(frame, force_keyframe=(n % keyframe_every == 0))
        out.append(b"".join(vp8_depayload(p) for p in payloads))
    return out


def drop_every_fifth(sender: Any) -> list[int]:
    """Lose every fifth first transmission of a media packet a ForwardingSender sends.

    Retransmissions (RTX, sent another way) pass. Returns the list of the sequence numbers
    dropped, filled as it happens.
    """
    send = sender._send
    seen: set[int] = set()
    dropped: list[int] = []

    def lossy(data: bytes) -> bool:
        seq = int.from_bytes(data[2:4], "big")
        if seq not in seen:
            seen.add(seq)
            if len(seen) % 5 == 0:
                dropped.append(seq)
                return True  # sent, and lost on the way
        return bool(send(data))

    sender._send = lossy
    return dropped


class StampViewer:
    """An expert on this side decoding a feed: when each frame arrived and when it was taken."""

    def __init__(self) -> None:
        self.frames: list[tuple[float, int]] = []

    async def watch(self, track: Any) -> None:
        while True:
            frame = await track.recv()
            read = stamp.read(frame.to_ndarray(format="gray"))
            if read is not None:
                self.frames.append((time.time(), read[0]))

    async def back_after(self, t: float, timeout: float = 20) -> float:
        """Seconds from t until a frame taken after t arrived."""
        for _ in range(int(timeout * 20)):
            fresh = [arrived for arrived, taken in self.frames if taken > t * 1000]
            if fresh:
                return fresh[0] - t
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no picture taken after the change within {timeout} s")


MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"


async def connected(pc: Any) -> Any:
    """Return the first transceiver's transport once it is connected (10 s at most)."""
    transport = pc.getTransceivers()[0].sender.transport
    for _ in range(200):
        if transport.state == "connected":
            break
        await asyncio.sleep(0.05)
    return transport


def extension_map(*extra: tuple[int, str]) -> HeaderExtensionsMap:
    """A header extension map with the mid as 1 and `extra` (id, uri) pairs."""
    ids = HeaderExtensionsMap()
    ids.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=i, uri=uri) for i, uri in [(1, MID_URI), *extra]
            ]
        )
    )
    return ids


async def session_over(
    url: str, room: str, operator: str, expert: str, tls: Any, hold: float = 0.0
) -> float:
    """An operator publishes a probe and an expert watches it, both signaling at `url` (wss://
    with `tls` trusted); return the seconds until the expert's first picture. With `hold`, both
    connections must still be open that many seconds later."""
    from teleconsult.client.media import MediaClient
    from teleconsult.client.signaling import SignalingClient
    from teleconsult.media.synthetic import UltrasoundTrack

    op = SignalingClient(url, operator, room, tls=tls)
    ex = SignalingClient(url, expert, room, tls=tls)
    publisher, watcher = MediaClient(op), MediaClient(ex)
    viewer = StampViewer()
    try:
        await op.connect()
        stream = await publisher.publish([(UltrasoundTrack(320, 240, 15), "probe", "")])
        await ex.connect()
        sub = await watcher.subscribe(stream.id)
        watching = asyncio.ensure_future(viewer.watch(sub.tracks[f"{stream.id}.0"]))
        try:
            back = await viewer.back_after(time.time())
            await asyncio.sleep(hold)
            assert not ex.closed and not op.closed
            return back
        finally:
            watching.cancel()
    finally:
        await watcher.close()
        await publisher.close()
        await ex.close()
        await op.close()
