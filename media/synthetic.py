"""A built-in ultrasound-like video source: a speckled sector with moving structures and stamps."""

from __future__ import annotations

import asyncio
import fractions
import math
import time

import av
import cv2
import numpy as np
from aiortc.mediastreams import MediaStreamTrack

from . import stamp

VIDEO_CLOCK = 90000


class UltrasoundTrack(MediaStreamTrack):
    """Frames that look like a B-mode scan, each stamped with its capture time in blocks."""

    kind = "video"

    def __init__(self, width: int = 1280, height: int = 720, fps: float = 30.0) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self.count = 0
        self.start: float | None = None
        rng = np.random.default_rng(7)
        # Speckle is Rayleigh-distributed; a few pre-made fields, shifted each frame, keep the
        # source cheap enough to run beside the relay it measures.
        self.speckle = [self._speckle(rng) for _ in range(4)]
        self.mask = self._sector_mask()
        self.base = self._depth_scale()

    def _speckle(self, rng: np.random.Generator) -> np.ndarray:
        # Real speckle grains span a few pixels: draw at half size, then enlarge.
        small = rng.rayleigh(38.0, (self.height // 2 + 1, self.width // 2 + 1))
        big = cv2.resize(small, (self.width, self.height), interpolation=cv2.INTER_LINEAR)
        return np.clip(big, 0, 255).astype(np.uint8)

    def _sector_mask(self) -> np.ndarray:
        h, w = self.height, self.width
        mask = np.zeros((h, w), np.uint8)
        apex = (w // 2, int(-0.05 * h))
        radius = int(0.98 * h)
        cv2.ellipse(mask, apex, (radius, radius), 90, -35, 35, 255, -1)
        cv2.circle(mask, apex, int(0.12 * h), 0, -1)
        return mask

    def _depth_scale(self) -> np.ndarray:
        h, w = self.height, self.width
        base = np.zeros((h, w), np.uint8)
        x = int(w * 0.86)
        for cm in range(0, 17):
            y = int(0.06 * h + cm * (0.9 * h / 16))
            cv2.line(base, (x, y), (x + (18 if cm % 5 == 0 else 9), y), 200, 2)
            if cm % 5 == 0:
                cv2.putText(base, f"{cm}", (x + 24, y + 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 200, 1)
        return base

    def picture(self, n: int, now_ms: int) -> np.ndarray:
        """Return frame n as an 8-bit grayscale image stamped with now_ms."""
        h, w = self.height, self.width
        field = np.roll(self.speckle[n % 4], (n * 3) % h, axis=0)
        img = cv2.bitwise_and(field, self.mask)
        t = n / self.fps
        # A pulsing vessel and a drifting bright interface: structures an expert points at.
        cx, cy = int(w * (0.5 + 0.08 * math.sin(t * 0.7))), int(h * 0.55)
        r = int(h * (0.07 + 0.015 * math.sin(t * 2 * math.pi * 1.2)))
        cv2.circle(img, (cx, cy), r, 12, -1)
        cv2.circle(img, (cx, cy), r, 170, 3)
        y = int(h * (0.35 + 0.03 * math.sin(t * 0.5)))
        cv2.line(img, (int(w * 0.32), y), (int(w * 0.68), y + 20), 230, 6)
        img = cv2.bitwise_or(img, self.base)
        clock = time.strftime("%H:%M:%S", time.localtime(now_ms / 1000))
        cv2.putText(
            img,
            f"{clock}.{now_ms % 1000:03d}  #{n}",
            (int(w * 0.55), int(h * 0.05)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.6,
            220,
            1,
        )
        stamp.draw(img, now_ms, n)
        return img

    async def recv(self) -> av.VideoFrame:
        """Return the next frame, paced to the frame rate."""
        if self.start is None:
            self.start = time.monotonic()
        else:
            due = self.start + self.count / self.fps
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        n = self.count
        self.count += 1
        img = await asyncio.get_running_loop().run_in_executor(
            None, self.picture, n, int(time.time() * 1000)
        )
        # Stamp at capture: the picture is made now, and its time goes with it.
        frame = av.VideoFrame.from_ndarray(img, format="gray")
        frame = frame.reformat(format="yuv420p")
        frame.pts = int(n * VIDEO_CLOCK / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return frame
