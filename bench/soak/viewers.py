"""Soak viewers: several subscribers in one process, counting frames without decoding.

Usage: python -m bench.soak.viewers URL ROOM STREAM T0 --tokens T1,T2,... --minutes M
Prints one JSON line a minute (minute k counts what arrived between T0 + 60k and T0 + 60k+60
seconds of wall time) and a last line with the totals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from media.aiortc_adapter import use_host_addresses

from ..media.subscribers import subscribe_one


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("room")
    ap.add_argument("stream")
    ap.add_argument("t0", type=float, help="wall time the minutes count from")
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--minutes", type=float, required=True)
    args = ap.parse_args()
    use_host_addresses(["127.0.0.1"])
    joined = [
        await subscribe_one(args.url, args.room, args.stream, t) for t in args.tokens.split(",")
    ]
    counters = [c for c, _ in joined]
    for c in counters:
        c.arrivals.clear()
    end = args.t0 + args.minutes * 60
    minute = 0
    last = [(c.video_frames, c.audio_packets) for c in counters]
    while time.time() < end:
        await asyncio.sleep(max(0.0, args.t0 + (minute + 1) * 60 - time.time()))
        now = [(c.video_frames, c.audio_packets) for c in counters]
        line = {
            "minute": minute,
            "video": [n[0] - p[0] for n, p in zip(now, last, strict=True)],
            "audio": [n[1] - p[1] for n, p in zip(now, last, strict=True)],
        }
        print(json.dumps(line), flush=True)
        last = now
        minute += 1
        for c in counters:  # arrivals are kept for latency benches; a soak needs only counts
            c.arrivals.clear()
            c.audio_arrivals.clear()
    print(json.dumps({"done": True, "video": [c.video_frames for c in counters]}), flush=True)
    for _, (client, media) in joined:  # type: ignore[misc]
        await media.close()
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
