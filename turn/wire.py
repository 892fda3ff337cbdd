"""TURN's framing on the wire: channel numbers, and attributes aioice's codec does not read."""

from __future__ import annotations

import struct
from collections.abc import Callable

from aioice import stun

Address = tuple[str, int]
Send = Callable[[bytes], None]

# Channel numbers: RFC 8656 narrowed them to 0x4000-0x4FFF, but clients written to RFC 5766
# (coturn's own among them) pick up to 0x7FFF; nothing else starts with those bytes here.
FIRST_CHANNEL, LAST_CHANNEL = 0x4000, 0x7FFF
IPV4 = 0x01
# Attributes every TURN server understands; any other comprehension-required one gets a 420.
KNOWN = {
    0x0006,
    0x0008,
    0x0009,
    0x000C,
    0x000D,
    0x0012,
    0x0013,
    0x0014,
    0x0015,
    0x0016,
    0x0017,  # REQUESTED-ADDRESS-FAMILY (RFC 8656): IPv4 is served, IPv6 gets a 440
    0x0018,
    0x0019,
    0x001A,
    0x0020,
    0x0022,
    0x8028,
    0x8022,
}


def attribute(raw: bytes, wanted: int) -> bytes | None:
    """Return the value of the first attribute of a type (one aioice does not decode)."""
    pos = 20
    while pos + 4 <= len(raw):
        kind, length = struct.unpack("!HH", raw[pos : pos + 4])
        if kind == wanted:
            return raw[pos + 4 : pos + 4 + length]
        pos += 4 + length + stun.padding_length(length)
    return None


def unknown_required(raw: bytes) -> list[int]:
    """Comprehension-required attribute types (below 0x8000) this server does not know."""
    unknown, pos = [], 20
    while pos + 4 <= len(raw):
        kind, length = struct.unpack("!HH", raw[pos : pos + 4])
        if kind < 0x8000 and kind not in KNOWN:
            unknown.append(kind)
        pos += 4 + length + stun.padding_length(length)
    return unknown


def is_channel_data(data: bytes) -> bool:
    """Tell ChannelData (its first byte a channel number's) from a STUN message."""
    return len(data) >= 4 and FIRST_CHANNEL >> 8 <= data[0] <= LAST_CHANNEL >> 8
