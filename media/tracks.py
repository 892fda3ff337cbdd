"""Up tracks (from a publisher) and down tracks (to one subscriber), joined without decoding."""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from .aiortc_adapter import ForwardingReceiver, ForwardingSender
from .estimator import RateAggregator, Throttle
from .histogram import Histogram
from .keyframe import KEYFRAME_START
from .rewrite import Rewriter
from .seqnum import SequenceTracker, Verdict
from .taps import Tap

# A PLI upstream at most this often: keyframes are expensive, and one serves every subscriber.
KEYFRAME_INTERVAL = 0.3
REMB_INTERVAL = 1.0
# Packets kept after forwarding, for a subscriber that starts at a keyframe whose later packets
# overtook its first one (reordering, or a retransmission that arrived before the original).
RECENT = 256
# Video that stops for this long and comes back has lost frames no NACK will bring back (a
# network outage): every subscriber waits for the keyframe asked for at once, instead of
# decoding garbage until the encoder's next one.
GAP = 0.5


class UpTrack:
    """One published track: takes the publisher's packets and writes them to every subscriber."""

    def __init__(
        self,
        feed_id: str,
        kind: str,
        codec: RTCRtpCodecParameters,
        receiver: ForwardingReceiver,
        clock: Callable[[], float],
        delays: Histogram | None = None,
    ) -> None:
        self.feed_id = feed_id
        self.delays = delays
        self.kind = kind
        self.codec = codec
        # Chosen once: the forwarding path looks at every packet.
        self._starts_key = KEYFRAME_START.get(codec.name.upper()) if kind == "video" else None
        self.receiver = receiver
        self.clock = clock
        self.downs: list[DownTrack] = []
        # Local consumers of the publisher's packets (the recorder), called after forwarding.
        self.taps: list[Tap] = []
        self.muted = False
        self.rates = RateAggregator()
        self.keyframes = 0
        self.plis_sent = 0
        # The publisher's numbering, extended; each restart of it (a new SSRC, or a jump the
        # tracker cannot bridge) starts a new epoch, and every subscriber a new start point.
        self.sequence = SequenceTracker()
        self.source_ssrc: int | None = None
        self._retired: list[int] = []  # earlier sources, whose late packets are dropped
        self.epoch = 0
        self.duplicates = 0
        self.stale = 0
        self._recent: deque[tuple[int, RtpPacket]] = deque(maxlen=RECENT)
        self._last_at: float | None = None
        # Counts of the receivers this track had before the current one (publisher reconnects).
        self._earlier = {"packets": 0, "bytes": 0, "nacks_sent": 0, "lost": 0, "expected": 0}
        self._key_throttle = Throttle(KEYFRAME_INTERVAL)
        self._remb_throttle = Throttle(REMB_INTERVAL)
        self._tasks: set[asyncio.Task[None]] = set()
        receiver.on_packet = self.on_packet

    async def on_packet(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        """Forward one packet from the publisher to every subscriber."""
        now = self.clock()
        if packet.ssrc != self.source_ssrc and not self._new_source(packet.ssrc):
            # A late packet of a source that was replaced (or of a connection replaced).
            self.stale += 1
            return
        verdict, ext = self.sequence.push(packet.sequence_number)
        if verdict is Verdict.DUPLICATE:
            self.duplicates += 1
            return
        if verdict is Verdict.STALE:
            self.stale += 1
            return
        gap = self._last_at is not None and now - self._last_at > GAP
        self._last_at = now
        if verdict is Verdict.RESTART or (gap and self._starts_key is not None):
            self.epoch += 1
            self._recent.clear()
            if verdict is not Verdict.RESTART:
                self.request_keyframe()
        self._recent.append((ext, packet))
        key = True if self._starts_key is None else self._starts_key(packet.payload)
        if key and self._starts_key is not None:
            self.keyframes += 1
        if not self.muted:
            arrived = self.receiver.arrived
            epoch = self.epoch
            for down in self.downs:
                if await down.write(packet, ext, epoch, key, now) and self.delays is not None:
                    # Packet in to packet out, for each subscriber's copy.
                    self.delays.record(time.perf_counter() - arrived)
            # A muted microphone is not recorded either.
            for tap in self.taps:
                tap(packet, codec, key)
        if self.kind == "video" and self._remb_throttle.ready(now):
            target = self.rates.target(now, self.receiver.upstream_bitrate)
            if target is not None:
                await self.receiver.send_remb(target)

    def take(self, receiver: ForwardingReceiver, codec: RTCRtpCodecParameters) -> None:
        """Go on from a new receiver (the publisher's new connection), with the same subscribers.

        Its packets are a new source: each subscriber restarts at the next keyframe, its own
        numbering going on without a gap.
        """
        old = self.receiver
        lost, expected = old.loss()
        for key, value in (
            ("packets", old.packets),
            ("bytes", old.bytes),
            ("nacks_sent", old.nacks_sent),
            ("lost", lost),
            ("expected", expected),
        ):
            self._earlier[key] += value
        old.on_packet = None
        self._retire()
        self.source_ssrc = None
        self.receiver = receiver
        self.codec = codec
        receiver.on_packet = self.on_packet

    def counts(self) -> dict[str, int]:
        """Return packets, bytes, NACKs sent, lost and expected over every receiver it had."""
        lost, expected = self.receiver.loss()
        now = {
            "packets": self.receiver.packets,
            "bytes": self.receiver.bytes,
            "nacks_sent": self.receiver.nacks_sent,
            "lost": lost,
            "expected": expected,
        }
        return {k: v + self._earlier[k] for k, v in now.items()}

    def after(self, ext: int) -> list[tuple[int, RtpPacket]]:
        """Return the packets of this epoch already taken that come after `ext`, in order."""
        return sorted((e, p) for e, p in self._recent if e > ext)

    def _new_source(self, ssrc: int) -> bool:
        """Take a packet of another SSRC as a new source, unless it is a retired one."""
        if ssrc in self._retired:
            return False  # reordered across the change: the new source has taken over
        self._retire()
        self.source_ssrc = ssrc
        self.sequence = SequenceTracker()
        return True

    def _retire(self) -> None:
        """Remember the current source (the last four) so its late packets are dropped."""
        if self.source_ssrc is not None:
            self._retired = [*self._retired[-3:], self.source_ssrc]

    def tap(self, tap: Tap) -> Callable[[], None]:
        """Call `tap` with every packet forwarded (not while muted); returns what stops it."""
        self.taps.append(tap)

        def untap() -> None:
            if tap in self.taps:
                self.taps.remove(tap)

        return untap

    @property
    def last_sr(self) -> tuple[float, int] | None:
        """The publisher's latest sender report: its wall clock and RTP time."""
        return self.receiver.last_sr

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe, at most once per KEYFRAME_INTERVAL."""
        if self.kind != "video" or not self._key_throttle.ready(self.clock()):
            return
        self.plis_sent += 1
        self._spawn(self.receiver.request_keyframe())

    def attach(self, down: DownTrack) -> None:
        """Start writing to a subscriber."""
        self.downs.append(down)

    def detach(self, down: DownTrack) -> None:
        """Stop writing to a subscriber."""
        if down in self.downs:
            self.downs.remove(down)
        self.rates.forget(down.subscriber_id)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class DownTrack:
    """One subscriber's copy of an up track: its own SSRC, sequence and timestamp space."""

    def __init__(
        self, up: UpTrack, sender: ForwardingSender, subscriber_id: str, clock: Callable[[], float]
    ) -> None:
        self.up = up
        self.sender = sender
        self.subscriber_id = subscriber_id
        self.clock = clock
        self.rewriter = Rewriter(
            random.randrange(1 << 15), random.randrange(1 << 32), up.codec.clockRate
        )
        self.waiting = True
        self.epoch: int | None = None
        self.attached_at = clock()
        self.started_at: float | None = None
        self.dropped_waiting = 0
        self.paused = False  # the subscriber does not show it: nothing is sent
        sender.on_keyframe_request = up.request_keyframe
        sender.on_remb = self._on_remb

    async def write(self, packet: RtpPacket, ext: int, epoch: int, key: bool, now: float) -> bool:
        """Send a publisher's packet on, starting only at a keyframe; tell whether it was sent.

        `ext` is the packet's extended sequence number, `epoch` the source's restart count.
        """
        if self.sender.codec is None or self.paused:
            return False
        if epoch != self.epoch:
            # A new source (the publisher restarted its encoder) needs a fresh start point.
            self.epoch = epoch
            self.waiting = True
        if self.waiting:
            if not key:
                self.dropped_waiting += 1
                self.up.request_keyframe()
                return False
            await self._start(packet, ext, now)
            return True
        # The path every copy takes: kept to one mapping and one send.
        mapped = self.rewriter.map(ext, packet.timestamp, now)
        if mapped is None:
            return False
        await self.sender.forward(packet, *mapped)
        return True

    async def _start(self, packet: RtpPacket, ext: int, now: float) -> None:
        """Start at this keyframe packet, with what overtook it (dropped while waiting)."""
        self.rewriter.rebase(ext, packet.timestamp, now)
        self.waiting = False
        if self.started_at is None:
            self.started_at = now
        for e, p in [(ext, packet), *self.up.after(ext)]:
            mapped = self.rewriter.map(e, p.timestamp, now)
            if mapped is not None:
                await self.sender.forward(p, *mapped)

    def pause(self, paused: bool) -> None:
        """Stop sending, or start again at the next keyframe (asked for at once)."""
        if paused == self.paused:
            return
        self.paused = paused
        if not paused:
            # Frames were skipped: the decoder needs a keyframe; the numbering goes on.
            self.waiting = True
            self.up.request_keyframe()

    def _on_remb(self, bitrate: int) -> None:
        self.up.rates.report(self.subscriber_id, bitrate, self.clock())
