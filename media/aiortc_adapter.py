"""Every use of aiortc internals, in one place, so an upgrade breaks here alone.

Built against aiortc 1.16.0 (aioice's internals are in aioice_adapter; the DTLS transport's, for
transport-wide feedback, in transport_cc). aiortc decodes
everything it receives and encodes everything it sends; a forwarding unit needs neither, so
this module supplies a receiver that hands on RTP packets undecoded and a sender that sends
packets it is given, and a peer connection that uses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any

import aiortc
import pylibsrtp
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpTransceiver,
)
from aiortc.codecs import is_rtx
from aiortc.rate import RemoteBitrateEstimator
from aiortc.rtcdtlstransport import RTCDtlsTransport, State
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpReceiveParameters,
)
from aiortc.rtcrtpreceiver import NackGenerator, RTCRtpReceiver, StreamStatistics
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import (
    RTCP_PSFB_APP,
    AnyRtcpPacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpSrPacket,
    RtpPacket,
    is_rtcp,
    pack_remb_fci,
    unpack_remb_fci,
    unwrap_rtx,
    wrap_rtx,
)
from aiortc.utils import uint16_add

from .aioice_adapter import (
    guard_ice_ports,
    nominated_pair,
    plain_socket,
    send_datagram_now,
    take_datagrams_now,
    taker_of,
)
from .failures import handled_failure
from .fastcopy import FAST, session_address
from .packetcache import PacketCache
from .red import Unwrapper, Wrapper
from .resend import ResendGuard
from .rtpcopy import CopyHeader, vad_byte
from .simulcast import MAX_LAYERS
from .transport_cc import ARRIVALS, CONGESTION, OVERHEAD, TWCC_INTERVAL, Congestion
from .twcc import TwccFeedback

AIORTC_VERSION = "1.16.0"
if aiortc.__version__ != AIORTC_VERSION:  # pragma: no cover - guards an unpinned install
    raise ImportError(
        f"media.aiortc_adapter is written for aiortc {AIORTC_VERSION}, found {aiortc.__version__}"
    )


def _get(obj: object, owner: str, name: str) -> Any:
    """Read a name-mangled private attribute of an aiortc object."""
    return getattr(obj, f"_{owner}__{name}")


def _set(obj: object, owner: str, name: str, value: Any) -> None:
    """Write a name-mangled private attribute of an aiortc object."""
    setattr(obj, f"_{owner}__{name}", value)


# RTCRtpSender's private sender-report counters, named once for the forwarding path.
_NTP = "_RTCRtpSender__ntp_timestamp"
_RTP = "_RTCRtpSender__rtp_timestamp"
_OCTETS = "_RTCRtpSender__octet_count"
_PACKETS = "_RTCRtpSender__packet_count"

# `RTCDtlsTransport.state` formats an enum into a string each time it is read.
_CONNECTED = State.CONNECTED

# The DTLS transport's private counters of what it sent, for its stats.
_RX_BYTES = "_RTCDtlsTransport__rx_bytes"
_RX_PACKETS = "_RTCDtlsTransport__rx_packets"
_TX_BYTES = "_RTCDtlsTransport__tx_bytes"
_TX_PACKETS = "_RTCDtlsTransport__tx_packets"
# The ids a header-extension map gave each extension (read for every packet received).
_IDS = "_HeaderExtensionsMap__ids"

# Seconds from the NTP epoch (1900) to the Unix epoch (1970).
NTP_UNIX_OFFSET = 2208988800

# Called with each packet, its codec, and its simulcast layer (its rid; "" without simulcast).
# A probe's padding is sent this many packets at most at a time.
MAX_PADDING_PACKETS = 40
# Called for every packet a publisher sends, synchronously: it must not block.
PacketHandler = Callable[[RtpPacket, RTCRtpCodecParameters, str], None]

log = logging.getLogger("teleconsult.media")


class WrapSafeStatistics(StreamStatistics):
    """aiortc's per-SSRC receiver statistics, with jitter right across the RTP clock's wrap."""

    def add(self, packet: RtpPacket) -> None:
        """Count one packet (aiortc subtracts raw 32-bit timestamps for the jitter)."""
        last = self._last_timestamp
        if last is not None:
            step = (packet.timestamp - last) % (1 << 32)
            if step >= 1 << 31:
                step -= 1 << 32
            # The same value modulo 2**32, placed so that aiortc's difference is the true step.
            self._last_timestamp = packet.timestamp - step
        super().add(packet)


class ForwardingReceiver(RTCRtpReceiver):
    """Receives a publisher's RTP and hands each packet on undecoded.

    Statistics (receiver reports), NACK generation and RTX unwrapping work as in aiortc;
    the jitter buffer, depacketizer and decoder thread are never used.
    """

    def __init__(self, kind: str, transport: Any) -> None:
        super().__init__(kind, transport)
        self.on_packet: PacketHandler | None = None
        self.upstream_bitrate: int | None = None
        self.media_ssrc: int | None = None
        self.codecs: dict[int, RTCRtpCodecParameters] = {}
        self.nacks_sent = 0
        # When the packet being handled was taken from the transport (perf_counter).
        self.arrived = 0.0
        self.packets = 0
        self.bytes = 0
        # The publisher's latest sender report: (wall time, RTP timestamp), for aligning tracks.
        self.last_sr: tuple[float, int] | None = None
        self._estimator = RemoteBitrateEstimator() if kind == "video" else None
        # aiortc's own per-SSRC statistics and RTX map (its receiver reports read them); the
        # objects never change, so the packet path holds them directly.
        self._streams: dict[int, StreamStatistics] = _get(self, "RTCRtpReceiver", "remote_streams")
        self._rtx_ssrc: dict[int, int] = _get(self, "RTCRtpReceiver", "rtx_ssrc")
        self._nack = NackGenerator() if kind == "video" else None
        # Simulcast: each layer's SSRC by rid, and each SSRC's rid (a browser names them in
        # header extensions only until it hears our receiver reports); a generator of NACKs
        # per layer, since each has its own numbering.
        self.layer_ssrcs: dict[str, int] = {}
        self._layer_of: dict[int, str] = {}
        self._nacks: dict[int, NackGenerator] = {}
        self._twcc: TwccFeedback | None = None
        self._twcc_task: asyncio.Task[None] | None = None
        # A publisher's redundant audio (RED), when the answer agreed to it.
        self.red: Unwrapper | None = None

    async def receive(self, parameters: RTCRtpReceiveParameters) -> None:
        """Start receiving: as aiortc does, but without starting a decoder thread."""
        if _get(self, "RTCRtpReceiver", "started"):
            return
        for codec in parameters.codecs:
            assert codec.payloadType is not None
            self.codecs[codec.payloadType] = codec
        _get(self, "RTCRtpReceiver", "codecs").update(self.codecs)
        for encoding in parameters.encodings:
            if encoding.rtx:
                self._rtx_ssrc[encoding.rtx.ssrc] = encoding.ssrc
        if self.red is not None:
            # aiortc routes packets by payload type, and knows nothing of RED's.
            red = RTCRtpCodecParameters(
                mimeType="audio/red", clockRate=48000, channels=2, payloadType=self.red.payload_type
            )
            parameters = replace(parameters, codecs=[*parameters.codecs, red])
        self.transport._register_rtp_receiver(self, parameters)
        _set(self, "RTCRtpReceiver", "rtcp_task", asyncio.ensure_future(self._run_rtcp()))
        _set(self, "RTCRtpReceiver", "started", True)

    async def _handle_rtp_packet(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        # aiortc's own path (a packet that waited in the transport's queue).
        self.handle_rtp_now(packet, arrival_time_ms)

    def handle_rtp_now(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        """Take one RTP packet from the publisher and hand it on, without awaiting anything."""
        # aiortc's DTLS transport ends (and the peer connection fails) on any exception raised
        # here: one bad packet must cost that packet, not the publisher's stream. One try, no
        # extra call: this runs for every packet a publisher sends.
        try:
            if not self._enabled:
                return
            twcc = packet.extensions.transport_sequence_number
            if twcc is not None:
                # The publisher estimates its uplink from our feedback; our own receive-side
                # estimate (below) would only hold it back.
                if self._twcc is None:
                    self._report_arrivals()
                assert self._twcc is not None
                self._twcc.add(twcc, int(time.perf_counter() * 1e6))
            elif self._estimator is not None and packet.extensions.abs_send_time is not None:
                remb = self._estimator.add(
                    abs_send_time=packet.extensions.abs_send_time,
                    arrival_time_ms=arrival_time_ms,
                    payload_size=len(packet.payload) + packet.padding_size,
                    ssrc=packet.ssrc,
                )
                if remb is not None:
                    self.upstream_bitrate = remb[0]
            codec = self.codecs.get(packet.payload_type)
            red = self.red
            if red is not None and packet.payload_type == red.payload_type:
                self._handle_red(packet, red)
                return
            if codec is None:
                return
            ext = packet.extensions
            if ext.rtp_stream_id is not None or ext.repaired_rtp_stream_id is not None:
                self._learn_layer(packet, codec)
            streams = self._streams
            if packet.ssrc not in streams:
                streams[packet.ssrc] = WrapSafeStatistics(codec.clockRate)
            streams[packet.ssrc].add(packet)
            if is_rtx(codec):
                original = self._rtx_ssrc.get(packet.ssrc)
                apt = codec.parameters.get("apt")
                if original is None or not isinstance(apt, int) or apt not in self.codecs:
                    return
                if len(packet.payload) < 2:
                    return  # RTX padding used for bandwidth probing
                packet = unwrap_rtx(packet, payload_type=apt, ssrc=original)
                codec = self.codecs[apt]
            self.media_ssrc = packet.ssrc
            self.arrived = time.perf_counter()
            layer = self._layer_of.get(packet.ssrc, "") if self._layer_of else ""
            nack = self._nack if not layer else self._nacks.setdefault(packet.ssrc, NackGenerator())
            if nack is not None and nack.add(packet):
                self.nacks_sent += 1
                # Beside the forwarding: the packet goes on now, the NACK as soon as it can.
                _beside(self._send_rtcp_nack(packet.ssrc, sorted(nack.missing)))
            self.packets += 1
            self.bytes += len(packet.payload)
            if self.on_packet is not None:
                self.on_packet(packet, codec, layer)
        except Exception:
            handled_failure("handling a publisher's RTP packet")

    def _handle_red(self, packet: RtpPacket, red: Unwrapper) -> None:
        """Hand on the Opus packets a RED packet holds (those lost before it put back)."""
        codec = self.codecs.get(red.primary)
        if codec is None:
            return
        if packet.ssrc not in self._streams:
            self._streams[packet.ssrc] = WrapSafeStatistics(codec.clockRate)
        # Our receiver reports tell the publisher what was lost on the way, recovered or not.
        self._streams[packet.ssrc].add(packet)
        self.media_ssrc = packet.ssrc
        self.arrived = time.perf_counter()
        for inner in red.unwrap(packet):
            self.packets += 1
            self.bytes += len(inner.payload)
            if self.on_packet is not None:
                self.on_packet(inner, codec, "")

    async def _handle_rtcp_packet(self, packet: AnyRtcpPacket) -> None:
        try:
            if isinstance(packet, RtcpSrPacket):
                ntp = packet.sender_info.ntp_timestamp
                self.last_sr = (
                    (ntp >> 32) - NTP_UNIX_OFFSET + (ntp & 0xFFFFFFFF) / 2**32,
                    packet.sender_info.rtp_timestamp,
                )
            await super()._handle_rtcp_packet(packet)
        except Exception:
            handled_failure("handling a publisher's RTCP packet")

    def _report_arrivals(self) -> None:
        """Start reporting this transport's arrivals to the publisher (transport-cc)."""
        self._twcc = ARRIVALS.setdefault(self.transport, TwccFeedback())
        self._twcc_task = asyncio.ensure_future(self._send_feedback_forever(self._twcc))

    async def _send_feedback_forever(self, twcc: TwccFeedback) -> None:
        while True:
            await asyncio.sleep(TWCC_INTERVAL)
            rtcp_ssrc = _get(self, "RTCRtpReceiver", "rtcp_ssrc")
            if rtcp_ssrc is None:
                continue
            for packet in twcc.build(rtcp_ssrc, self.media_ssrc or 0):
                try:
                    await self.transport._send_rtp(packet)
                except ConnectionError:
                    return

    async def stop(self) -> None:
        """Stop receiving, and reporting arrivals."""
        if self._twcc_task is not None:
            self._twcc_task.cancel()
        await super().stop()

    def _learn_layer(self, packet: RtpPacket, codec: RTCRtpCodecParameters) -> None:
        """Note which layer an SSRC carries (rid), or which layer's losses it repairs (RTX)."""
        ext = packet.extensions
        new = packet.ssrc not in self._layer_of and len(self._layer_of) < 2 * MAX_LAYERS
        if ext.rtp_stream_id is not None and not is_rtx(codec) and new:
            self._layer_of[packet.ssrc] = ext.rtp_stream_id
            self.layer_ssrcs[ext.rtp_stream_id] = packet.ssrc
        repaired = ext.repaired_rtp_stream_id or (ext.rtp_stream_id if is_rtx(codec) else None)
        if is_rtx(codec) and repaired is not None and packet.ssrc not in self._rtx_ssrc:
            original = self.layer_ssrcs.get(repaired)
            if original is not None:
                self._rtx_ssrc[packet.ssrc] = original

    async def request_keyframe(self, layer: str = "") -> None:
        """Send a PLI to the publisher (for one simulcast layer, when it has them)."""
        ssrc = self.layer_ssrcs.get(layer) if layer else self.media_ssrc
        if ssrc is not None:
            await self._send_rtcp_pli(ssrc)

    async def send_remb(self, bitrate: int) -> None:
        """Tell the publisher the bitrate it should send at most."""
        rtcp_ssrc = _get(self, "RTCRtpReceiver", "rtcp_ssrc")
        if self.media_ssrc is None or rtcp_ssrc is None:
            return
        packet = RtcpPsfbPacket(
            fmt=RTCP_PSFB_APP,
            ssrc=rtcp_ssrc,
            media_ssrc=0,
            fci=pack_remb_fci(bitrate, list(self.layer_ssrcs.values()) or [self.media_ssrc]),
        )
        await self._send_rtcp(packet)

    def loss(self) -> tuple[int, int]:
        """Return (packets lost, packets expected) over the stream's life."""
        lost = expected = 0
        for s in self._streams.values():
            lost += max(0, s.packets_lost)
            expected += s.packets_expected
        return lost, expected


