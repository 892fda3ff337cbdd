"""A subscriber's copy of a packet: a header prepared once per sender, patched per copy.

aiortc builds an `RtpPacket` and packs its header extensions for every packet it sends; for a
forwarding unit that is most of the cost of each copy. A `CopyHeader` is the header aiortc
would write for a sender (its SSRC, its extension ids, the extensions it sends), made once by
aiortc's own serializer; the places where the per-copy values go are found by serializing it
twice with different values, and checked against aiortc before the template is used.
"""

from __future__ import annotations

import struct
from typing import Any

from aiortc.rtp import RtpPacket

_SEQ_TS = struct.Struct("!HI")
_U16 = struct.Struct("!H")


def _first_change(a: bytes, b: bytes) -> int | None:
    """Return the first offset at which two headers differ (None: they do not)."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)


def vad_byte(level: tuple[bool, int]) -> int:
    """Return the audio-level extension's byte (RFC 6464): voice flag and level."""
    return (0x80 if level[0] else 0) | (level[1] & 0x7F)


class CopyHeader:
    """The fixed part of a sender's RTP header, and where its per-copy values go."""

    def __init__(
        self, extensions: Any, ssrc: int, mid: str | None, numbered: bool, level: bool
    ) -> None:
        self._extensions = extensions
        self._ssrc = ssrc
        self._mid = mid
        self._numbered = numbered
        self._level = level
        self.template = self._sample(0, 0, (False, 0))
        # Where each value goes: the bytes that change when that value alone changes.
        self.abs_at = _first_change(self.template, self._sample(0xFFFFFF, 0, (False, 0)))
        self.tcc_at = _first_change(self.template, self._sample(0, 0xFFFF, (False, 0)))
        self.vad_at = _first_change(self.template, self._sample(0, 0, (True, 127)))
        # Checked once against aiortc's own header for other values: a template that would
        # differ from it is never used.
        sample = self.make(0x80 | 111, 0x1234, 0x89ABCDEF, 0x0A0B0C, 0x0D0E, (True, 42), b"x")
        reference = self._sample(0x0A0B0C, 0x0D0E, (True, 42), 0x80 | 111, 0x1234, 0x89ABCDEF)
        if sample != reference + b"x":
            raise ValueError("the copy header does not match aiortc's")

    def _sample(
        self,
        abs_send_time: int,
        number: int,
        level: tuple[bool, int],
        marker_pt: int = 0,
        seq: int = 0,
        ts: int = 0,
    ) -> bytes:
        """Return the header aiortc writes for these values."""
        packet = RtpPacket(
            payload_type=marker_pt & 0x7F,
            marker=marker_pt >> 7,
            sequence_number=seq,
            timestamp=ts,
            ssrc=self._ssrc,
        )
        ext = packet.extensions
        ext.mid = self._mid
        ext.abs_send_time = abs_send_time
        if self._numbered:
            ext.transport_sequence_number = number
        if self._level:
            ext.audio_level = level
        return packet.serialize(self._extensions)

    def make(
        self,
        marker_pt: int,
        seq: int,
        timestamp: int,
        abs_send_time: int,
        number: int | None,
        level: tuple[bool, int] | None,
        payload: bytes,
    ) -> bytes:
        """Return the copy's bytes: header patched with its values, then the payload."""
        buf = bytearray(self.template)
        buf[1] = marker_pt
        _SEQ_TS.pack_into(buf, 2, seq, timestamp)
        if self.abs_at is not None:
            buf[self.abs_at : self.abs_at + 3] = abs_send_time.to_bytes(3, "big")
        if self.tcc_at is not None and number is not None:
            _U16.pack_into(buf, self.tcc_at, number)
        if self.vad_at is not None and level is not None:
            buf[self.vad_at] = vad_byte(level)
        buf += payload
        return bytes(buf)
