"""Redundant audio (RFC 2198): each packet carries the one before it as well, so a voice packet
lost on a radio link is rebuilt from the next. From a publisher, the relay unwraps it (the
recorder and subscribers that did not take RED get plain Opus, with what was lost on the way to
the relay put back); to a subscriber that takes it, the relay wraps each packet with the one
before. Also what SDP says of it, on text, since aiortc 1.16 does not know the codec. No I/O."""

from __future__ import annotations

import re

from aiortc.rtp import RtpPacket

from .sdp_text import mid, sections
from .seqnum import SequenceTracker, Verdict

# Chromium sends one redundant block; more than a few is never useful, and a peer may send anything.
MAX_BLOCKS = 4
_RTPMAP = re.compile(r"^a=rtpmap:(\d+) red/48000/2\s*$", re.I)
_OPUS = re.compile(r"^a=rtpmap:(\d+) opus/48000/2\s*$", re.I)
# A redundant block says how far back it is in 14 bits of timestamp and how long in 10 bits.
MAX_OFFSET = (1 << 14) - 1
MAX_LENGTH = (1 << 10) - 1


def split(payload: bytes) -> tuple[list[tuple[int, int, bytes]], tuple[int, bytes]]:
    """Return a RED payload's redundant blocks, oldest first, as (payload type, timestamp
    offset, data), and its primary block as (payload type, data); ValueError if malformed."""
    headers: list[tuple[int, int, int]] = []
    i = 0
    while True:
        if i >= len(payload):
            raise ValueError("a RED header runs past the payload")
        first = payload[i]
        if not first & 0x80:  # the last header: the primary block's, one byte
            primary = first & 0x7F
            i += 1
            break
        if i + 4 > len(payload) or len(headers) == MAX_BLOCKS:
            raise ValueError("a RED header is truncated, or there are too many")
        offset = (payload[i + 1] << 6) | (payload[i + 2] >> 2)
        length = ((payload[i + 2] & 0x03) << 8) | payload[i + 3]
        headers.append((first & 0x7F, offset, length))
        i += 4
    blocks = []
    for pt, offset, length in headers:
        if i + length > len(payload):
            raise ValueError("a RED block runs past the payload")
        blocks.append((pt, offset, payload[i : i + length]))
        i += length
    return blocks, (primary, payload[i:])


def join(blocks: list[tuple[int, int, bytes]], primary: tuple[int, bytes]) -> bytes:
    """Build a RED payload from redundant blocks (oldest first) and a primary block."""
    out = bytearray()
    for pt, offset, data in blocks:
        out += bytes([0x80 | pt, offset >> 6, ((offset & 0x3F) << 2) | (len(data) >> 8)])
        out.append(len(data) & 0xFF)
    out.append(primary[0])
    for _, _, data in blocks:
        out += data
    return bytes(out + primary[1])


class Unwrapper:
    """Turns one publisher's RED packets back into its primary codec's, rebuilding lost ones."""

    def __init__(self, payload_type: int, primary: int) -> None:
        self.payload_type = payload_type
        self.primary = primary
        self.recovered = 0
        self.malformed = 0
        self._ssrc: int | None = None
        self._seen = SequenceTracker()

    def unwrap(self, packet: RtpPacket) -> list[RtpPacket]:
        """Return the packets a RED packet holds that were not delivered yet, oldest first."""
        try:
            blocks, (pt, data) = split(packet.payload)
        except ValueError:
            self.malformed += 1
            return []
        out = []
        # Each redundant block is one of the packets just before this one, in order.
        for back, (block_pt, offset, block) in zip(range(len(blocks), 0, -1), blocks, strict=True):
            seq = (packet.sequence_number - back) & 0xFFFF
            if block_pt == self.primary and block and self._fresh(packet.ssrc, seq):
                self.recovered += 1
                out.append(self._packet(packet, seq, packet.timestamp - offset, block, False))
        if pt == self.primary and data and self._fresh(packet.ssrc, packet.sequence_number):
            out.append(
                self._packet(
                    packet, packet.sequence_number, packet.timestamp, data, bool(packet.marker)
                )
            )
        return out

    def _fresh(self, ssrc: int, seq: int) -> bool:
        """Tell whether a sequence number was not delivered yet, and note that it now is."""
        if ssrc != self._ssrc:
            self._ssrc, self._seen = ssrc, SequenceTracker()
        return self._seen.push(seq)[0] in (Verdict.NEW, Verdict.RESTART)

    def _packet(
        self, red: RtpPacket, seq: int, timestamp: int, payload: bytes, marker: bool
    ) -> RtpPacket:
        packet = RtpPacket(
            payload_type=self.primary,
            marker=int(marker),
            sequence_number=seq,
            timestamp=timestamp & 0xFFFFFFFF,
            ssrc=red.ssrc,
            payload=payload,
        )
        packet.extensions = red.extensions
        return packet


