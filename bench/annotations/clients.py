"""Annotation benchmark clients: each sends a 60 Hz pointer and a stroke a second, and logs
when every message from the others arrived.

Usage: python -m bench.annotations.clients URL ROOM FEED LOG START DURATION --tokens T1,T2,...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from teleconsult.client.signaling import SignalingClient


async def run_client(
    url: str, room: str, token: str, feed: str, start: float, duration: float
) -> dict[str, Any]:
    client = SignalingClient(url, token, room)
    await client.connect()
    me = client.participant_id
    latencies: dict[str, list[float]] = {"pointer": [], "op": []}
    strokes_seen: set[str] = set()
    sent_strokes = 0

    async def read() -> None:
        while True:
            try:
                event = await client.recv(timeout=duration + 30)
            except (TimeoutError, ConnectionError):
                return
            kind = event.get("type")
            if kind in ("pointer", "op") and event.get("author") != me and "id" in event:
                sent_at = float(event["id"].rsplit("-", 1)[1]) / 1e9
                latencies[kind].append((time.time() - sent_at) * 1000)
                if kind == "op":
                    strokes_seen.add(event["id"])

    reader = asyncio.create_task(read())
    await asyncio.sleep(max(0.0, start - time.time()))
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < duration:
        x = 0.5 + 0.4 * ((n % 120) / 120 - 0.5)
        await client.send(
            {
                "type": "annotate",
                "op": "pointer",
                "feed": feed,
                "points": [[x, 0.5]],
                "id": f"{me}p{n}-{time.time_ns()}",
            }
        )
        if n % 60 == 0:
            await client.send(
                {
                    "type": "annotate",
                    "op": "stroke",
                    "feed": feed,
                    "points": [[0.1 + i / 50, 0.3] for i in range(20)],
                    "id": f"{me}s{n}-{time.time_ns()}",
                }
            )
            sent_strokes += 1
        n += 1
        await asyncio.sleep(max(0.0, t0 + n / 60 - time.monotonic()))
    await asyncio.sleep(3.0)  # let the last messages arrive
    reader.cancel()
    await client.close()
    return {
        "me": me,
        "sent_pointers": n,
        "sent_strokes": sent_strokes,
        "strokes_seen": sorted(strokes_seen),
        "latencies": latencies,
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("room")
    ap.add_argument("feed")
    ap.add_argument("log")
    ap.add_argument("start", type=float)
    ap.add_argument("duration", type=float)
    ap.add_argument("--tokens", required=True)
    args = ap.parse_args()
    results = await asyncio.gather(
        *(
            run_client(args.url, args.room, t, args.feed, args.start, args.duration)
            for t in args.tokens.split(",")
        )
    )
    await asyncio.to_thread(Path(args.log).write_text, json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main())
