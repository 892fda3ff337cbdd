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
from .estimator import RateAggregator, RateMeter, Throttle
from .histogram import Histogram
from .keyframe import KEYFRAME_START
from .layers import LayerChooser
from .loudness import Voice
from .rewrite import SQUEEZE, TS_MOD, Rewriter
from .seqnum import SequenceTracker, Verdict
from .simulcast import MAX_LAYERS
from .taps import Tap

# A PLI upstream at most this often: keyframes are expensive, and one serves every subscriber.
KEYFRAME_INTERVAL = 0.3
# A subscriber's layer is chosen this often.
CHOICE_INTERVAL = 0.1
# A subscriber's path before it says anything: room for any layer.
NO_WORD = 100_000_000
REMB_INTERVAL = 1.0
# How often the recorder's layer is looked at again, and how much better another must be.
RECORD_CHOICE_INTERVAL = 0.5
RECORD_SWITCH_RATIO = 1.5
# Packets kept after forwarding, for a subscriber that starts at a keyframe whose later packets
# overtook its first one (reordering, or a retransmission that arrived before the original).
RECENT = 256
# The most packets a layer keeps from its latest keyframe on (a 2 s GOP of 1080p at 4 Mbit/s
# is about 800): past it, a new subscriber waits for the next keyframe as before.
SINCE_KEY_MAX = 2048
# Video that stops for this long and comes back has lost frames no NACK will bring back (a
# network outage): every subscriber waits for the keyframe asked for at once, instead of
# decoding garbage until the encoder's next one.
GAP = 0.5


