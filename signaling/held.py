"""The check of a frame held up for everyone: a whole JPEG, and its size in pixels."""

from __future__ import annotations

import base64
import binascii

import cv2
import numpy as np

from .errors import Code, ProtocolError

MAX_SIDE = 8192


def picture_size(image: str) -> tuple[int, int]:
    """Return (width, height) of a base64 JPEG, or raise ProtocolError(invalid_image)."""
    try:
        data = base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(Code.INVALID_IMAGE, "the held frame is not base64") from None
    # Every client shows this picture: it is decoded here whole, not taken on its first bytes.
    if not data.startswith(b"\xff\xd8\xff"):
        raise ProtocolError(Code.INVALID_IMAGE, "the held frame must be a JPEG")
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if pixels is None or pixels.size == 0:
        raise ProtocolError(Code.INVALID_IMAGE, "the held frame is not a whole JPEG")
    height, width = pixels.shape[:2]
    if max(width, height) > MAX_SIDE:
        raise ProtocolError(Code.INVALID_IMAGE, f"a held frame is at most {MAX_SIDE} pixels a side")
    return int(width), int(height)
