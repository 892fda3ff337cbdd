"""Join a benchmark room as moderator, start recording, hold it for a while, stop; a
connection that drops meanwhile is made again.

Usage: python -m bench.media.record_toggle URL ROOM TOKEN SECONDS
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from teleconsult.client.signaling import SignalingClient
from teleconsult.client.tools import connect_again


async def main() -> None:
    url, room, token, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])

    def new_client() -> SignalingClient:
        return SignalingClient(url, token, room)

    client = await connect_again(new_client, None)
    assert client is not None
    await client.send({"type": "record", "action": "start"})
    started = await client.wait_for("recording", timeout=10, where=lambda e: e["active"])
    print(json.dumps({"session": started["session_id"]}), flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        if client.closed:
            # Dropped (the machine paused, the network blinked): the recording goes on on the
            # server; the moderator comes back, to stop it at the end.
            await client.close()
            again = await connect_again(new_client, deadline)
            if again is None:
                return
            client = again
    await client.send({"type": "record", "action": "stop"})
    await client.wait_for("recording", timeout=10, where=lambda e: not e["active"])
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