class Layer:
    """One encoding of an up track (a simulcast layer, or its only one): its source, its
    numbering extended, its latest packets and its rate."""

    def __init__(self, name: str) -> None:
        self.name = name
        # The publisher's numbering, extended; each restart of it (a new SSRC, or a jump the
        # tracker cannot bridge) starts a new epoch, and every subscriber a new start point.
        self.sequence = SequenceTracker()
        self.source_ssrc: int | None = None
        self.retired: list[int] = []  # earlier sources, whose late packets are dropped
        self.epoch = 0
        self.recent: deque[tuple[int, RtpPacket]] = deque(maxlen=RECENT)
        # The latest keyframe and every packet since (sorted when replayed): a subscriber starting
        # now decodes the live picture at once, whether or not the publisher honours a PLI.
        self.since_key: list[tuple[int, RtpPacket]] = []
        self.last_at: float | None = None
        # Over two seconds: a half-second window swung by half with each keyframe, and every
        # subscriber's choice swung with it, all of them at once.
        self.meter = RateMeter()

    @property
    def rate(self) -> int:
        """The layer's rate (bits/s) over the last two seconds."""
        return self.meter.rate

    def live(self, now: float) -> bool:
        """Tell whether the layer is being received (a packet within the last second)."""
        return self.last_at is not None and now - self.last_at < 1.0

    def new_source(self, ssrc: int) -> bool:
        """Take a packet of another SSRC as a new source, unless it is a retired one."""
        if ssrc in self.retired:
            return False  # reordered across the change: the new source has taken over
        self.retire()
        self.source_ssrc = ssrc
        self.sequence = SequenceTracker()
        return True

    def retire(self) -> None:
        """Remember the current source (the last four) so its late packets are dropped."""
        if self.source_ssrc is not None:
            self.retired = [*self.retired[-3:], self.source_ssrc]

    def after(self, ext: int) -> list[tuple[int, RtpPacket]]:
        """Return the packets of this epoch already taken that come after `ext`, in order."""
        return sorted((e, p) for e, p in self.recent if e > ext)

    def keep(self, ext: int, packet: RtpPacket, key: bool) -> None:
        """Keep a video packet for subscribers that start later (from its keyframe on)."""
        if key:
            # With what overtook the keyframe's first packet (reordering), kept already.
            self.since_key = [(ext, packet), *self.after(ext)]
        elif self.since_key and ext > self.since_key[0][0]:  # not a late one from before it
            if len(self.since_key) < SINCE_KEY_MAX:
                self.since_key.append((ext, packet))
            else:
                self.since_key = []  # too long to replay: wait for the next keyframe


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
        # A microphone's loudness, from the audio levels its publisher writes (RFC 6464).
        self.voice: Voice | None = Voice() if kind == "audio" else None
        self.rates = RateAggregator()
        self.keyframes = 0
        self.plis_sent = 0
        # Its encodings by name: "" alone, or a publisher's simulcast layers by rid.
        self.layers: dict[str, Layer] = {}
        # Simulcast: the layer the recorder takes (the best one being received), and the one it
        # moves to at that layer's next keyframe.
        self.recorded = ""
        self.record_target = ""
        self._next_record_choice = 0.0
        self.duplicates = 0
        self.stale = 0
        # Counts of the receivers this track had before the current one (publisher reconnects).
        self._earlier = {"packets": 0, "bytes": 0, "nacks_sent": 0, "lost": 0, "expected": 0}
        self._key_throttles: dict[str, Throttle] = {}
        self._remb_throttle = Throttle(REMB_INTERVAL)
        self._tasks: set[asyncio.Task[None]] = set()
        receiver.on_packet = self.on_packet

    @property
    def epoch(self) -> int:
        """The restarts of the only (or first) layer's source."""
        return next(iter(self.layers.values())).epoch if self.layers else 0

    def ranked(self, now: float) -> list[Layer]:
        """Return the layers being received, from the lowest rate up."""
        return sorted((x for x in self.layers.values() if x.live(now)), key=lambda x: x.rate)

    def on_packet(self, packet: RtpPacket, codec: RTCRtpCodecParameters, name: str = "") -> None:
        """Forward one packet from the publisher to every subscriber."""
        now = self.clock()
        layer = self.layers.get(name)
        if layer is None:
            if len(self.layers) >= 2 * MAX_LAYERS:
                return
            layer = self.layers[name] = Layer(name)
        if packet.ssrc != layer.source_ssrc and not layer.new_source(packet.ssrc):
            # A late packet of a source that was replaced (or of a connection replaced).
            self.stale += 1
            return
        verdict, ext = layer.sequence.push(packet.sequence_number)
        if verdict is Verdict.DUPLICATE:
            self.duplicates += 1
            return
        if verdict is Verdict.STALE:
            self.stale += 1
            return
        gap = layer.last_at is not None and now - layer.last_at > GAP
        layer.last_at = now
        if verdict is Verdict.RESTART or (gap and self._starts_key is not None):
            layer.epoch += 1
            layer.recent.clear()
            layer.since_key = []
            if verdict is not Verdict.RESTART:
                self.request_keyframe(name)
        layer.recent.append((ext, packet))
        layer.meter.add(len(packet.payload), now)
        key = True if self._starts_key is None else self._starts_key(packet.payload)
        if self._starts_key is not None:
            layer.keep(ext, packet, key)
            if key:
                self.keyframes += 1
        if not self.muted:
            if self.voice is not None:  # audio only: video packets skip the header lookup
                level = packet.extensions.audio_level
                if level is not None:
                    self.voice.hear(level[1], now)
                else:
                    self.voice.bare = True
            arrived = self.receiver.arrived
            for down in self.downs:
                if down.write(packet, ext, layer, key, now) and self.delays is not None:
                    # Packet in to packet out, for each subscriber's copy.
                    self.delays.record(time.perf_counter() - arrived)
            # A muted microphone is not recorded either; of simulcast, only the best layer.
            if name and now >= self._next_record_choice:
                self._choose_recorded(now)
            if name != self.recorded and name == self.record_target and key:
                self.recorded = name  # a keyframe: the file goes on at this layer's size
            if name == self.recorded:
                for tap in self.taps:
                    tap(packet, codec, key)
        if self.kind == "video" and self._remb_throttle.ready(now):
            target = self.publisher_target(now)
            if target is not None:
                self._spawn(self.receiver.send_remb(target))

    def publisher_target(self, now: float) -> int | None:
        """Return the rate to ask of the publisher (its REMB), or None to leave it be.

        With simulcast, what its own uplink carries: a weak viewer takes a lower layer, so
        its report must not lower the top layer that the others and the recorder receive.
        Without, the subscribers' reports too, a weak link's aside.
        """
        upstream = self.receiver.upstream_bitrate
        if len(self.layers) > 1:
            return upstream
        return self.rates.target(now, upstream)

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
        for layer in self.layers.values():
            layer.retire()
            layer.source_ssrc = None
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

    def _choose_recorded(self, now: float) -> None:
        """Aim the recording at the best layer received (the publisher's encoder drops and adds
        layers as its CPU and uplink allow); the move waits for that layer's keyframe."""
        self._next_record_choice = now + RECORD_CHOICE_INTERVAL
        ranked = [x for x in self.ranked(now) if x.rate]
        if not ranked:
            return
        best = ranked[-1]
        current = self.layers.get(self.recorded)
        # Rates swing with keyframes: move only to a layer clearly better than this one.
        if (
            current is not None
            and self.recorded
            and current.live(now)
            and (best.name == self.recorded or best.rate < RECORD_SWITCH_RATIO * current.rate)
        ):
            self.record_target = self.recorded
            return
        self.record_target = best.name
        if not self.taps:
            self.recorded = best.name  # nobody records: no keyframe to wait for
        elif self.record_target != self.recorded:
            self.request_keyframe(best.name)

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

    def request_keyframe(self, layer: str = "") -> None:
        """Ask the publisher for a keyframe (of one layer), at most once per KEYFRAME_INTERVAL
        for each."""
        layer = layer or self.recorded  # the recorder's own asks are for the layer it takes
        throttle = self._key_throttles.get(layer)
        if throttle is None:
            throttle = self._key_throttles[layer] = Throttle(KEYFRAME_INTERVAL)
        if self.kind != "video" or not throttle.ready(self.clock()):
            return
        self.plis_sent += 1
        self._spawn(self.receiver.request_keyframe(layer))

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


