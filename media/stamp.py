"""A capture time and frame number burned into a picture as blocks a subscriber can read back."""

from __future__ import annotations

import numpy as np

BITS = 64
COLUMNS = 16
BLOCK = 12
ORIGIN = (8, 8)  # x, y of the top-left block
HEIGHT = (BITS // COLUMNS) * BLOCK
WIDTH = COLUMNS * BLOCK


def _value(ms: int, frame: int) -> int:
    return ((ms & ((1 << 48) - 1)) << 16) | (frame & 0xFFFF)


def draw(img: np.ndarray, ms: int, frame: int) -> None:
    """Burn 48 bits of milliseconds and 16 bits of frame number into an image, in place."""
    value = _value(ms, frame)
    x0, y0 = ORIGIN
    for bit in range(BITS):
        row, col = divmod(bit, COLUMNS)
        on = (value >> (BITS - 1 - bit)) & 1
        y, x = y0 + row * BLOCK, x0 + col * BLOCK
        img[y : y + BLOCK, x : x + BLOCK] = 255 if on else 0


def read(gray: np.ndarray) -> tuple[int, int] | None:
    """Read (milliseconds, frame number) from a decoded picture (8-bit luma), if present."""
    x0, y0 = ORIGIN
    if gray.shape[0] < y0 + HEIGHT or gray.shape[1] < x0 + WIDTH:
        return None
    value = 0
    for bit in range(BITS):
        row, col = divmod(bit, COLUMNS)
        y, x = y0 + row * BLOCK, x0 + col * BLOCK
        # The block's centre survives lossy coding; its edges bleed.
        centre = gray[y + 3 : y + BLOCK - 3, x + 3 : x + BLOCK - 3]
        value = (value << 1) | int(centre.mean() > 128)
    return value >> 16, value & 0xFFFF
