"""Soak annotator: an expert drawing strokes at a steady rate, clearing now and then.

Usage: python -m bench.soak.annotator URL ROOM TOKEN FEED --hz H --minutes M
Prints a last JSON line: operations acknowledged, errors, and acknowledgement delays.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from teleconsult.client.signaling import RequestFailed, SignalingClient


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("room")
    ap.add_argument("token")
    ap.add_argument("feed")
    ap.add_argument("--hz", type=float, default=5.0)
    ap.add_argument("--minutes", type=float, required=True)
    args = ap.parse_args()
    client = SignalingClient(args.url, args.token, args.room)
    await client.connect()
    print(json.dumps({"joined": client.participant_id}), flush=True)
    acked, errors, delays = 0, 0, []
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < args.minutes * 60:
        await asyncio.sleep(max(0.0, start + n / args.hz - time.monotonic()))
        message: dict[str, Any]
        if n % 50 == 49:  # a teacher clears the picture now and then
            message = {"type": "annotate", "op": "clear", "id": f"c{n}", "scope": "own"}
        else:
            x = (n % 40) / 50
            points = [[x + i / 200, 0.3 + (i % 7) / 40] for i in range(20)]
            message = {
                "type": "annotate",
                "op": "stroke",
                "id": f"s{n}",
                "feed": args.feed,
                "points": points,
            }
        t = time.monotonic()
        try:
            await client.request(message, timeout=10)
            acked += 1
            delays.append(time.monotonic() - t)
        except (RequestFailed, TimeoutError):
            errors += 1
        n += 1
        client.drain()  # the others' events are not this bench's concern
    delays.sort()
    print(
        json.dumps(
            {
                "acked": acked,
                "errors": errors,
                "ack_p50_ms": round(1000 * statistics.median(delays), 1) if delays else None,
                "ack_p99_ms": round(1000 * delays[int(0.99 * (len(delays) - 1))], 1)
                if delays
                else None,
            }
        ),
        flush=True,
    )
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
