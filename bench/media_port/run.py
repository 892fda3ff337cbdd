"""The node's one media port against a port per connection, side by side: the same load
(`teleconsult loadtest`) on a node with 2 media workers, once with `--media-port` (the
server hands first checks to workers, which read their peers on connected sockets) and once
without (aioice's ephemeral port per connection), alternating, each repeated.

Usage: python -m bench.media_port.run [--viewers 32 64] [--duration 20] [--rounds 2]
Prints a table and a last JSON line: node CPU (mean % of one core), frames delivered and delay
p95 per mode and viewer count, with the machine's load1 before each run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import TELECONSULT, free_port, serve, stop

SECRET = "bench-media-port-secret-0123456789abcdef"
ROOM_SIZE = 32  # viewers per room (a room holds 50 by default)


def run_once(viewers: int, shared: bool, duration: float, tmp: Path) -> dict[str, Any]:
    """One load test against a fresh node; its summary figures."""
    port = free_port()
    extra = ["--media-workers", "2"]
    if shared:
        media = free_port()
        extra += ["--media-port", str(media), "--media-tcp-port", str(media)]
    data = tmp / f"node-{viewers}-{shared}-{port}"
    load1 = os.getloadavg()[0]
    server = serve(port, SECRET, data, *extra, log=tmp / "server.log")
    rooms = max(1, -(-viewers // ROOM_SIZE))
    out = tmp / f"out-{port}"
    try:
        done = subprocess.run(
            [
                TELECONSULT, "loadtest", "--server", f"http://127.0.0.1:{port}",
                "--data-dir", str(data), "--rooms", str(rooms),
                "--viewers", str(viewers // rooms), "--video", "720p",
                "--duration", str(duration), "--out", str(out),
            ],
            capture_output=True, text=True, timeout=duration + 180,
        )  # fmt: skip
    finally:
        stop([server])
    (raw,) = out.glob("loadtest-*.json")
    seconds = json.loads(raw.read_text())["seconds"]
    judged = seconds[2:] or seconds  # the first seconds are the viewers starting
    cpus = [s["cpu"] for s in judged if s["cpu"] is not None]
    p95 = [s["p95_ms"] for s in judged if s["p95_ms"] is not None]
    return {
        "viewers": viewers,
        "mode": "node port" if shared else "port per connection",
        "cpu_mean": round(sum(cpus) / len(cpus), 1),
        "delivered": round(
            sum(s["frames"] for s in judged) / max(1, sum(s["expected_frames"] for s in judged)), 4
        ),
        "delay_p95_ms_worst": round(max(p95), 1) if p95 else None,
        "packets_per_s": round(sum(s["packets"] for s in judged) / len(judged)),
        "load1_before": round(load1, 2),
        "exit": done.returncode,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--viewers", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for viewers in args.viewers:
                for shared in (False, True):
                    result = run_once(viewers, shared, args.duration, Path(tmp)) | {
                        "round": round_
                    }
                    results.append(result)
                    print(
                        f"{result['viewers']:>4} viewers  {result['mode']:<21} "
                        f"CPU {result['cpu_mean']:5.1f} %  delivered {result['delivered']:.2%}  "
                        f"p95 worst {result['delay_p95_ms_worst']} ms  "
                        f"{result['packets_per_s']} packets/s  load1 {result['load1_before']}",
                        file=sys.stderr,
                        flush=True,
                    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
