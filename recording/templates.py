"""Stream templates from tiny in-memory files, so PyAV muxes without opening any encoder.

PyAV opens the codec context of a stream made by `add_stream` (an encoder) before it writes a
header; a stream made from a demuxed template only copies codec parameters. These build the
smallest file each demuxer accepts from a frame we already have.
"""

from __future__ import annotations

import io
import struct

import av

OPUS_TAGS = b"OpusTags" + struct.pack("<I", 11) + b"teleconsult" + struct.pack("<I", 0)


def _ivf(frame: bytes, width: int, height: int) -> bytes:
    header = b"DKIF" + struct.pack("<HH4sHHIIII", 0, 32, b"VP80", width, height, 30, 1, 1, 0)
    return header + struct.pack("<IQ", len(frame), 0) + frame


def _ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def _ogg_page(packet: bytes, sequence: int, granule: int, flags: int) -> bytes:
    lacing = [255] * (len(packet) // 255) + [len(packet) % 255]
    header = (
        b"OggS"
        + bytes([0, flags])
        + struct.pack("<qII", granule, 1, sequence)
        + b"\0\0\0\0"
        + bytes([len(lacing)])
        + bytes(lacing)
    )
    page = header + packet
    crc = _ogg_crc(page)
    return page[:22] + struct.pack("<I", crc) + page[26:]


def _ogg_opus(head: bytes, packet: bytes) -> bytes:
    return _ogg_page(head, 0, 0, 2) + _ogg_page(OPUS_TAGS, 1, 0, 0) + _ogg_page(packet, 2, 960, 4)


def template(
    codec: str, frame: bytes, width: int, height: int, opus_head: bytes
) -> av.stream.Stream:
    """Return a demuxed stream carrying a codec's parameters, for `add_stream_from_template`."""
    if codec == "VP8":
        data, fmt = _ivf(frame, width, height), "ivf"
    elif codec == "H264":
        data, fmt = frame, "h264"
    elif codec == "OPUS":
        data, fmt = _ogg_opus(opus_head, frame), "ogg"
    else:
        raise ValueError(f"no template for {codec}")
    container = av.open(io.BytesIO(data), format=fmt)
    return container.streams[0]
