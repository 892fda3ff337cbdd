"""The forwarding unit: publishers' peer connections in, subscribers' peer connections out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import secrets
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiortc import RTCConfiguration, RTCRtpTransceiver, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from .aioice_adapter import guard_ice_ports, quick_consent, use_host_addresses
from .aioice_ports import own_ports
from .aiortc_adapter import ForwardingReceiver, ForwardingSender, RelayPeerConnection
from .aiortc_codecs import add_relay_codecs, codec_preferences, negotiated_codec, same_codec
from .datagrams import INGRESS
from .failures import handled_failure
from .histogram import Histogram
from .loudness import Choice, Voice, chosen_for
from .overload import LOAD, WINDOW, Overload
from .red import Unwrapper, Wrapper, answer_with_red, offer_red, offered_red
from .simulcast import answer_with_layers, offered_layers
from .tracks import DownTrack, UpTrack
from .transport_cc import read_transport_feedback

log = logging.getLogger("teleconsult.media")

ANSWER_TIMEOUT = 30.0
# Reasons given to on_up_closed for a stream that did not end: its media path was lost, or
# its publisher brought new media for it.
INTERRUPTED = "interrupted"
RESUMED = "resumed"
# The participant id of a leg: a subscription carrying a stream to another node or media
# worker, and the stream it becomes there.
CASCADE = "cascade:"
# Seconds between choices of the voices heard: well within the 300 ms a new speaker may take.
VOICE_TICK = 0.05
# Seconds between two changes told of one microphone's speaking: a few a second at most.
SPEAKING_EVERY = 0.3


class Media(Protocol):
    """What signaling asks of the media of one node: this node's Sfu, or another node's."""

    async def publish(
        self,
        stream_id: str,
        participant_id: str,
        offer: str,
        feed_ids: dict[str, str],
        replace: bool = False,
    ) -> tuple[str, dict[str, str]]:
        """Accept a publisher's offer (with replace, new media for a stream it publishes)."""

    async def unpublish(self, stream_id: str, reason: str) -> None:
        """Close a published stream."""

    async def subscribe(
        self,
        down_id: str,
        subscriber_id: str,
        stream_id: str,
        feeds: list[str] | None = None,
        voices: int | None = None,
    ) -> tuple[str, dict[str, str]]:
        """Offer a stream to a subscriber; return the offer and mid→feed. `voices`: how many
        of the loudest voices it hears (0 all; None the node's default)."""

    async def answer(self, down_id: str, subscriber_id: str, sdp: str) -> None:
        """Take a subscriber's answer."""

    async def unsubscribe(self, down_id: str, reason: str) -> None:
        """Close one subscription."""

    async def pause(
        self, down_id: str, subscriber_id: str, feeds: list[str] | None, paused: bool
    ) -> None:
        """Stop (or start again, at a keyframe) sending some feeds of a subscription."""

    async def close_participant(self, participant_id: str, reason: str) -> None:
        """Close everything a participant publishes or receives."""

    async def lost(self, participant_id: str) -> None:
        """Drop a participant's media paths, which left from an address it no longer has."""

    def mute(self, participant_id: str, kind: str, muted: bool) -> None:
        """Stop (or resume) forwarding a participant's tracks of a kind."""


class MediaError(Exception):
    """A media request was refused; `code` is stable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class OfferedMedia:
    """One m-line of a publisher's offer."""

    mid: str
    kind: str


def offered_media(sdp: str) -> list[OfferedMedia]:
    """List the audio and video sections of an SDP offer; raise MediaError if it is unusable."""
    try:
        description = aiortc_sdp.SessionDescription.parse(sdp)
    except Exception:
        raise MediaError("bad_sdp", "the SDP offer could not be parsed") from None
    media = []
    for m in description.media:
        if m.kind not in ("audio", "video"):
            continue
        if m.rtp.muxId is None or m.rtp.muxId == "":
            raise MediaError("bad_sdp", "every media section needs an a=mid")
        media.append(OfferedMedia(m.rtp.muxId, m.kind))
    if not media:
        raise MediaError("bad_sdp", "the offer has no audio or video")
    return media