class RembPath:
    """A subscriber's path as its REMB tells it (a subscriber without transport-wide feedback):
    no queue signal and no probe measurement, only the figure it sends."""

    def __init__(self, remb: int | None) -> None:
        # No word yet: as before simulcast, it gets the best picture until it says otherwise.
        self.target = remb if remb is not None else NO_WORD
        self.queueing = False
        self.probes = False

    def delivered(self, start_s: float, end_s: float) -> int | None:
        """A REMB measures nothing of a probe."""
        return None


class DownTrack:
    """One subscriber's copy of an up track: its own SSRC, sequence and timestamp space, and
    with simulcast the layer its path carries."""

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
        self.epoch: int | None = None  # of the layer being sent (`layer`)
        self.attached_at = clock()
        self.started_at: float | None = None
        self.dropped_waiting = 0
        self.paused = False  # the subscriber does not show it: nothing is sent
        # A voice not among the loudest this subscriber hears: nothing is sent.
        self.quiet = False
        # The node cannot keep up and holds this copy back (`media/overload.py`): from the end
        # of the frame being sent, until it keeps up again.
        self.held = False
        self.held_packets = 0
        # Simulcast: the layer sent, and the one wanted (another while awaiting its keyframe).
        self.layer = ""
        self.target = ""
        self.switches = 0
        # Going down, the higher layer's new frames are dropped until the lower one starts.
        self.shedding = False
        self.shed = 0
        self.remb: int | None = None
        self.chooser = LayerChooser()
        self._next_choice = 0.0
        self._padding: asyncio.Task[None] | None = None
        sender.on_keyframe_request = lambda: up.request_keyframe(self.layer)
        sender.on_remb = self._on_remb

    def write(self, packet: RtpPacket, ext: int, layer: Layer, key: bool, now: float) -> bool:
        """Send a publisher's packet on, starting only at a keyframe; tell whether it was sent.

        `ext` is the packet's extended sequence number in its `layer`.
        """
        if self.sender.codec is None or self.paused or self.quiet:
            return False
        if self.held and (self.waiting or not self._same_frame(packet.timestamp)):
            self.held_packets += 1
            return False
        name = layer.name
        if name and now >= self._next_choice:
            self._choose(now)
        if name != self.layer:
            if name != self.target:
                return False  # another simulcast layer
            if not key:
                self.up.request_keyframe(name)
                return False
            # The wanted layer's keyframe: it takes over here, the numbering going on, so the
            # subscriber's decoder sees one stream whose picture changes size.
            self.layer = name
            self.switches += 1
            self.epoch = layer.epoch
            self._start(packet, ext, layer, now)
            return True
        if layer.epoch != self.epoch:
            # A new source (the publisher restarted its encoder) needs a fresh start point.
            self.epoch = layer.epoch
            self.waiting = True
        if self.waiting:
            if not key:
                # A fresh keyframe is still asked for; meanwhile the latest one and what came
                # after it give the live picture now, not at the publisher's next keyframe.
                self.up.request_keyframe(name)
                if layer.since_key:
                    self._start_cached(layer, now)
                    return True
                self.dropped_waiting += 1
                return False
            self._start(packet, ext, layer, now)
            return True
        if self.shedding and not self._same_frame(packet.timestamp):
            # Going down: the path cannot carry this layer, so no new frame of it is sent
            # while the lower one's keyframe is awaited.
            self.shed += 1
            return False
        # The path every copy takes: kept to one mapping and one send.
        mapped = self.rewriter.map(ext, packet.timestamp, now)
        if mapped is None:
            return False
        self.sender.forward(packet, *mapped, now)
        return True

    def _same_frame(self, timestamp: int) -> bool:
        """Tell whether a packet belongs to the frame last sent (its later packets)."""
        return (timestamp + self.rewriter.ts_offset) % TS_MOD == self.rewriter.last_ts

    def _start(self, packet: RtpPacket, ext: int, layer: Layer, now: float) -> None:
        """Start at this keyframe packet, with what overtook it (dropped while waiting)."""
        self.rewriter.rebase(ext, packet.timestamp, now)
        self._send_first([(ext, packet), *layer.after(ext)], now)

    def _send_first(self, packets: list[tuple[int, RtpPacket]], now: float) -> None:
        """Send the packets a start begins with, once the rewriter is rebased."""
        self.waiting = self.shedding = False
        if self.started_at is None:
            self.started_at = now
        for e, p in packets:
            mapped = self.rewriter.map(e, p.timestamp, now)
            if mapped is not None:
                self.sender.forward(p, *mapped, now)

    def _start_cached(self, layer: Layer, now: float) -> None:
        """Start from the layer's latest keyframe and every packet since, sent at once.

        The live frame keeps the time it would have had; the frames before it are put 256
        times closer together just before it, so that the subscriber decodes them straight
        through and shows the live one, instead of playing them out and lagging by as much.
        """
        cached = sorted(layer.since_key)
        first_ts, live_ts = cached[0][1].timestamp, cached[-1][1].timestamp
        span = (live_ts - first_ts) % TS_MOD
        # Room before the live frame for the others, after whatever the subscriber had; late
        # packets of a cached frame (reordering) get its new time too.
        self.rewriter.rebase(cached[0][0], live_ts, now, ahead=-(-span // SQUEEZE) + 1)
        self.rewriter.squeeze(first_ts, live_ts, cached[-1][0] + RECENT)
        self._send_first(cached, now)

    def _choose(self, now: float) -> None:
        """Choose the simulcast layer this subscriber's path carries (and probe for a higher)."""
        self._next_choice = now + CHOICE_INTERVAL
        ranked = self.up.ranked(now)
        if not ranked:
            return
        names = [x.name for x in ranked]
        if self.target in names:
            self.chooser.layer = names.index(self.target)
        congestion = self.sender.congestion
        if congestion is not None and not congestion.estimator.ready:
            # Agreed to transport-cc but no feedback yet, or too little to tell a rate by.
            congestion = None
        path = congestion.estimator if congestion is not None else RembPath(self.remb)
        # The estimator's probe measurements run on the clock of the packets' send times.
        clock = time.perf_counter()
        choice = self.chooser.choose([x.rate for x in ranked], path, clock)
        self.target = names[min(choice.layer, len(names) - 1)]
        if self.target != self.layer:
            self.up.request_keyframe(self.target)
        shedding = self.layer in names and names.index(self.target) < names.index(self.layer)
        if self.shedding and not shedding and self.target == self.layer:
            # Back up before the switch: the frames shed were references of the next ones.
            self.waiting = True
        self.shedding = shedding
        if choice.padding and (self._padding is None or self._padding.done()):
            # Beside the forwarding, not in its way: this packet and the other subscribers'
            # copies do not wait for a probe's burst.
            nbytes = int(choice.padding * CHOICE_INTERVAL / 8)
            self._padding = asyncio.ensure_future(self.sender.pad(nbytes))
        if choice.carried and congestion is not None:
            congestion.estimator.carried(choice.carried)

    def pause(self, paused: bool) -> None:
        """Stop sending, or start again at the next keyframe (asked for at once)."""
        if paused == self.paused:
            return
        self.paused = paused
        if not paused:
            self._from_keyframe()

    def quieten(self, quiet: bool) -> None:
        """Stop sending a voice that is not among the loudest, or send it again: its numbering
        goes on without a gap, its clock by the time that passed."""
        if quiet == self.quiet:
            return
        self.quiet = quiet
        if not quiet:
            self.waiting = True  # every audio packet starts: the next one rebases

    def hold(self, held: bool) -> None:
        """Hold this copy back after the frame being sent, or send it again from a keyframe
        (the cached one at once, a fresh one asked for)."""
        if held == self.held:
            return
        self.held = held
        if not held:
            self._from_keyframe()

    def _from_keyframe(self) -> None:
        # Frames were skipped: the decoder needs a keyframe (the cached one, and a fresh one
        # asked for); the numbering goes on.
        self.waiting = True
        self.up.request_keyframe(self.layer)

    def path_rate(self) -> int | None:
        """Return what this subscriber's path is estimated to carry (bits/s), if known."""
        congestion = self.sender.congestion
        if congestion is not None and congestion.estimator.ready:
            return int(congestion.estimator.target)
        return self.remb

    def _on_remb(self, bitrate: int) -> None:
        self.remb = bitrate
        self.up.rates.report(self.subscriber_id, bitrate, self.clock())
