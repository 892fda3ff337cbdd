"""The people who send in a case conference, in one process: the operator (probe, room camera,
microphone) and the experts (a microphone each, some a camera), talking to a script.

Usage: python -m bench.conference.speakers URL ROOM T0 --tokens OP,E0,E1,... --cameras 3
       --duration S [--probe 1920x1080] [--probe-bitrate 4000000]

The script starts at wall time T0. Prints {"streams": {identity: stream id}} once published,
and at the end {"sent": {identity: audio frames sent}}. Every voice talks by `level_at`, which
bench.conference.audience checks the listeners against; the quiet ones send the room's noise.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import math
import time

import av
import numpy as np
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack

from teleconsult.client.media import MediaClient
from teleconsult.client.replay import ReplayTrack
from teleconsult.client.signaling import SignalingClient
from teleconsult.media.aioice_adapter import use_host_addresses

from ..media.clip import vp8_clip

# Seconds of one step of the script: a new main speaker each step.
STEP = 8.0
QUIET = -66.0  # a quiet room's noise, dBov: sent (no DTX) but never speech
CHAIR = -18.0  # the chair (expert 0) talks throughout
MAIN = -20.0  # this step's main speaker, the whole step
SECOND = -38.0  # a second, softer, from 2 s to 6 s of the step
THIRD = -44.0  # a third, softer still, from 3 s to 6 s: speaking, but never among the 3 loudest


def talkers(step: int, experts: int) -> tuple[int, int, int]:
    """The experts (1…experts-1) speaking as main, second and third speaker in a step."""
    n = experts - 1
    return 1 + step % n, 1 + (step + n // 2) % n, 1 + (step + n // 4 + 1) % n


def level_at(expert: int, t: float, experts: int) -> float:
    """How loud an expert talks `t` seconds into the script (dBov); the operator (-1) is quiet."""
    if expert == 0:
        return CHAIR
    if expert < 0 or t < 0:
        return QUIET
    step = int(t // STEP)
    into = t - step * STEP
    main, second, third = talkers(step, experts)
    if expert == main:
        return MAIN
    if expert == second and 2.0 <= into < 6.0:
        return SECOND
    if expert == third and 3.0 <= into < 6.0:
        return THIRD
    return QUIET


class ScriptVoice(AudioStreamTrack):
    """A voice (a 180 Hz tone) whose loudness follows the script, frame by frame on the wall
    clock from t0; counts what it sent."""

    def __init__(self, expert: int, experts: int, t0: float) -> None:
        super().__init__()
        self.expert, self.experts, self.t0 = expert, experts, t0
        self.n = 0
        self.sent = 0

    async def recv(self) -> av.AudioFrame:
        at = self.t0 + self.n * 0.02
        await asyncio.sleep(max(0.0, at - time.time()))
        amplitude = 10 ** (level_at(self.expert, at - self.t0, self.experts) / 20)
        t = (np.arange(960) + self.n * 960) / 48000
        # RFC 6464 levels are the frame's RMS: a sine's RMS is its peak over √2.
        wave = amplitude * math.sqrt(2) * 32767 * np.sin(2 * math.pi * 180 * t)
        frame = av.AudioFrame.from_ndarray(
            np.clip(wave, -32767, 32767).astype(np.int16).reshape(1, -1),
            format="s16",
            layout="mono",
        )
        frame.sample_rate = 48000
        frame.pts, frame.time_base = self.n * 960, fractions.Fraction(1, 48000)
        self.n += 1
        self.sent += 1
        return frame


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("room")
    ap.add_argument("t0", type=float)
    ap.add_argument("--tokens", required=True, help="the operator's, then each expert's")
    ap.add_argument("--cameras", type=int, default=3, help="experts with a camera")
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--probe", default="1920x1080")
    ap.add_argument("--probe-bitrate", type=int, default=4_000_000)
    ap.add_argument("--address", default="127.0.0.1", help="the address to send media from")
    args = ap.parse_args()
    use_host_addresses([args.address])
    tokens = args.tokens.split(",")
    experts = len(tokens) - 1
    w, h = (int(x) for x in args.probe.split("x"))
    probe = vp8_clip(w, h, 30, args.probe_bitrate, 10, 60)
    room_camera = vp8_clip(1280, 720, 30, 1_500_000, 10, 60)
    expert_camera = vp8_clip(640, 360, 30, 500_000, 10, 60)
    t0 = args.t0
    clients: list[MediaClient] = []
    voices: dict[str, ScriptVoice] = {}
    streams: dict[str, str] = {}
    for i, token in enumerate(tokens):
        sig = SignalingClient(args.url, token, args.room)
        await sig.connect()
        media = MediaClient(sig)
        clients.append(media)
        who = "op" if i == 0 else f"e{i - 1}"
        voices[who] = ScriptVoice(i - 1, experts, t0)
        feeds: list[tuple[MediaStreamTrack, str, str]] = [(voices[who], "microphone", "")]
        if i == 0:
            feeds = [
                (ReplayTrack("video", probe, 30, 90000, None), "probe", "Probe"),
                (ReplayTrack("video", room_camera, 30, 90000, None), "camera", "Room"),
                *feeds,
            ]
        elif i <= args.cameras:
            feeds.insert(0, (ReplayTrack("video", expert_camera, 30, 90000, None), "camera", ""))
        streams[who] = (await media.publish(feeds)).id
    print(json.dumps({"streams": streams}), flush=True)
    await asyncio.sleep(max(0.0, t0 + args.duration - time.time()))
    print(json.dumps({"sent": {who: v.sent for who, v in voices.items()}}), flush=True)
    for c in clients:
        await c.close()
        await c.signaling.close()


if __name__ == "__main__":
    asyncio.run(main())