def send_rtp_now(dtls: RTCDtlsTransport, data: bytes) -> bool:
    """Protect one RTP packet and hand it to the ICE socket at once, as aiortc's `_send_rtp`
    does over three awaited layers; tell whether it went (False: not connected)."""
    if dtls._state is not _CONNECTED:
        return False
    protected = dtls._tx_srtp.protect(data)
    try:
        sent = send_datagram_now(dtls.transport._connection, protected)
    except ConnectionError:
        return False
    if not sent:
        # Not an ordinary socket (a TURN allocation, say): aioice's own way, in order.
        _beside(dtls.transport._send(protected))
    setattr(dtls, _TX_BYTES, getattr(dtls, _TX_BYTES) + len(protected))
    setattr(dtls, _TX_PACKETS, getattr(dtls, _TX_PACKETS) + 1)
    return True


_LATER: set[asyncio.Future[None]] = set()


class Wire:
    """Where a DTLS transport's copies go for the compiled path: socket, address, SRTP session.

    Read from aioice's nominated pair and aiortc's session, and read again when either changes
    (a new path after a network change, new keys after a DTLS restart).
    """

    def __init__(self, pair: Any, session: Any, fd: int, addr: bytes) -> None:
        self.pair = pair
        self.session = session
        self.fd = fd
        self.addr = addr
        self.srtp = session_address(session)


