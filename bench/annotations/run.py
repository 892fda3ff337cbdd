"""Fan-out of the annotation channel: 1 operator + 15 experts, each a 60 Hz pointer and a stroke
a second, through the real server over loopback WebSockets.

Run on one node, then on two nodes of a cluster (a redis-server; client process i on node
i % nodes, so half the messages cross between nodes), in the same run.

Usage: python -m bench.annotations.run [--duration 20] [--clients 16] [--procs 2] [--nodes 1,2]
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

from bench.common import TELECONSULT, cpu_seconds, free_port, serve, start_redis
from bench.media.run import machine
from teleconsult.session.roles import Role
from teleconsult.signaling.tokens import mint

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
    ap.add_argument("--nodes", default="1,2", help="node counts to run, e.g. 1,2")
    args = ap.parse_args()
    runs = [run(args, int(n)) for n in args.nodes.split(",")]
    report = {"machine": machine(), "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "annotations.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def run(args: argparse.Namespace, nodes: int) -> dict[str, Any]:
    """One scenario: the server (or a cluster of `nodes`), a publisher and the clients."""
    tmp = Path(tempfile.mkdtemp(prefix="tc-ann-"))
    ports = [free_port() for _ in range(nodes)]
    port = ports[0]
    base = f"http://127.0.0.1:{port}"
    servers: list[subprocess.Popen[bytes]] = []
    procs: list[subprocess.Popen[str]] = []
    try:
        if nodes > 1:
            url, redis = start_redis(tmp / "redis")
            servers.append(redis)
            for i, node_port in enumerate(ports):
                servers.append(
                    serve(node_port, SECRET, tmp / f"n{i}", "--redis", url, "--node", f"n{i}")
                )
            time.sleep(2.0)  # every node has beaten once
        else:
            servers.append(serve(port, SECRET, tmp))
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
                        f"ws://127.0.0.1:{ports[i % nodes]}/ws",
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
        # Every server process: the nodes and, in a cluster, Redis carrying the relay.
        c0, t0 = [cpu_seconds(s.pid) for s in servers], time.monotonic()
        time.sleep(args.duration - 2.0)
        dt = time.monotonic() - t0
        cpu = [
            round((cpu_seconds(s.pid) - c) / dt * 100, 1) for s, c in zip(servers, c0, strict=True)
        ]
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
            "nodes": nodes,
            "clients": args.clients,
            "duration_s": args.duration,
            "server_cpu_percent": round(sum(cpu), 1),
            "cpu_percent_per_process": cpu,
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
        print(json.dumps(report), flush=True)
        return report
    finally:
        every: list[subprocess.Popen[Any]] = [*procs, *servers]
        for p in every:
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
