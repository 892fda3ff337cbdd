"""Tell from an RTP payload whether it starts a keyframe, per codec, without decoding."""

from __future__ import annotations

from collections.abc import Callable

# H.264 NAL unit types (RFC 6184): sequence parameter set, single-time aggregation packet.
_H264_SPS = 7
_H264_STAP_A = 24


def vp8_frame_offset(payload: bytes) -> int | None:
    """Return where the VP8 frame data starts in the first packet of a frame, else None."""
    if len(payload) < 1:
        return None
    first = payload[0]
    start = first & 0x10
    partition = first & 0x07
    if not start or partition != 0:
        return None
    i = 1
    if first & 0x80:  # X: extension byte follows
        if len(payload) < 2:
            return None
        ext = payload[1]
        i = 2
        if ext & 0x80:  # I: picture id, one or two bytes
            if len(payload) <= i:
                return None
            i += 2 if payload[i] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            i += 1
        if ext & 0x30:  # T or K: TID/KEYIDX byte
            i += 1
    return i if len(payload) > i else None


def vp8_keyframe_start(payload: bytes) -> bool:
    """Tell whether a VP8 RTP payload (RFC 7741) is the first packet of a keyframe."""
    i = vp8_frame_offset(payload)
    # The inverse keyframe flag P is bit 0 of the VP8 frame header.
    return i is not None and payload[i] & 0x01 == 0


def h264_keyframe_start(payload: bytes) -> bool:
    """Tell whether an H.264 RTP payload (RFC 6184) carries the SPS that opens an IDR picture."""
    # Starting at the IDR slice itself would lose the SPS and PPS sent just before it, and a
    # decoder cannot start without them; WebRTC encoders repeat them before every IDR.
    if len(payload) < 1:
        return False
    nal = payload[0] & 0x1F
    if nal == _H264_SPS:
        return True
    if nal == _H264_STAP_A:
        i = 1
        while i + 2 < len(payload):
            size = int.from_bytes(payload[i : i + 2], "big")
            if payload[i + 2] & 0x1F == _H264_SPS:
                return True
            i += 2 + size
    return False


# The keyframe test of each video codec; audio needs none (every packet is a starting point).
KEYFRAME_START: dict[str, Callable[[bytes], bool]] = {
    "VP8": vp8_keyframe_start,
    "H264": h264_keyframe_start,
}