def current_wire(dtls: RTCDtlsTransport, wire: Wire | None) -> Wire | None:
    """Return where the compiled path sends now (`wire` while still true), or None when only the
    Python path can (not connected, or not an ordinary socket: a TURN allocation)."""
    if dtls._state is not _CONNECTED:
        return None
    pair = nominated_pair(dtls.transport._connection)
    session = dtls._tx_srtp
    if wire is not None and wire.pair is pair and wire.session is session:
        return wire
    plain = plain_socket(pair)
    if plain is None:
        return None
    fd, (host, port) = plain
    return Wire(pair, session, fd, FAST.sockaddr(host, port))


def _beside(send: Coroutine[Any, Any, None]) -> None:
    """Run a send beside the packet path (kept referenced: the loop holds tasks weakly)."""
    task = asyncio.ensure_future(_quietly(send))
    _LATER.add(task)
    task.add_done_callback(_LATER.discard)


async def _quietly(send: Awaitable[None]) -> None:
    """Await a send beside the packet path: a path that went away meanwhile is no error."""
    try:
        await send
    except (ConnectionError, OSError):
        pass
    except Exception:
        handled_failure("sending a packet")


class ForwardingSender(RTCRtpSender):
    """Sends RTP packets it is handed, keeping history for NACKs and counters for reports."""

    def __init__(self, kind: str, transport: Any) -> None:
        super().__init__(kind, transport)
        self.codec: RTCRtpCodecParameters | None = None
        self.rtx_payload_type: int | None = None
        self.ready = asyncio.Event()
        self.on_keyframe_request: Callable[[], None] | None = None
        self.on_remb: Callable[[int], None] | None = None
        # Each copy as sent (before protection), for retransmission.
        self.cache: PacketCache[bytes] = PacketCache(1024)
        self._headers: dict[bool, CopyHeader] = {}  # by whether copies carry an audio level
        self.nacks = 0
        self.retransmits = 0
        self.resends = ResendGuard()
        self.plis = 0
        self._rtx_seq = 0
        self._mid: str | None = None
        self._extensions: Any = None
        self.congestion: Congestion | None = None
        self._last_seq: int | None = None
        self.padded = 0  # bytes sent to probe the path
        self.loss: float | None = None  # share lost, as the subscriber's latest report says
        # Redundant audio, when the subscriber's answer took it.
        self.red: Wrapper | None = None
        self._wire: Wire | None = None

    async def _run_rtp(self, codec: RTCRtpCodecParameters) -> None:
        # Replaces aiortc's read-encode-send loop: packets arrive through forward().
        self.codec = codec
        self.rtx_payload_type = _get(self, "RTCRtpSender", "rtx_payload_type")
        # Fixed once the sender has started: read them once, not for every packet.
        self._mid = _get(self, "RTCRtpSender", "mid")
        self._extensions = _get(self, "RTCRtpSender", "rtp_header_extensions_map")
        if _get(self._extensions, "HeaderExtensionsMap", "ids").transport_sequence_number:
            # The subscriber agreed to transport-cc: number our packets, read its feedback.
            self.congestion = CONGESTION.setdefault(self.transport, Congestion())
            self.congestion.senders.add(self)
        _get(self, "RTCRtpSender", "rtp_started").set()
        self.ready.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        _get(self, "RTCRtpSender", "rtp_exited").set()

    def forward(self, source: RtpPacket, seq: int, timestamp: int, now: float) -> None:
        """Send a copy of a packet renumbered for this subscriber, at wall time `now`.

        Made by patching a prepared header (`media/rtpcopy.py`), protected and handed to the
        ICE socket in one synchronous step: no RtpPacket, no awaited layer per copy.
        """
        assert self.codec is not None and self.codec.payloadType is not None
        payload_type, payload = self.codec.payloadType, source.payload
        red = self.red
        if red is not None and red.primary == payload_type:
            payload_type, payload = red.payload_type, red.wrap(seq, timestamp, payload)
        level = source.extensions.audio_level
        header = self._headers.get(level is not None)
        if header is None:
            header = self._headers[level is not None] = CopyHeader(
                self._extensions, self._ssrc, self._mid, self.congestion is not None,
                level is not None,
            )  # fmt: skip
        ntp = int((now + NTP_UNIX_OFFSET) * (1 << 32))
        number = None
        if self.congestion is not None:
            number = self.congestion.number(len(payload) + OVERHEAD)
        marker_pt, abs_send_time = (source.marker << 7) | payload_type, (ntp >> 14) & 0x00FFFFFF
        wire = None
        # The compiled path, unless it was not built or a test replaced the send to lose copies.
        if FAST is not None and "_send" not in self.__dict__:
            try:
                wire = self._wire = current_wire(self.transport, self._wire)
            except ConnectionError:
                return
        if wire is not None:
            data, sent = FAST.copy(
                wire.fd, wire.addr, wire.srtp, header.template, marker_pt, seq, timestamp,
                header.abs_at, abs_send_time, header.tcc_at, number, header.vad_at,
                None if level is None else vad_byte(level), payload,
            )  # fmt: skip
            if sent > 0:
                dtls = self.transport
                setattr(dtls, _TX_BYTES, getattr(dtls, _TX_BYTES) + sent)
                setattr(dtls, _TX_PACKETS, getattr(dtls, _TX_PACKETS) + 1)
        else:
            data = header.make(marker_pt, seq, timestamp, abs_send_time, number, level, payload)
        self.cache.put(seq, data)
        self._last_seq = seq
        if wire is None and not self._send(data):
            return
        # The counters aiortc's RTCP loop puts in sender reports.
        setattr(self, _NTP, ntp)
        setattr(self, _RTP, timestamp)
        setattr(self, _OCTETS, getattr(self, _OCTETS) + len(payload))
        setattr(self, _PACKETS, getattr(self, _PACKETS) + 1)

    def _send(self, data: bytes) -> bool:
        """Protect and send one RTP packet now; tell whether the transport took it."""
        return send_rtp_now(self.transport, data)

    async def pad(self, nbytes: int) -> None:
        """Send about `nbytes` more, as retransmissions of the latest packets (which the
        subscriber drops as duplicates): a probe of its path. Only with RTX."""
        if self.rtx_payload_type is None or self._last_seq is None:
            return
        seq, sent = self._last_seq, 0
        for _ in range(MAX_PADDING_PACKETS):
            if sent >= nbytes:
                break
            data = self.cache.get(seq)
            if data is not None:
                await self._retransmit(seq, padding=True)
                sent += len(data)
            seq = uint16_add(seq, -1)
        self.padded += sent

    @property
    def packets_sent(self) -> int:
        """Return the number of packets sent, retransmissions excluded."""
        return int(getattr(self, _PACKETS))

    @property
    def bytes_sent(self) -> int:
        """Return the payload bytes sent, retransmissions excluded."""
        return int(getattr(self, _OCTETS))

    @property
    def rtt(self) -> float | None:
        """Return the round-trip time estimated from receiver reports."""
        value = _get(self, "RTCRtpSender", "rtt")
        return None if value is None else float(value)

    async def _retransmit(self, sequence_number: int, padding: bool = False) -> None:
        if not padding:
            self.nacks += 1
        data = self.cache.get(sequence_number)
        if data is None:
            return
        if not padding and not self.resends.allow(sequence_number, time.monotonic(), self.rtt):
            return
        packet = RtpPacket.parse(data, self._extensions)
        if self.rtx_payload_type is not None:
            packet = wrap_rtx(
                packet,
                payload_type=self.rtx_payload_type,
                sequence_number=self._rtx_seq,
                ssrc=self._rtx_ssrc,
            )
            self._rtx_seq = uint16_add(self._rtx_seq, 1)
        if self.congestion is not None:
            size = len(packet.payload) + OVERHEAD
            packet.extensions.transport_sequence_number = self.congestion.number(size)
        data = packet.serialize(self._extensions)
        with contextlib.suppress(ConnectionError):
            await self.transport._send_rtp(data)
            if not padding:
                self.retransmits += 1

    def _send_keyframe(self) -> None:
        self.plis += 1
        if self.on_keyframe_request is not None:
            self.on_keyframe_request()

    async def _handle_rtcp_packet(self, packet: AnyRtcpPacket) -> None:
        try:
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                with contextlib.suppress(ValueError):
                    bitrate, ssrcs = unpack_remb_fci(packet.fci)
                    if self._ssrc in ssrcs and self.on_remb is not None:
                        self.on_remb(bitrate)
                return
            if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
                for report in packet.reports:
                    if report.ssrc == self._ssrc:
                        self.loss = report.fraction_lost / 256
            await super()._handle_rtcp_packet(packet)
        except Exception:
            handled_failure("handling a subscriber's RTCP packet")