@dataclass
class UpStream:
    """A publisher's peer connection and the tracks it carries, by mid."""

    id: str
    participant_id: str
    pc: RelayPeerConnection
    tracks: dict[str, UpTrack] = field(default_factory=dict)
    downs: set[str] = field(default_factory=set)
    interrupted: bool = False  # its media path is lost; waiting to be published again
    resumable: bool = True  # False: it ends with its connection (a cascade leg)


@dataclass
class DownStream:
    """A subscriber's peer connection carrying the tracks of one up stream."""

    id: str
    subscriber_id: str
    up: UpStream
    pc: RelayPeerConnection
    tracks: list[DownTrack] = field(default_factory=list)
    answered: bool = False
    voices: int | None = None  # the loudest voices its subscriber hears (0 all; None default)


class Sfu:
    """Owns every media peer connection of a node and forwards RTP between them."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        announce: str | None = None,
        on_up_closed: Callable[[str, str], None] | None = None,
        on_down_closed: Callable[[str, str], None] | None = None,
        loudest: int = 3,
    ) -> None:
        add_relay_codecs()
        read_transport_feedback()
        guard_ice_ports()
        quick_consent()
        self.clock = clock
        # A public address to write into candidates in place of the gathered host address
        # (a 1:1 NAT); None when candidates already carry the right address.
        self.rewrite_to = announce
        self.on_up_closed = on_up_closed
        self.on_down_closed = on_down_closed
        self.ups: dict[str, UpStream] = {}
        self.forward_delay = Histogram()
        self.downs: dict[str, DownStream] = {}
        self.load: Overload = LOAD
        self._tasks: set[asyncio.Task[Any]] = set()
        self._balancing: asyncio.Task[None] | None = None
        # Each listener hears the `loudest` voices speaking among those it subscribes to (0:
        # every voice); listeners who can hear the same voices share one choice.
        self.loudest = loudest
        self._choices: dict[tuple[int, frozenset[Hashable]], Choice] = {}
        self._choosing: asyncio.Task[None] | None = None
        # Told when a microphone starts or stops speaking: (stream id, feed id, speaking).
        self.on_speaking: Callable[[str, str, bool], None] | None = None
        self._told: dict[UpTrack, tuple[bool, float]] = {}  # what was last told, and when

    # -- publishing --------------------------------------------------------------------------

    async def publish(
        self,
        stream_id: str,
        participant_id: str,
        offer: str,
        feed_ids: dict[str, str],
        replace: bool = False,
        resumable: bool = True,
        nearby: bool = False,
    ) -> tuple[str, dict[str, str]]:
        """Accept a publisher's offer; return the answer and each mid's codec name.

        With `replace`, the offer brings new media for a stream the participant publishes (its
        path was lost: a new address, a long cut): a new peer connection feeds the same tracks,
        and every subscriber goes on in its own numbering from the next keyframe. A stream that
        is not `resumable` (a cascade leg between nodes) ends when its connection does; one
        from `nearby` (a media worker on this machine) is answered with the candidates as
        gathered, never the announced public address.
        """
        if replace:
            return await self._replace(stream_id, participant_id, offer)
        if stream_id in self.ups:
            raise MediaError("stream_exists", "a stream with this id is published")
        pc = RelayPeerConnection(RTCConfiguration(iceServers=[]))
        up = UpStream(stream_id, participant_id, pc, resumable=resumable)
        self.ups[stream_id] = up
        codecs: dict[str, str] = {}

        def take(t: RTCRtpTransceiver, codec: RTCRtpCodecParameters) -> None:
            assert t.mid is not None and isinstance(t.receiver, ForwardingReceiver)
            up.tracks[t.mid] = UpTrack(
                feed_ids[t.mid], t.kind, codec, t.receiver, self.clock, self.forward_delay
            )
            codecs[t.mid] = codec.name

        try:
            # Another server's leg comes from one port for all its legs: ours get ports of their
            # own, or their addresses would not tell them apart on the shared port.
            with own_ports() if nearby or not resumable else contextlib.nullcontext():
                await _accept(pc, offer, take)
        except MediaError:
            await self.unpublish(stream_id, "refused")
            raise
        self._watch_up(up, pc)
        self._listen()
        return self._answer(pc, offer, not nearby), codecs

    async def _replace(
        self, stream_id: str, participant_id: str, offer: str
    ) -> tuple[str, dict[str, str]]:
        up = self.ups.get(stream_id)
        if up is None or up.participant_id != participant_id:
            raise MediaError("no_such_stream", "you publish no stream with this id")
        pc = RelayPeerConnection(RTCConfiguration(iceServers=[]))
        pairs: list[tuple[UpTrack, ForwardingReceiver, RTCRtpCodecParameters]] = []

        def take(t: RTCRtpTransceiver, codec: RTCRtpCodecParameters) -> None:
            track = up.tracks.get(t.mid or "")
            if track is None or track.kind != t.kind:
                raise MediaError("feeds_mismatch", "the offer does not carry this stream")
            if not same_codec(codec, track.codec):
                # Subscribers negotiated the first codec; they could not decode another.
                raise MediaError("feeds_mismatch", "a stream keeps its codec when resumed")
            assert isinstance(t.receiver, ForwardingReceiver)
            pairs.append((track, t.receiver, codec))

        try:
            await _accept(pc, offer, take)
            if len(pairs) != len(up.tracks):
                raise MediaError("feeds_mismatch", "the offer does not carry this stream")
        except MediaError:
            await pc.close()
            raise
        old, up.pc, up.interrupted = up.pc, pc, False
        for track, receiver, codec in pairs:
            track.take(receiver, codec)
        self._watch_up(up, pc)
        await old.close()
        if self.on_up_closed is not None:
            self.on_up_closed(stream_id, RESUMED)
        return self._answer(pc, offer), {mid: t.codec.name for mid, t in up.tracks.items()}

    async def unpublish(self, stream_id: str, reason: str) -> None:
        """Close a publisher's stream and every subscription to it."""
        up = self.ups.pop(stream_id, None)
        if up is None:
            return
        for down_id in list(up.downs):
            await self.unsubscribe(down_id, "unpublished")
        await up.pc.close()
        if self.on_up_closed is not None and reason != "refused":
            self.on_up_closed(stream_id, reason)

    def track(self, stream_id: str, mid: str) -> UpTrack | None:
        """Return a published track, for local consumers such as the recorder."""
        up = self.ups.get(stream_id)
        return None if up is None else up.tracks.get(mid)

    def mute(self, participant_id: str, kind: str, muted: bool) -> None:
        """Stop (or resume) forwarding a participant's tracks of a kind."""
        for up in self.ups.values():
            if up.participant_id == participant_id:
                for track in up.tracks.values():
                    if track.kind == kind:
                        track.muted = muted

    # -- subscribing -------------------------------------------------------------------------

    async def subscribe(
        self,
        down_id: str,
        subscriber_id: str,
        stream_id: str,
        feeds: list[str] | None = None,
        voices: int | None = None,
        nearby: bool = False,
    ) -> tuple[str, dict[str, str]]:
        """Make an offer carrying an up stream's tracks to a subscriber; return it and mid→feed.

        A subscriber `nearby` (a media worker on this machine) gets the candidates as gathered.
        """
        up = self.ups.get(stream_id)
        if up is None:
            raise MediaError("no_such_stream", "no such stream")
        chosen = [t for t in up.tracks.values() if feeds is None or t.feed_id in feeds]
        if not chosen:
            raise MediaError("no_such_feed", "none of the requested feeds is in this stream")
        pc = RelayPeerConnection(RTCConfiguration(iceServers=[]))
        down = DownStream(down_id, subscriber_id, up, pc, voices=voices)
        self.downs[down_id] = down
        if self._balancing is None or self._balancing.done():
            self._balancing = asyncio.ensure_future(self._balance_forever())
            self._tasks.add(self._balancing)
        self._listen()
        up.downs.add(down_id)
        pairs = []
        for track in chosen:
            t = pc.addTransceiver(track.kind, direction="sendonly")
            t.setCodecPreferences(codec_preferences(track.kind, track.codec))
            sender = t.sender
            assert isinstance(sender, ForwardingSender)
            dt = DownTrack(track, sender, subscriber_id, self.clock)
            # A voice is sent once chosen: one that starts talking reaches nobody before then.
            ranked = bool(self._heard(down)) and not subscriber_id.startswith(CASCADE)
            dt.quiet = track.kind == "audio" and ranked
            down.tracks.append(dt)
            pairs.append((t, dt))
        offer = await pc.createOffer()
        server = nearby or subscriber_id.startswith(CASCADE)  # a leg (see `publish`)
        with own_ports() if server else contextlib.nullcontext():
            await pc.setLocalDescription(offer)
        mids = {}
        for t, dt in pairs:
            assert t.mid is not None
            mids[t.mid] = dt.up.feed_id
            dt.up.attach(dt)
            self._spawn(self._start_when_ready(dt))
        self._watch(pc, lambda: self.unsubscribe(down_id, "failed"))
        self._spawn(self._expire_unanswered(down_id))
        # RED offered beside Opus: aiortc knows nothing of it, so it is added to the text.
        return offer_red(self._local_sdp(pc, not nearby)), mids

    async def answer(self, down_id: str, subscriber_id: str, sdp: str) -> None:
        """Take a subscriber's answer to our offer."""
        down = self.downs.get(down_id)
        if down is None or down.subscriber_id != subscriber_id:
            raise MediaError("no_such_stream", "no such subscription")
        if down.answered:
            raise MediaError("already_answered", "this offer was already answered")
        try:
            await down.pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
        except Exception as e:
            await self.unsubscribe(down_id, "refused")
            raise MediaError("bad_sdp", f"the answer was not accepted: {e}") from None
        down.answered = True
        red = offered_red(sdp)
        for t in down.pc.getTransceivers():
            if t.mid in red and isinstance(t.sender, ForwardingSender):
                t.sender.red = Wrapper(*red[t.mid])

    async def unsubscribe(self, down_id: str, reason: str) -> None:
        """Close one subscription."""
        down = self.downs.pop(down_id, None)
        if down is None:
            return
        for dt in down.tracks:
            dt.up.detach(dt)
        down.up.downs.discard(down_id)
        await down.pc.close()
        if self.on_down_closed is not None:
            self.on_down_closed(down_id, reason)

    async def pause(
        self, down_id: str, subscriber_id: str, feeds: list[str] | None, paused: bool
    ) -> None:
        """Stop (or start again, at a keyframe) sending some feeds of a subscription."""
        down = self.downs.get(down_id)
        if down is None or down.subscriber_id != subscriber_id:
            raise MediaError("no_such_stream", "no such subscription")
        chosen = [dt for dt in down.tracks if feeds is None or dt.up.feed_id in feeds]
        if feeds is not None and len(chosen) != len(set(feeds)):
            raise MediaError("no_such_feed", "a feed named is not in this subscription")
        for dt in chosen:
            dt.pause(paused)

    # -- lifecycle ---------------------------------------------------------------------------

    async def close_participant(self, participant_id: str, reason: str) -> None:
        """Close everything a participant publishes or receives."""
        for down_id in [d.id for d in self.downs.values() if d.subscriber_id == participant_id]:
            await self.unsubscribe(down_id, reason)
        for stream_id in [u.id for u in self.ups.values() if u.participant_id == participant_id]:
            await self.unpublish(stream_id, reason)

    async def lost(self, participant_id: str) -> None:
        """Drop a participant's media paths, which left from an address it no longer has.

        Its streams wait to be published again (interrupted, as when consent expires, only
        seconds sooner) and its subscriptions end as failed, so it receives them again.
        """
        for down_id in [d.id for d in self.downs.values() if d.subscriber_id == participant_id]:
            await self.unsubscribe(down_id, "failed")
        for up in [u for u in self.ups.values() if u.participant_id == participant_id]:
            await up.pc.close()  # _watch_up takes it from there

    def balance(self, now: float) -> int:
        """Hold back video copies while the node cannot keep up, the slowest paths first;
        return how many are held.

        Among paths alike (or of unknown rate) the latest subscriber goes first, and those held
        stay held before others are: a choice that does not move from viewer to viewer.
        """
        tracks = [
            dt
            for down in self.downs.values()
            # A leg is never held: it carries every viewer of the stream where it leads.
            if not down.subscriber_id.startswith(CASCADE)
            for dt in down.tracks
            if dt.up.kind == "video" and not dt.paused
        ]
        held = self.load.step(now, len(tracks))

        def slowest_first(dt: DownTrack) -> tuple[bool, float, float]:
            rate = dt.path_rate()
            return (not dt.held, float("inf") if rate is None else rate, -dt.attached_at)

        tracks.sort(key=slowest_first)
        for i, dt in enumerate(tracks):
            dt.hold(i < held)
        return held

    async def _balance_forever(self) -> None:
        while True:
            await asyncio.sleep(WINDOW)
            try:
                self.balance(time.monotonic())
            except Exception:
                handled_failure("balancing the node's load")

    def _heard(self, down: DownStream) -> int:
        """How many of the loudest voices a subscription's listener hears (0: every voice)."""
        return self.loudest if down.voices is None else down.voices

    def _listen(self) -> None:
        """Start choosing voices and telling who speaks, if not started."""
        if self._choosing is None or self._choosing.done():
            self._choosing = asyncio.ensure_future(self._choose_voices_forever())
            self._tasks.add(self._choosing)

    def tell_speaking(self, now: float) -> None:
        """Tell who started or stopped speaking, at most every SPEAKING_EVERY per microphone;
        a copy of another worker's or node's stream is told of there."""
        told: dict[UpTrack, tuple[bool, float]] = {}
        for up in self.ups.values():
            if up.participant_id.startswith(CASCADE):
                continue
            for track in up.tracks.values():
                if track.voice is None:
                    continue
                was, at = self._told.get(track, (False, -math.inf))
                speaking = not track.muted and track.voice.speaking(now)
                if speaking != was and now - at >= SPEAKING_EVERY:
                    was, at = speaking, now
                    if self.on_speaking is not None:
                        self.on_speaking(up.id, track.feed_id, speaking)
                told[track] = (was, at)
        self._told = told

    def choose_voices(self, now: float) -> None:
        """Let each listener hear only the loudest voices speaking among those it subscribes
        to; a leg to another worker or node carries every voice (the far side chooses)."""
        listening: dict[str, list[DownTrack]] = {}
        count: dict[str, int] = {}  # voices each listener hears: its room's, in each subscription
        for down in self.downs.values():
            if down.subscriber_id.startswith(CASCADE):
                continue
            n = count[down.subscriber_id] = self._heard(down)
            for dt in down.tracks:
                voice = dt.up.voice
                if n and voice is not None and voice.heard_at is not None:
                    listening.setdefault(down.subscriber_id, []).append(dt)
                elif n and voice is not None and not voice.bare:
                    dt.quieten(True)  # nothing heard of it yet: it is not among the loudest
                elif dt.quiet:
                    # A publisher that writes no audio levels cannot be ranked: always heard.
                    dt.quieten(False)
        used: dict[tuple[int, frozenset[Hashable]], Choice] = {}
        for listener, tracks in listening.items():
            voices: dict[Hashable, Voice] = {dt.up: dt.up.voice for dt in tracks if dt.up.voice}
            key = (count[listener], frozenset(voices))
            chosen = chosen_for(self._choices, voices, voices, key[0], now)
            used[key] = self._choices[key]
            for dt in tracks:
                dt.quieten(dt.up not in chosen)
        self._choices = used  # a set of voices nobody hears any more is forgotten

    async def _choose_voices_forever(self) -> None:
        while True:
            await asyncio.sleep(VOICE_TICK)
            try:
                now = self.clock()
                self.choose_voices(now)
                self.tell_speaking(now)
            except Exception:
                handled_failure("choosing the voices heard")

    async def close(self) -> None:
        """Close every peer connection."""
        for down_id in list(self.downs):
            await self.unsubscribe(down_id, "server_shutdown")
        for stream_id in list(self.ups):
            await self.unpublish(stream_id, "server_shutdown")
        for task in list(self._tasks):
            task.cancel()

    @staticmethod
    def new_id(prefix: str) -> str:
        """Return a fresh stream id."""
        return f"{prefix}-{secrets.token_hex(6)}"

    def stats(self) -> dict[str, Any]:
        """Return per-track and per-subscriber counters."""
        now = self.clock()
        ups = []
        for up in self.ups.values():
            for mid, t in up.tracks.items():
                counts = t.counts()
                ups.append(
                    {
                        "stream": up.id,
                        "feed": t.feed_id,
                        "mid": mid,
                        "kind": t.kind,
                        "codec": t.codec.name,
                        "participant_id": up.participant_id,
                        **counts,
                        "plis_sent": t.plis_sent,
                        "keyframes": t.keyframes,
                        "subscribers": len(t.downs),
                        "upstream_bitrate": t.receiver.upstream_bitrate,
                        "layers": [
                            {"rid": x.name, "bitrate": x.rate, "live": x.live(now)}
                            for x in t.layers.values()
                            if x.name
                        ],
                        "recorded_layer": t.recorded or None,
                        "state": "reconnecting" if up.interrupted else "live",
                    }
                )
        downs = []
        for down in self.downs.values():
            for dt in down.tracks:
                s = dt.sender
                downs.append(
                    {
                        "stream": down.id,
                        "of": down.up.id,
                        "feed": dt.up.feed_id,
                        "subscriber_id": down.subscriber_id,
                        "packets": s.packets_sent,
                        "bytes": s.bytes_sent,
                        "nacks": s.nacks,
                        "retransmits": s.retransmits,
                        "repeats_ignored": s.resends.suppressed,
                        "plis": s.plis,
                        "rtt": s.rtt,
                        "waiting_keyframe": dt.waiting,
                        "paused": dt.paused,
                        "held": dt.held,
                        "held_packets": dt.held_packets,
                        "estimate": None if s.congestion is None else s.congestion.estimator.target,
                        "remb": dt.remb,
                        "loss": s.loss,
                        "layer": dt.layer or None,
                        "target_layer": dt.target or None,
                        "switches": dt.switches,
                        "shed": dt.shed,
                    }
                )
        load = {
            "held": self.load.held,
            "queue_wait": self.load.last_floor,
            "queue_wait_worst": self.load.last_worst,
        }
        # What this process's ICE ports dropped before aioice saw it, by kind.
        return {"up": ups, "down": downs, "load": load, "dropped": dict(INGRESS.dropped)}

    # -- helpers -----------------------------------------------------------------------------

    async def _start_when_ready(self, dt: DownTrack) -> None:
        await dt.sender.ready.wait()
        # A new subscriber needs a keyframe now, not at the encoder's next scheduled one.
        dt.up.request_keyframe()

    async def _expire_unanswered(self, down_id: str) -> None:
        await asyncio.sleep(ANSWER_TIMEOUT)
        down = self.downs.get(down_id)
        if down is not None and not down.answered:
            await self.unsubscribe(down_id, "no_answer")

    def _watch_up(self, up: UpStream, pc: RelayPeerConnection) -> None:
        @pc.on("connectionstatechange")
        def _changed() -> None:
            # The publisher's path is lost (consent expired, or its DTLS ended): the stream
            # waits for the publisher to publish it again; the room decides for how long.
            # A connection replaced or closed by us is not the stream's any more.
            lost = pc.connectionState in ("failed", "closed")
            if not lost or self.ups.get(up.id) is not up or up.pc is not pc or up.interrupted:
                return
            if not up.resumable:
                self._spawn(self.unpublish(up.id, "failed"))
                return
            up.interrupted = True
            if self.on_up_closed is not None:
                self.on_up_closed(up.id, INTERRUPTED)

    def _watch(self, pc: RelayPeerConnection, on_failure: Callable[[], Any]) -> None:
        @pc.on("connectionstatechange")
        def _changed() -> None:
            # "closed" without our asking means the peer hung up (DTLS close_notify).
            if pc.connectionState in ("failed", "closed"):
                self._spawn(on_failure())

    def _local_sdp(self, pc: RelayPeerConnection, rewrite: bool = True) -> str:
        assert pc.localDescription is not None
        sdp: str = pc.localDescription.sdp
        if self.rewrite_to and rewrite:
            sdp = rewrite_host_candidates(sdp, self.rewrite_to)
        return sdp

    def _answer(self, pc: RelayPeerConnection, offer: str, rewrite: bool = True) -> str:
        """The answer to a publisher: aiortc's, with the simulcast layers it will receive and
        RED preferred where the publisher's codec was agreed and it offered RED over it."""
        layers = offered_layers(offer)
        sdp = self._local_sdp(pc, rewrite)
        sdp = answer_with_layers(sdp, layers) if layers else sdp
        red = {
            t.mid: (t.receiver.red.payload_type, t.receiver.red.primary)
            for t in pc.getTransceivers()
            if t.mid is not None
            and isinstance(t.receiver, ForwardingReceiver)
            and t.receiver.red is not None
        }
        return answer_with_red(sdp, red) if red else sdp

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _accept(
    pc: RelayPeerConnection,
    offer: str,
    take: Callable[[RTCRtpTransceiver, RTCRtpCodecParameters], None],
) -> None:
    """Take a publisher's offer: `take` sees each transceiver and its codec; then answer.

    Any failure is a MediaError (an offer aiortc cannot use is `bad_sdp`).
    """
    try:
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        red = offered_red(offer)
        for t in pc.getTransceivers():
            codec = negotiated_codec(t)
            if t.mid is None or codec is None:
                raise MediaError("bad_sdp", "no codec in common for a media section")
            if t.mid in red and red[t.mid][1] == codec.payloadType:
                assert isinstance(t.receiver, ForwardingReceiver)
                t.receiver.red = Unwrapper(*red[t.mid])
            take(t, codec)
        await pc.setLocalDescription(await pc.createAnswer())
    except MediaError:
        raise
    except Exception as e:
        raise MediaError("bad_sdp", f"the offer was not accepted: {e}") from None


_CANDIDATE = re.compile(r"^(a=candidate:\S+ \d+ \S+ \d+ )(\S+)( \d+ typ host.*)$", re.M)


def rewrite_host_candidates(sdp: str, address: str) -> str:
    """Put a public address into host candidates, for a server behind a 1:1 NAT."""
    sdp = _CANDIDATE.sub(lambda m: m.group(1) + address + m.group(3), sdp)
    family = "IP6" if ":" in address else "IP4"
    return re.sub(r"^c=IN IP[46] [^\s]+", f"c=IN {family} {address}", sdp, flags=re.M)


def gather_on(announce: str | None) -> str | None:
    """Gather ICE candidates for an announced address; return the address to rewrite host
    candidates to (a 1:1 NAT's public one), or None."""
    if not announce:
        return None
    if local_address(announce):
        # Gather on exactly this address (aioice never offers loopback on its own).
        use_host_addresses([announce])
        return None
    return announce


def local_address(address: str) -> bool:
    """Tell whether an address belongs to this machine (so ICE can gather on it directly)."""
    import socket

    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((address, 0))
        return True
    return False
