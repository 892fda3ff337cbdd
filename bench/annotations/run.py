"""Fan-out of the annotation channel: 1 operator + 15 experts, each a 60 Hz pointer and a stroke
a second, through the real server over loopback WebSockets.

Usage: python -m bench.annotations.run [--duration 20] [--clients 16] [--procs 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import TELECONSULT, cpu_seconds, free_port, serve
from bench.media.run import machine
from session.roles import Role
from signaling.tokens import mint

SECRET = "bench-secret-bench-secret-bench-secret-01"
RESULTS = Path(__file__).resolve().parent.parent / "results"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2) if values else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--procs", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tc-ann-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = serve(port, SECRET, tmp)
    procs: list[subprocess.Popen[str]] = []
    try:
        # The feed annotations are drawn on: a small synthetic probe stream.
        pub = subprocess.Popen(
            [
                TELECONSULT,
                "publish",
                "--server",
                base,
                "--room",
                "conf",
                "--secret",
                SECRET,
                "--data-dir",
                str(tmp),
                "--synthetic",
                "--size",
                "320x240",
                "--fps",
                "10",
                "--duration",
                str(args.duration + 60),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        procs.append(pub)
        assert pub.stdout is not None
        feed = json.loads(pub.stdout.readline())["feeds"]["0"]
        roles = [Role.OPERATOR] + [Role.EXPERT] * (args.clients - 1)
        tokens = [mint(SECRET, "conf", r, f"c{i}", 3600, f"c{i}") for i, r in enumerate(roles)]
        start = time.time() + 3.0
        for i in range(args.procs):
            mine = tokens[i :: args.procs]
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bench.annotations.clients",
                        f"ws://127.0.0.1:{port}/ws",
                        "conf",
                        feed,
                        str(tmp / f"c{i}.json"),
                        str(start),
                        str(args.duration),
                        "--tokens",
                        ",".join(mine),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
            )
        time.sleep(max(0.0, start - time.time()) + 1.0)
        c0, t0 = cpu_seconds(server.pid), time.monotonic()
        time.sleep(args.duration - 2.0)
        cpu = (cpu_seconds(server.pid) - c0) / (time.monotonic() - t0)
        for p in procs[1:]:
            p.wait(args.duration + 120)
        results: list[dict[str, Any]] = []
        for i in range(args.procs):
            results += json.loads((tmp / f"c{i}.json").read_text())
        all_strokes = {s for r in results for s in r["strokes_seen"]}
        sent = sum(r["sent_strokes"] for r in results)
        lost = 0
        for r in results:
            others = sum(x["sent_strokes"] for x in results if x["me"] != r["me"])
            lost += others - len(r["strokes_seen"])
        pointer_lat = [v for r in results for v in r["latencies"]["pointer"]]
        op_lat = [v for r in results for v in r["latencies"]["op"]]
        sent_msgs = sum(r["sent_pointers"] + r["sent_strokes"] for r in results)
        received = len(pointer_lat) + len(op_lat)
        report = {
            "machine": machine(),
            "clients": args.clients,
            "duration_s": args.duration,
            "server_cpu_percent": round(cpu * 100, 1),
            "messages_in_per_s": round(sent_msgs / args.duration),
            "messages_out_per_s": round(received / args.duration),
            "strokes_sent": sent,
            "distinct_strokes_seen": len(all_strokes),
            "strokes_lost": lost,
            "stroke_latency_ms": {
                "p50": pct(op_lat, 0.5),
                "p99": pct(op_lat, 0.99),
                "max": pct(op_lat, 1.0),
            },
            "pointer_latency_ms": {
                "p50": pct(pointer_lat, 0.5),
                "p99": pct(pointer_lat, 0.99),
                "max": pct(pointer_lat, 1.0),
            },
            "pointers_delivered_share": round(
                len(pointer_lat)
                / max(1, sum(r["sent_pointers"] for r in results) * (args.clients - 1)),
                3,
            ),
        }
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "annotations.json").write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
    finally:
        for p in [*procs, server]:
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
            if p.stdout:
                p.stdout.close()


if __name__ == "__main__":
    main()
