"""aiortc's codec tables as the relay uses them: the codec a section agreed on, a subscriber's
codec preferences, the codecs and header extensions the relay adds, and counting encoders and
decoders. Built against aiortc 1.16.0, like aiortc_adapter."""

from __future__ import annotations

from typing import Any

from aiortc import RTCRtpCodecCapability, RTCRtpTransceiver
from aiortc.codecs import CODECS, HEADER_EXTENSIONS, is_rtx
from aiortc.rtcpeerconnection import is_codec_compatible
from aiortc.rtcrtpparameters import (
    RTCRtcpFeedback,
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
)

from .simulcast import REPAIRED_RID_URI, RID_URI
from .transport_cc import TWCC_URI


def negotiated_codec(transceiver: RTCRtpTransceiver) -> RTCRtpCodecParameters | None:
    """Return the media codec a transceiver negotiated (the first non-RTX one)."""
    for codec in transceiver._codecs:
        if not is_rtx(codec):
            return codec
    return None


def same_codec(a: RTCRtpCodecParameters, b: RTCRtpCodecParameters) -> bool:
    """Tell whether two codec entries name the same codec and, for H.264, the same profile."""
    # aiortc's own negotiation rule: the H.264 profile (not the level) and packetization mode.
    return bool(is_codec_compatible(a, b))


def codec_preferences(kind: str, codec: RTCRtpCodecParameters) -> list[RTCRtpCodecCapability]:
    """Return the preferences that make a subscriber's offer carry exactly this codec (and RTX)."""
    for local in CODECS[kind]:
        if not is_rtx(local) and same_codec(local, codec):
            prefs = [
                RTCRtpCodecCapability(
                    mimeType=local.mimeType,
                    clockRate=local.clockRate,
                    channels=local.channels,
                    parameters=local.parameters,
                )
            ]
            if kind == "video":
                prefs.append(RTCRtpCodecCapability(mimeType="video/rtx", clockRate=local.clockRate))
            return prefs
    raise ValueError(f"no local codec matches {codec.mimeType}")


_EXTRA_CODECS_ADDED = False


def add_relay_codecs() -> None:
    """Let the relay accept H.264 Main and High profiles: it forwards, so it need not decode."""
    global _EXTRA_CODECS_ADDED
    if _EXTRA_CODECS_ADDED:
        return
    _EXTRA_CODECS_ADDED = True
    used = {c.payloadType for c in CODECS["video"] if c.payloadType is not None}
    pt = max(used) + 1
    for profile in ("4d001f", "640c1f"):
        CODECS["video"] += [
            RTCRtpCodecParameters(
                mimeType="video/H264",
                clockRate=90000,
                payloadType=pt,
                rtcpFeedback=[
                    RTCRtcpFeedback(type="nack"),
                    RTCRtcpFeedback(type="nack", parameter="pli"),
                    RTCRtcpFeedback(type="goog-remb"),
                ],
                parameters={
                    "level-asymmetry-allowed": "1",
                    "packetization-mode": "1",
                    "profile-level-id": profile,
                },
            ),
            RTCRtpCodecParameters(
                mimeType="video/rtx", clockRate=90000, payloadType=pt + 1, parameters={"apt": pt}
            ),
        ]
        pt += 2
    # Opus with its in-band FEC: a lost voice packet is rebuilt from the next one, so a radio
    # link's losses cost no syllables (the answer's fmtp makes a browser's encoder add it).
    for codec in CODECS["audio"]:
        if codec.mimeType.lower() == "audio/opus":
            codec.parameters.update({"minptime": 10, "useinbandfec": 1})
    # A publisher may number its packets transport-wide and hear when each arrived.
    transport_cc = RTCRtcpFeedback(type="transport-cc")
    for codec in CODECS["video"]:
        if not is_rtx(codec) and transport_cc not in codec.rtcpFeedback:
            codec.rtcpFeedback.append(transport_cc)
    # And simulcast layers are named by rid, their retransmissions by the rid they repair.
    for uri in (TWCC_URI, RID_URI, REPAIRED_RID_URI):
        if all(x.uri != uri for x in HEADER_EXTENSIONS["video"]):
            free = 1 + max(x.id for x in HEADER_EXTENSIONS["video"])
            HEADER_EXTENSIONS["video"].append(RTCRtpHeaderExtensionParameters(id=free, uri=uri))


CODECS_CREATED = {"decoder": 0, "encoder": 0}


def count_codecs() -> None:
    """Count every decoder and encoder aiortc creates in this process (a relay creates none)."""
    import aiortc.rtcrtpreceiver as receiver_module
    import aiortc.rtcrtpsender as sender_module

    make_decoder = getattr(receiver_module, "get_decoder")  # noqa: B009 - not exported
    make_encoder = getattr(sender_module, "get_encoder")  # noqa: B009
    if getattr(make_decoder, "counted", False):
        return

    def get_decoder(codec: RTCRtpCodecParameters) -> Any:
        CODECS_CREATED["decoder"] += 1
        return make_decoder(codec)

    def get_encoder(codec: RTCRtpCodecParameters) -> Any:
        CODECS_CREATED["encoder"] += 1
        return make_encoder(codec)

    get_decoder.counted = True  # type: ignore[attr-defined]
    # The receiver and sender modules look these names up at call time.
    setattr(receiver_module, "get_decoder", get_decoder)  # noqa: B010
    setattr(sender_module, "get_encoder", get_encoder)  # noqa: B010
