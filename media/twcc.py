"""Transport-wide congestion control feedback: when each packet arrived, for the sender's estimator.

The publisher numbers every packet of its transport (the transport-cc header extension) and
runs its own delay-based estimator (GCC) on our reports of what arrived when, as a browser does
for a direct call. Format: draft-holmer-rmcat-transport-wide-cc-extensions-01, section 3.1.
No I/O: the adapter feeds arrivals in and sends the packets built here.
"""

from __future__ import annotations

import struct

from .seqnum import SequenceTracker, Verdict

# RTCP transport-layer feedback (RTPFB), format 15: transport-wide feedback.
RTPFB = 205
FMT_TWCC = 15
# Packet status symbols.
NOT_RECEIVED, SMALL_DELTA, LARGE_DELTA = 0, 1, 2
# Receive deltas count quarter milliseconds; the reference time, 64 ms.
TICK_US = 250
REFERENCE_US = 64_000
MAX_RUN = 0x1FFF  # the longest run one run-length chunk holds
MAX_STATUS = 0xFFFF
# How long arrivals are kept to answer a packet that comes late, after it was reported lost.
HISTORY_US = 500_000
# How many packets a sender keeps waiting for feedback (several seconds at 10 Mbit/s).
HISTORY_PACKETS = 8192


class TwccFeedback:
    """Keeps the arrival time of each transport-wide sequence number and builds feedback."""

    def __init__(self) -> None:
        self._numbers = SequenceTracker()  # 16-bit numbers extended, duplicates told apart
        self._arrivals: dict[int, int] = {}  # extended sequence number -> arrival (µs)
        self._next: int | None = None  # the first extended number not yet reported
        self._floor: int | None = None  # numbers below this were forgotten: too late to report
        self._count = 0  # feedback packets built, modulo 256

    def add(self, seq: int, arrival_us: int) -> None:
        """Note that the packet numbered `seq` (16 bits) arrived at `arrival_us`."""
        verdict, ext = self._numbers.push(seq)
        if verdict is Verdict.DUPLICATE or verdict is Verdict.STALE:
            return  # a duplicate keeps its first arrival; a packet this late is not news
        if verdict is Verdict.RESTART:
            # The first packet, or a numbering that jumped: report from here on.
            self._arrivals.clear()
            self._next = self._floor = None
        elif self._floor is not None and ext < self._floor:
            return  # its neighbours' arrivals are forgotten: too late to report
        self._arrivals[ext] = arrival_us
        if self._next is None or ext < self._next:
            # A first packet, or one that came after we reported it missing: report it again.
            self._next = ext
        self._forget_before(arrival_us - HISTORY_US)

    def build(self, sender_ssrc: int, media_ssrc: int) -> list[bytes]:
        """Return the feedback packets for everything since the last call (none if nothing)."""
        packets: list[bytes] = []
        last = self._numbers.highest  # the highest extended number seen
        while self._next is not None and last is not None and self._next <= last:
            packet, self._next = self._one(sender_ssrc, media_ssrc, self._next, last)
            if packet:
                packets.append(packet)
        return packets

    def _forget_before(self, oldest_us: int) -> None:
        if len(self._arrivals) < 256:
            return  # cheap enough to keep; look again later
        reported = self._next if self._next is not None else 0
        stale = [s for s, at in self._arrivals.items() if at < oldest_us and s < reported]
        for s in stale:
            del self._arrivals[s]
        if stale:
            self._floor = max(stale) + 1

    def _one(self, sender: int, media: int, first: int, last: int) -> tuple[bytes, int]:
        """Build one packet from `first` on; return it and the first number it left out."""
        # The reference time comes from the first packet received.
        start = first
        while start <= last and start not in self._arrivals:
            start += 1
        if start > last:
            return b"", last + 1  # nothing received to report (its arrivals were forgotten)
        reference = self._arrivals[start] // REFERENCE_US
        previous = reference * REFERENCE_US
        symbols: list[int] = []
        deltas = bytearray()
        seq = first
        while seq <= last and len(symbols) < MAX_STATUS:
            at = self._arrivals.get(seq)
            if at is None:
                symbols.append(NOT_RECEIVED)
                seq += 1
                continue
            ticks = round((at - previous) / TICK_US)
            if 0 <= ticks <= 0xFF:
                symbols.append(SMALL_DELTA)
                deltas.append(ticks)
            elif -0x8000 <= ticks <= 0x7FFF:
                symbols.append(LARGE_DELTA)
                deltas += struct.pack("!h", ticks)
            else:
                break  # too far from the previous arrival: the next packet starts here
            previous += ticks * TICK_US
            seq += 1
        return self._packet(sender, media, first, symbols, reference, bytes(deltas)), seq

    def _packet(
        self, sender: int, media: int, base: int, symbols: list[int], reference: int, deltas: bytes
    ) -> bytes:
        count, self._count = self._count, (self._count + 1) & 0xFF
        body = struct.pack(
            "!IIHHI",
            sender,
            media,
            base & 0xFFFF,
            len(symbols),
            ((reference & 0xFFFFFF) << 8) | count,
        )
        body += encode_chunks(symbols) + deltas
        padding = -len(body) % 4
        flag = 0
        if padding:
            # RTCP padding: zeros, the last octet saying how many were added.
            body += bytes(padding - 1) + bytes([padding])
            flag = 0x20
        header = struct.pack("!BBH", 0x80 | flag | FMT_TWCC, RTPFB, (len(body) + 4) // 4 - 1)
        return header + body


def encode_chunks(symbols: list[int]) -> bytes:
    """Encode packet statuses as run-length chunks where runs are long, else 7 two-bit symbols."""
    out = bytearray()
    i = 0
    while i < len(symbols):
        run = 1
        while i + run < len(symbols) and symbols[i + run] == symbols[i] and run < MAX_RUN:
            run += 1
        if run >= 7:
            out += struct.pack("!H", (symbols[i] << 13) | run)
            i += run
            continue
        chunk = 0xC000  # a status vector chunk of two-bit symbols
        for k, symbol in enumerate(symbols[i : i + 7]):
            chunk |= symbol << (12 - 2 * k)
        out += struct.pack("!H", chunk)
        i += 7
    return bytes(out)


def parse(packet: bytes) -> tuple[int, list[int | None]]:
    """Read a feedback packet back: its base sequence number and each packet's arrival offset
    from the reference time in µs (None: not received). For tests and diagnostics."""
    _, pt, _ = struct.unpack("!BBH", packet[:4])
    if pt != RTPFB or packet[0] & 0x1F != FMT_TWCC:
        raise ValueError("not a transport-wide feedback packet")
    if packet[0] & 0x20:
        packet = packet[: len(packet) - packet[-1]]
    base, count, ref_count = struct.unpack("!HHI", packet[12:20])
    reference = ref_count >> 8
    if reference & 0x800000:
        reference -= 1 << 24
    symbols: list[int] = []
    pos = 20
    while len(symbols) < count:
        (chunk,) = struct.unpack("!H", packet[pos : pos + 2])
        pos += 2
        if chunk & 0x8000 == 0:
            symbols += [(chunk >> 13) & 0x3] * (chunk & MAX_RUN)
        elif chunk & 0x4000:
            symbols += [(chunk >> (12 - 2 * k)) & 0x3 for k in range(7)]
        else:
            symbols += [(chunk >> (13 - k)) & 0x1 for k in range(14)]
    at = reference * REFERENCE_US
    arrivals: list[int | None] = []
    for symbol in symbols[:count]:
        if symbol == NOT_RECEIVED:
            arrivals.append(None)
            continue
        if symbol == SMALL_DELTA:
            ticks = packet[pos]
            pos += 1
        else:
            (ticks,) = struct.unpack("!h", packet[pos : pos + 2])
            pos += 2
        at += ticks * TICK_US
        arrivals.append(at)
    return base, arrivals


class SentPackets:
    """What one transport sent, by transport-wide number, until feedback says what arrived."""

    def __init__(self) -> None:
        self._next = 0  # the extended number the next packet gets
        self._sent: dict[int, tuple[int, int]] = {}  # extended number -> (sent µs, size)

    def number(self, sent_us: int, size: int) -> int:
        """Give the next packet its number (16 bits, for the header) and keep when it left."""
        ext = self._next
        self._next += 1
        self._sent[ext] = (sent_us, size)
        if len(self._sent) > 4 * HISTORY_PACKETS:
            # Feedback that never came (a viewer that does not send it): keep the latest only.
            for old in [s for s in self._sent if s < ext - HISTORY_PACKETS]:
                del self._sent[old]
        return ext & 0xFFFF

    def results(self, feedback: bytes) -> list[tuple[int, int, int | None]]:
        """Read a feedback packet: (sent µs, size, arrival µs or None) for each packet it covers
        that we sent, in the order sent; unparsable feedback covers nothing."""
        try:
            base, arrivals = parse(feedback)
        except (ValueError, IndexError, struct.error):
            return []
        # The base's extended number: the one nearest the latest we sent.
        latest = self._next - 1
        ext = latest - ((latest - base) & 0xFFFF)
        out = []
        for k, arrival in enumerate(arrivals):
            sent = self._sent.get(ext + k)
            if sent is None:
                continue
            if arrival is not None:
                del self._sent[ext + k]  # a late duplicate report is not counted twice
            out.append((sent[0], sent[1], arrival))
        return out
