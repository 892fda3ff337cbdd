"""Sort datagrams arriving on a media port by kind, and count the ones too broken to pass on."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

log = logging.getLogger("teleconsult.media.ingress")

# RFC 7983 demultiplexing by first byte: STUN 0-3, DTLS 20-63, TURN ChannelData 64-79,
# RTP/RTCP 128-191.
STUN, DTLS, CHANNEL_DATA, RTP = "stun", "dtls", "channeldata", "rtp"
# Smallest well-formed datagram of each kind: a STUN header, a DTLS record header, an RTP
# header (an RTCP header is 8 bytes but an SRTCP one carries 4 more and a tag).
_MIN_SIZE = {STUN: 20, DTLS: 13, RTP: 12}
LOG_INTERVAL = 60.0


def kind_of(data: bytes) -> str:
    """Return the RFC 7983 kind of a datagram from its first byte ("unknown" if none fits)."""
    if not data:
        return "empty"
    first = data[0]
    if first < 4:
        return STUN
    if 20 <= first < 64:
        return DTLS
    if 64 <= first < 80:
        return CHANNEL_DATA
    if 128 <= first < 192:
        return RTP
    return "unknown"


def broken(data: bytes) -> str | None:
    """Return the kind of a datagram no media transport could use, or None if it may pass.

    The checks are only those that need no key: cryptographic checks (STUN integrity, DTLS,
    SRTP) are the transports' own.
    """
    kind = kind_of(data)
    if kind in ("empty", "unknown", CHANNEL_DATA):
        # ChannelData belongs to a TURN server, never to a peer's ICE port.
        return kind
    if len(data) < _MIN_SIZE[kind]:
        return kind
    if kind == RTP and data[0] >> 6 != 2:
        return kind
    if kind == STUN and (int.from_bytes(data[2:4], "big") + 20 != len(data) or data[3] & 3):
        # The length field must cover the rest exactly, in whole 4-byte words (RFC 8489 5).
        return kind
    return None


class DropCounter:
    """Counts dropped datagrams by kind; logs each kind at most once per interval."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, interval: float = LOG_INTERVAL
    ) -> None:
        self.clock = clock
        self.interval = interval
        self.dropped: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}
        self._logged_count: Counter[str] = Counter()

    def drop(self, kind: str, why: str) -> None:
        """Count one dropped datagram of a kind; `why` says what was wrong with it."""
        self.dropped[kind] += 1
        now = self.clock()
        last = self._logged_at.get(kind)
        if last is not None and now - last < self.interval:
            return
        since = self.dropped[kind] - self._logged_count[kind]
        self._logged_at[kind] = now
        self._logged_count[kind] = self.dropped[kind]
        # No address and no bytes: the count and the reason are what an operator acts on.
        log.warning("dropped %d malformed %s datagram(s) on media ports (%s)", since, kind, why)


# Datagrams dropped on this process's ICE ports before aioice or aiortc saw them, by kind.
INGRESS = DropCounter()
