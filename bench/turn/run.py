"""Relayed throughput and added latency: the built-in TURN server against coturn, same workload.

Usage: python -m bench.turn.run
Each server runs in its own process on 127.0.0.1; the client (aioice's TURN client over UDP)
and an echoing peer run in this one.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aioice.turn import TurnTransport, create_turn_endpoint

from bench.common import cpu_seconds, free_port
from bench.media.run import machine
from teleconsult.turn import credentials

SECRET = "bench-turn-secret-0123456789"
PAYLOAD = 1200
RESULTS = Path(__file__).resolve().parent.parent / "results"


class Peer(asyncio.DatagramProtocol):
    """Echoes what it gets and counts it."""

    def __init__(self) -> None:
        self.bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.bytes += len(data)
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


class Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.rtts: list[float] = []
        self.got = 0

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.got += 1
        sent = float(data[:20].decode().strip())
        self.rtts.append((time.perf_counter() - sent) * 1000)


async def measure(
    server: tuple[str, int] | None, rate_mbps: float, seconds: float
) -> dict[str, Any]:
    """Send paced 1200-byte datagrams to an echoing peer, through TURN or directly."""
    loop = asyncio.get_running_loop()
    peer_t, peer = await loop.create_datagram_endpoint(Peer, local_addr=("127.0.0.1", 0))
    peer_addr = peer_t.get_extra_info("sockname")
    relay: asyncio.DatagramTransport | TurnTransport
    if server is None:
        relay, client = await loop.create_datagram_endpoint(Client, local_addr=("127.0.0.1", 0))
    else:
        user, password = credentials.mint(SECRET, "bench", 600, time.time())
        relay, client = await create_turn_endpoint(Client, server, user, password)
    relay.sendto(f"{time.perf_counter():<20}".encode() + bytes(PAYLOAD - 20), peer_addr)
    await asyncio.sleep(0.5)  # channel bound
    client.rtts.clear()
    client.got = 0
    peer.bytes = 0
    per_second = rate_mbps * 1e6 / 8 / PAYLOAD
    start, sent = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        due = int((time.perf_counter() - start) * per_second)
        while sent < due:
            relay.sendto(f"{time.perf_counter():<20}".encode() + bytes(PAYLOAD - 20), peer_addr)
            sent += 1
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.5)
    relay.close()
    peer_t.close()
    rtts = sorted(client.rtts)
    return {
        "offered_mbps": rate_mbps,
        "delivered_mbps": round(peer.bytes * 8 / seconds / 1e6, 1),
        "loss_pct": round(100 * (1 - client.got / max(1, sent)), 2),
        "rtt_ms_p50": round(statistics.median(rtts), 3) if rtts else None,
        "rtt_ms_p99": round(rtts[int(0.99 * (len(rtts) - 1))], 3) if rtts else None,
    }


def start(kind: str, port: int, tmp: Path) -> subprocess.Popen[str]:
    if kind == "ours":
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.turn.ours", str(port), SECRET],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert proc.stdout is not None
        proc.stdout.readline()
        return proc
    exe = shutil.which("turnserver")
    if exe is None:
        raise SystemExit("coturn is not installed (apt-get install coturn)")
    proc = subprocess.Popen(
        [
            exe,
            "-n",
            "--listening-ip=127.0.0.1",
            f"--listening-port={port}",
            "--relay-ip=127.0.0.1",
            "--use-auth-secret",
            f"--static-auth-secret={SECRET}",
            "--realm=teleconsult",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--allow-loopback-peers",
            f"--log-file={tmp / 'coturn.log'}",
            "--simple-log",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    time.sleep(1.0)
    return proc


async def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="tc-turn-"))
    report: dict[str, Any] = {"machine": machine(), "runs": []}
    direct = await measure(None, 2.0, 3.0)
    report["direct"] = direct
    print(json.dumps({"direct": direct}), flush=True)
    for kind in ("ours", "coturn"):
        port = free_port()
        proc = start(kind, port, tmp)
        try:
            for rate in (2.0, 20.0, 50.0, 100.0):
                c0, t0 = cpu_seconds(proc.pid), time.monotonic()
                result = await measure(("127.0.0.1", port), rate, 3.0)
                result["server"] = kind
                result["server_cpu_pct"] = round(
                    100 * (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0), 1
                )
                report["runs"].append(result)
                print(json.dumps(result), flush=True)
        finally:
            proc.terminate()
            proc.wait(10)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "turn.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
