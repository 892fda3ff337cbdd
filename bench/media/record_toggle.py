"""Join a benchmark room as moderator, start recording, hold it for a while, stop.

Usage: python -m bench.media.record_toggle URL ROOM TOKEN SECONDS
"""

from __future__ import annotations

import asyncio
import json
import sys

from teleconsult.client.signaling import SignalingClient


async def main() -> None:
    url, room, token, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    client = SignalingClient(url, token, room)
    await client.connect()
    await client.send({"type": "record", "action": "start"})
    started = await client.wait_for("recording", timeout=10, where=lambda e: e["active"])
    print(json.dumps({"session": started["session_id"]}), flush=True)
    await asyncio.sleep(seconds)
    await client.send({"type": "record", "action": "stop"})
    await client.wait_for("recording", timeout=10, where=lambda e: not e["active"])
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
