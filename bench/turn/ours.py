"""Run the built-in TURN server alone for a benchmark: python -m bench.turn.ours PORT SECRET."""

from __future__ import annotations

import asyncio
import sys

from teleconsult.turn.policy import PeerPolicy
from teleconsult.turn.server import TurnServer


async def main() -> None:
    server = TurnServer(
        sys.argv[2],
        host="127.0.0.1",
        port=int(sys.argv[1]),
        policy=PeerPolicy(allow=["127.0.0.0/8"]),
    )
    await server.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
