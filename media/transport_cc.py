"""Transport-wide congestion control on aiortc's transports: the registries that tie a DTLS
transport to its arrivals (publishers) or to its send-side estimate (subscribers), and the
hook that takes subscribers' feedback out of their RTCP before aiortc parses it."""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from aiortc.rtcdtlstransport import RTCDtlsTransport

from .failures import handled_failure
from .gcc import Estimator, Result
from .twcc import SentPackets, TwccFeedback


class Sender(Protocol):
    """A forwarding sender, as its transport's estimate tells it what the path carries."""

    @property
    def kind(self) -> str:
        """ "audio" or "video"."""

    on_remb: Callable[[int], None] | None


# The transport-wide sequence number extension: with it (and the transport-cc feedback) a
# browser publishing to us estimates its uplink itself, from our reports of arrival times.
TWCC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
# How often arrivals are reported (libwebrtc's receivers default to 100 ms as well).
TWCC_INTERVAL = 0.1
# The arrivals of each transport: every receiver on a bundled transport feeds the same one,
# since the publisher numbers all of that transport's packets in one sequence.
ARRIVALS: weakref.WeakKeyDictionary[Any, TwccFeedback] = weakref.WeakKeyDictionary()


class Congestion:
    """A subscriber's transport as its sender sees it: packets numbered transport-wide, the
    subscriber's feedback read, and what its path carries estimated from it."""

    def __init__(self) -> None:
        self.sent = SentPackets()
        self.estimator = Estimator()
        self.senders: weakref.WeakSet[Sender] = weakref.WeakSet()
        self.feedbacks = 0

    def number(self, size: int) -> int:
        """Return the transport-wide number for a packet leaving now."""
        return self.sent.number(int(time.perf_counter() * 1e6), size)

    def on_feedback(self, packet: bytes) -> None:
        """Take one transport-wide feedback packet from the subscriber."""
        results = [Result(*r) for r in self.sent.results(packet)]
        if not results:
            return
        self.feedbacks += 1
        now = int(time.perf_counter() * 1e6)
        target = self.estimator.on_feedback(results, now)
        if not self.estimator.congested(now):
            # An estimate never below what arrives (1.5 times it) is no limit on the publisher:
            # fed back as one, an encoder that undershoots its target would be walked down.
            # The subscriber holds the publisher back only while its path shows congestion.
            return
        for sender in list(self.senders):
            if sender.kind == "video" and sender.on_remb is not None:
                sender.on_remb(target)  # as if the subscriber had sent it as a REMB


# The send side of each subscriber transport that agreed to transport-cc.
CONGESTION: weakref.WeakKeyDictionary[Any, Congestion] = weakref.WeakKeyDictionary()
# Payload bytes plus what the RTP header, its extensions and SRTP add, near enough.
OVERHEAD = 40


_original_handle_rtcp = RTCDtlsTransport._handle_rtcp_data


async def _handle_rtcp_data(transport: RTCDtlsTransport, data: bytes) -> None:
    """Take transport-wide feedback out of a compound RTCP packet, then let aiortc have it all.

    aiortc parses feedback of this kind as if it were a NACK list, losing it; the raw bytes go
    to the transport's `Congestion` first.
    """
    congestion = CONGESTION.get(transport)
    if congestion is not None:
        pos = 0
        while pos + 4 <= len(data):
            length = 4 * (int.from_bytes(data[pos + 2 : pos + 4], "big") + 1)
            if data[pos + 1] == 205 and data[pos] & 0x1F == 15:
                try:
                    congestion.on_feedback(data[pos : pos + length])
                except Exception:
                    handled_failure("reading a subscriber's transport-wide feedback")
            pos += length
    await _original_handle_rtcp(transport, data)


def read_transport_feedback() -> None:
    """Hand subscribers' transport-wide feedback to their senders' estimates, in this process."""
    RTCDtlsTransport._handle_rtcp_data = _handle_rtcp_data  # type: ignore[method-assign,assignment]