def receive_rtp_now(dtls: RTCDtlsTransport, data: bytes, rx: _Rx) -> bool:
    """Take an SRTP packet straight from the socket into its forwarding receiver, as aiortc's
    DTLS transport would after a queue, a task wake-up and three awaited layers; tell whether
    it was taken (False: aiortc's own path takes it, as it does DTLS and RTCP)."""
    if dtls._state is not _CONNECTED or not 127 < data[0] < 192 or is_rtcp(data):
        return False
    srtp = dtls._rx_srtp
    if srtp is None:
        return False
    setattr(dtls, _RX_BYTES, getattr(dtls, _RX_BYTES) + len(data))
    setattr(dtls, _RX_PACKETS, getattr(dtls, _RX_PACKETS) + 1)
    # aiortc's clock.current_ms, without making a datetime for every packet.
    arrival_time_ms = int((time.time() + NTP_UNIX_OFFSET) * 1000)
    extensions = dtls._rtp_header_extensions_map
    if FAST is not None:
        packet = FAST.receive(rx.address_of(srtp), data, getattr(extensions, _IDS))
        if packet is None:
            return True  # not authentic, a replay, or not RTP: dropped, as aiortc drops it
    else:
        try:
            packet = RtpPacket.parse(srtp.unprotect(data), extensions)
        except (pylibsrtp.Error, ValueError):
            return True
    receiver = dtls._rtp_router.route_rtp(packet)
    if isinstance(receiver, ForwardingReceiver):
        receiver.handle_rtp_now(packet, arrival_time_ms)
    elif receiver is not None:  # pragma: no cover - a relay connection has no other kind
        _beside(receiver._handle_rtp_packet(packet, arrival_time_ms=arrival_time_ms))
    return True


