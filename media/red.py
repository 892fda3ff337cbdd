"""Redundant audio (RFC 2198) from a publisher: each packet carries the one before it as well, so
a voice packet lost on a radio link is rebuilt from the next. The relay unwraps it: subscribers
and the recorder get plain Opus, with what was lost on the way to the relay put back. Also what
SDP says of it, on text, since aiortc 1.16 does not know the codec. No I/O."""

from __future__ import annotations

import re

from aiortc.rtp import RtpPacket

from .sdp_text import mid, sections
from .seqnum import SequenceTracker, Verdict

# Chromium sends one redundant block; more than a few is never useful, and a peer may send anything.
MAX_BLOCKS = 4
_RTPMAP = re.compile(r"^a=rtpmap:(\d+) red/48000/2\s*$", re.I)


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


def offered_red(offer: str) -> dict[str, tuple[int, int]]:
    """Return, for each audio section of an offer with RED over one codec, its mid and (RED's
    payload type, the redundant codec's)."""
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
