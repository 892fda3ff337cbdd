"""A live session in a process of its own: a server, an operator publishing, an expert decoding.

`python -m tests.live_session DIR [UDP TCP]` prints one JSON line (the server's UDP ports, the ICE
username fragments, the publisher's SSRCs), then answers each line read on stdin with one JSON
line: whether the stream and subscription are still connected, frames decoded so far and
datagrams dropped by kind. Its log goes to DIR/session.log. End it by closing stdin.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

from teleconsult.client.media import MediaClient
from teleconsult.media.aioice_ports import own_ports
from teleconsult.media.datagrams import INGRESS
from teleconsult.session.roles import Role

from .conftest import running_server
from .media_util import PatternTrack


async def main(data_dir: Path, shared: list[int]) -> None:
    # Shared: the node's media on one UDP port and ICE-TCP on one TCP port. The clients here
    # are in the server's process, so they keep ports of their own (`own_ports`): otherwise
    # they would be on the node's port too, each side's peer at the same address.
    shared_ports = {"media_port": shared[0], "media_tcp_port": shared[1]} if shared else {}
    async with running_server(data_dir, announce="127.0.0.1", **shared_ports) as srv:
        op = MediaClient(await srv.join(role=Role.OPERATOR, identity="op", name="op"))
        ex = MediaClient(await srv.join(role=Role.EXPERT, identity="ex", name="ex"))
        with own_ports():
            stream = await op.publish([(PatternTrack(), "probe", "")])
            sub = await ex.subscribe(stream.id)
        track = sub.tracks[f"{stream.id}.0"]
        frames = 0

        async def count() -> None:
            nonlocal frames
            while True:
                await track.recv()
                frames += 1

        counting = asyncio.ensure_future(count())
        sfu = srv.hub.sfu
        up, down = sfu.ups[stream.id], sfu.downs[sub.id]
        assert srv.hub.turn is not None and up.pc.remoteDescription is not None
        ssrcs = [int(s) for s in re.findall(r"a=ssrc:(\d+)", up.pc.remoteDescription.sdp)]
        ports = sorted({_port(c) for pc in (up.pc, down.pc) for c in _candidates(pc)})
        print(
            json.dumps(
                {
                    "ports": [*ports, srv.hub.turn.udp_address[1]],
                    "ufrags": [_ufrag(up.pc), _ufrag(down.pc)],
                    "ssrcs": ssrcs,
                    "metrics": f"{srv.http}/metrics",
                    "tcp": shared[1:],
                }
            ),
            flush=True,
        )
        reader = asyncio.StreamReader()
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while await reader.readline():
            await asyncio.sleep(0.01)  # take the datagrams sent before the question
            up_now, down_now = sfu.ups.get(stream.id), sfu.downs.get(sub.id)
            healthy = (
                up_now is up
                and down_now is down
                and up.pc.connectionState == "connected"
                and down.pc.connectionState == "connected"
            )
            answer = {"healthy": healthy, "frames": frames, "dropped": dict(INGRESS.dropped)}
            print(json.dumps(answer), flush=True)
        counting.cancel()
        await op.close()
        await ex.close()


def _candidates(pc: Any) -> list[str]:
    """A connection's UDP candidates (the TCP one is reported apart)."""
    return re.findall(r"^a=candidate:\S+ \d+ udp .*$", pc.localDescription.sdp, re.M)


def _port(candidate: str) -> int:
    return int(candidate.split()[5])


def _ufrag(pc: Any) -> str:
    found = re.search(r"a=ice-ufrag:(\S+)", pc.localDescription.sdp)
    assert found is not None
    return found.group(1)


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    logging.basicConfig(
        filename=folder / "session.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    asyncio.run(main(folder, [int(p) for p in sys.argv[2:4]]))