class _Rx:
    """A connection's receiving SRTP session and its address, for the compiled path."""

    __slots__ = ("address", "session")

    def __init__(self) -> None:
        self.session: pylibsrtp.Session | None = None
        self.address = 0

    def address_of(self, session: pylibsrtp.Session) -> int:
        """Return the session's address: read once, and again after a DTLS restart."""
        if session is not self.session:
            self.session, self.address = session, session_address(session)
        return self.address


class _Taker:
    """Hands a connection's datagrams to `receive_rtp_now` while its DTLS transport lives."""

    __slots__ = ("dtls", "rx", "taken")

    def __init__(self, dtls: RTCDtlsTransport) -> None:
        self.dtls = weakref.ref(dtls)
        self.taken = 0
        self.rx = _Rx()

    def __call__(self, data: bytes) -> bool:
        dtls = self.dtls()
        try:
            if dtls is None or not receive_rtp_now(dtls, data, self.rx):
                return False
        except Exception:
            # Raised into the socket's callback it would close the socket: it costs the packet.
            handled_failure("taking a publisher's packet")
        self.taken += 1
        return True


def packets_taken_now(dtls: RTCDtlsTransport) -> int:
    """Return how many SRTP packets a relay connection's transport took straight from its socket."""
    taker = taker_of(dtls.transport._connection)
    return taker.taken if isinstance(taker, _Taker) else 0


class RelayPeerConnection(RTCPeerConnection):
    """A peer connection whose transceivers forward instead of decoding and encoding."""

    def __init__(self, configuration: RTCConfiguration | None = None) -> None:
        # Its ports drop broken datagrams, and hand SRTP to the forwarding as it arrives.
        guard_ice_ports()
        super().__init__(configuration)

    def _RTCPeerConnection__createTransceiver(
        self, direction: str, kind: str, sender_track: Any = None
    ) -> RTCRtpTransceiver:
        # Called by aiortc for every new transceiver; swap in the forwarding halves.
        t: RTCRtpTransceiver = super()._RTCPeerConnection__createTransceiver(  # type: ignore[misc]
            direction, kind, sender_track
        )
        transport = t.receiver.transport
        # The publisher's packets go from the socket to the forwarding in one call.
        take_datagrams_now(transport.transport._connection, _Taker(transport))
        receiver = ForwardingReceiver(kind, transport)
        sender = ForwardingSender(kind, transport)
        sender._stream_id = t.sender._stream_id
        receiver._set_rtcp_ssrc(sender._ssrc)
        _set(t, "RTCRtpTransceiver", "receiver", receiver)
        _set(t, "RTCRtpTransceiver", "sender", sender)
        return t
