"""What a local consumer of a publisher's packets, the recorder, may use of the SFU."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

# Called with each packet forwarded, its codec, and whether it starts a keyframe.
Tap = Callable[[RtpPacket, RTCRtpCodecParameters, bool], None]


class Tappable(Protocol):
    """A published track as a local consumer sees it."""

    @property
    def codec(self) -> RTCRtpCodecParameters:
        """The codec the publisher sends."""

    @property
    def last_sr(self) -> tuple[float, int] | None:
        """The publisher's latest sender report: its wall clock and RTP time."""

    def tap(self, tap: Tap) -> Callable[[], None]:
        """Call `tap` with every packet forwarded (not while muted); returns what stops it."""

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe (throttled)."""


class Tracks(Protocol):
    """Where published tracks are found: this node's SFU."""

    def track(self, stream_id: str, mid: str) -> Tappable | None:
        """Return a published track, if any."""