class Wrapper:
    """Wraps one subscriber's Opus packets in RED, each with the one sent before it."""

    def __init__(self, payload_type: int, primary: int) -> None:
        self.payload_type = payload_type
        self.primary = primary
        self.wrapped = 0
        self._last: tuple[int, int, bytes] | None = None  # (seq, timestamp, payload) sent

    def wrap(self, seq: int, timestamp: int, payload: bytes) -> bytes:
        """Return the RED payload for the packet numbered `seq` in the subscriber's numbering.

        A block carries no sequence number: the receiver takes it for the packet just before,
        so only that one goes in, and only when its distance and length fit the header.
        """
        blocks = []
        last = self._last
        if last is not None and (last[0] + 1) & 0xFFFF == seq:
            offset = (timestamp - last[1]) & 0xFFFFFFFF
            if 0 < offset <= MAX_OFFSET and 0 < len(last[2]) <= MAX_LENGTH:
                blocks.append((self.primary, offset, last[2]))
                self.wrapped += 1
        self._last = (seq, timestamp, payload)
        return join(blocks, (self.primary, payload))


def offer_red(offer: str) -> str:
    """Add RED over Opus to the audio sections of an offer to a subscriber, after Opus: a
    browser that takes it gets each voice packet again inside the next; a client that does not
    know RED answers with Opus alone."""
    parts = sections(offer)
    used = {int(pt) for part in parts[1:] for pt in part[0].split(" ")[3:] if pt.isdigit()}
    free = [pt for pt in (63, *range(96, 128), *range(35, 63)) if pt not in used]
    out: list[str] = []
    for i, section in enumerate(parts):
        opus = next((m.group(1) for x in section if (m := _OPUS.match(x))), None)
        if i and section[0].startswith("m=audio") and opus is not None and free:
            red = free.pop(0)
            section = [
                f"{section[0]} {red}",
                *section[1:],
                f"a=rtpmap:{red} red/48000/2",
                f"a=fmtp:{red} {opus}/{opus}",
            ]
        out += section
    return "\r\n".join(out) + "\r\n"


def offered_red(offer: str) -> dict[str, tuple[int, int]]:
    """Return, for each audio section of an offer (or an answer) with RED over one codec, its
    mid and (RED's payload type, the redundant codec's)."""
    found: dict[str, tuple[int, int]] = {}
    for section in sections(offer)[1:]:
        where = mid(section)
        if where is None or not section[0].startswith("m=audio"):
            continue
        for line in section:
            m = _RTPMAP.match(line)
            if m is None:
                continue
            red = m.group(1)
            fmtp = next((x for x in section if x.startswith(f"a=fmtp:{red} ")), "")
            inner = set(fmtp.split(" ", 1)[1].strip().split("/")) if fmtp else set()
            primary = inner.pop() if len(inner) == 1 else ""
            # Blocks all of one codec (Chromium: "111/111"): the one the relay unwraps to.
            if primary.isdigit() and int(red) < 128 and int(primary) < 128:
                found[where] = (int(red), int(primary))
    return found


def answer_with_red(answer: str, red: dict[str, tuple[int, int]]) -> str:
    """Put RED first in the audio sections of an answer that agreed on its codec: a browser
    sends RED only when the answer prefers it."""
    out: list[str] = []
    for i, section in enumerate(sections(answer)):
        agreed = red.get(mid(section) or "") if i and section[0].startswith("m=audio") else None
        fields = section[0].split(" ")
        if agreed is not None and str(agreed[1]) in fields[3:] and str(agreed[0]) not in fields[3:]:
            red_pt, primary = agreed
            section = [
                " ".join([*fields[:3], str(red_pt), *fields[3:]]),
                *section[1:],
                f"a=rtpmap:{red_pt} red/48000/2",
                f"a=fmtp:{red_pt} {primary}/{primary}",
            ]
        out += section
    return "\r\n".join(out) + "\r\n"
