"""Reassemble encoded frames from RTP packets, as the publisher's encoder made them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from teleconsult.media.keyframe import h264_keyframe_start, vp8_frame_offset

SEQ_MOD = 1 << 16


@dataclass
class Frame:
    """One encoded frame: its bytes, RTP timestamp, and whether decoding may start here."""

    data: bytes
    timestamp: int
    keyframe: bool


@dataclass
class _Pending:
    timestamp: int
    packets: dict[int, bytes] = field(default_factory=dict)
    first: int | None = None  # sequence number of the frame's first packet
    last: int | None = None  # sequence number of the packet with the marker bit
    keyframe: bool = False


class FrameAssembler:
    """Collects a video track's packets by timestamp; hands on frames whole and in order.

    A frame is complete when its first packet, its marker packet and every packet between have
    arrived (late ones included, as NACK repairs them). A frame still incomplete when packets
    `window` RTP ticks newer arrive is given up, and so is everything until the next keyframe:
    a recording must not carry a picture its decoder would break on.
    """

    def __init__(
        self,
        codec: str,
        clock_rate: int,
        depayload: Callable[[bytes], bytes],
        window: float = 0.5,
    ) -> None:
        self.codec = codec.upper()
        self.depayload = depayload
        self.window = int(window * clock_rate)
        self.pending: dict[int, _Pending] = {}
        self.need_keyframe = True
        self.dropped = 0
        self.last_emitted: int | None = None
        self.prev_last: int | None = None  # last sequence number of the frame handed on
        # Padding-only packets (bandwidth probes) take sequence numbers but carry no frame.
        self.padding: set[int] = set()
        # The first packet's timestamp: frames are ordered from a quarter of the clock before
        # it until one is written, so a start just before the 32-bit wrap orders right.
        self.anchor: int | None = None

    def push(self, seq: int, timestamp: int, marker: bool, payload: bytes) -> list[Frame]:
        """Add one packet; return the frames it completed, oldest first."""
        if not payload:
            if len(self.padding) >= 256:
                self.padding.clear()
            self.padding.add(seq)
            return self._emit()
        if self.last_emitted is not None and not _ts_newer(timestamp, self.last_emitted):
            return []  # a retransmission of a frame already written (or given up)
        if self.anchor is None:
            self.anchor = timestamp
        p = self.pending.setdefault(timestamp, _Pending(timestamp))
        p.packets[seq] = payload
        if self.codec == "VP8":
            # VP8 marks a frame's first packet; its frame header says whether it is a keyframe.
            start = vp8_frame_offset(payload)
            if start is not None:
                p.first = seq
                p.keyframe = payload[start] & 0x01 == 0
        elif h264_keyframe_start(payload):
            # H.264 marks no first packet (see _complete); any packet may carry the SPS.
            p.keyframe = True
        if marker:
            p.last = seq
        return self._emit()

    def _complete(self, p: _Pending) -> bool:
        if p.last is None:
            return False
        if self.codec == "H264":
            # H.264 packets do not mark the start of an access unit: it is the oldest packet
            # held for this timestamp, and it must follow the previous frame's last packet.
            last = p.last
            p.first = max(p.packets, key=lambda s: (last - s) % SEQ_MOD)
        if p.first is None or not self._follows(p.first):
            # A frame after a gap waits: the gap may be a whole frame still on its way (a NACK
            # repair), and a frame written before the one it refers to breaks the decoder.
            return False
        n = (p.last - p.first) % SEQ_MOD + 1
        return n <= len(p.packets) and all((p.first + i) % SEQ_MOD in p.packets for i in range(n))

    def _follows(self, first: int) -> bool:
        """Tell whether a frame starting at `first` comes right after the frame handed on."""
        if self.prev_last is None:
            return True
        seq = (self.prev_last + 1) % SEQ_MOD
        for _ in range(len(self.padding) + 1):
            if seq == first:
                return True
            if seq not in self.padding:
                return False
            seq = (seq + 1) % SEQ_MOD
        return False

    def _emit(self) -> list[Frame]:
        out: list[Frame] = []
        while self.pending:
            order = sorted(self.pending, key=self._age_key)
            oldest = order[0]
            p = self.pending[oldest]
            late = (order[-1] - oldest) % (1 << 32) > self.window
            if self._complete(p):
                if self.need_keyframe and not p.keyframe and not late:
                    # Waiting for a keyframe: one older than this frame may still come
                    # (reordered at the start); dropping this one now would refuse it.
                    break
                del self.pending[oldest]
                self.last_emitted = oldest
                self.prev_last = p.last
                if self.need_keyframe and not p.keyframe:
                    self.dropped += 1
                    continue
                assert p.first is not None and p.last is not None
                n = (p.last - p.first) % SEQ_MOD + 1
                data = b"".join(
                    self.depayload(p.packets[(p.first + i) % SEQ_MOD]) for i in range(n)
                )
                self.need_keyframe = False
                out.append(Frame(data, oldest, p.keyframe))
            elif late:
                # Lost for good: give the frame up and wait for the next keyframe.
                del self.pending[oldest]
                self.last_emitted = oldest
                self.prev_last = None
                self.dropped += 1
                self.need_keyframe = True
            else:
                break
        return out

    def _age_key(self, ts: int) -> int:
        # Order timestamps from the last frame written, across the 32-bit wrap. Before any,
        # from well before the first packet: the smallest number held is not the oldest frame
        # when the clock wraps between the first frames (a frame at 2**32 - 3000, then one at 0).
        if self.last_emitted is not None:
            base = self.last_emitted
        else:
            assert self.anchor is not None
            base = (self.anchor - (1 << 30)) % (1 << 32)
        return (ts - base) % (1 << 32)


def _ts_newer(a: int, b: int) -> bool:
    return a != b and (a - b) % (1 << 32) < (1 << 31)
