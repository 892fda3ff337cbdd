"""A subscriber's copy made by patching a prepared header is byte for byte what aiortc writes."""

from __future__ import annotations

from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from hypothesis import given
from hypothesis import strategies as st

from teleconsult.media.rtpcopy import CopyHeader

URIS = {
    "mid": "urn:ietf:params:rtp-hdrext:sdes:mid",
    "abs": "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "tcc": "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "level": "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
}


def extensions_map(ids: dict[str, int]) -> HeaderExtensionsMap:
    m = HeaderExtensionsMap()
    m.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=i, uri=URIS[name]) for name, i in ids.items()
            ]
        )
    )
    return m


# Any extension ids (one-byte and two-byte headers both), any mid, with or without the
# transport-wide number and the audio level, and any values in them.
COPIES = {
    "ids": st.permutations([1, 2, 3, 4, 10, 14, 15, 200]).map(
        lambda p: dict(zip(URIS, p[:4], strict=True))
    ),
    "mid": st.sampled_from(["0", "1", "17", "a" * 16, "b" * 20]),
    "numbered": st.booleans(),
    "level": st.none() | st.tuples(st.booleans(), st.integers(0, 127)),
    "marker": st.integers(0, 1),
    "pt": st.integers(0, 127),
    "seq": st.integers(0, 0xFFFF),
    "ts": st.integers(0, 0xFFFFFFFF),
    "abs_send_time": st.integers(0, 0xFFFFFF),
    "number": st.integers(0, 0xFFFF),
}


@given(**COPIES, payload=st.binary(max_size=64))
def test_a_copy_is_what_aiortc_would_serialize(
    ids: dict[str, int],
    mid: str,
    numbered: bool,
    level: tuple[bool, int] | None,
    marker: int,
    pt: int,
    seq: int,
    ts: int,
    abs_send_time: int,
    number: int,
    payload: bytes,
) -> None:
    # Any extension ids (one-byte and two-byte headers both), any mid, with or without the
    # transport-wide number and the audio level.
    m = extensions_map(ids)
    header = CopyHeader(m, 0x11223344, mid, numbered, level is not None)
    copy = header.make(
        (marker << 7) | pt, seq, ts, abs_send_time, number if numbered else None, level, payload
    )
    packet = RtpPacket(
        payload_type=pt, marker=marker, sequence_number=seq, timestamp=ts, ssrc=0x11223344
    )
    packet.payload = payload
    packet.extensions.mid = mid
    packet.extensions.abs_send_time = abs_send_time
    if numbered:
        packet.extensions.transport_sequence_number = number
    packet.extensions.audio_level = level
    assert copy == packet.serialize(m)
    # And the receiver reads back the values.
    back = RtpPacket.parse(copy, m)
    assert (back.sequence_number, back.timestamp, back.marker, back.payload_type) == (
        seq, ts, marker, pt
    )  # fmt: skip
    assert back.extensions.mid == mid and back.extensions.abs_send_time == abs_send_time
