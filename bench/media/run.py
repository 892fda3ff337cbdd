"""Measure the SFU against aiortc's MediaRelay on this machine; print JSON and a summary.

Usage: python -m bench.media.run [--quick]
Publisher, relay and subscribers run as separate processes on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from teleconsult.session.roles import Role
from teleconsult.signaling.tokens import mint

from ..common import TELECONSULT, free_port, serve, start_redis, tree_cpu_seconds, wait_http
from ..janus.server import start_janus
from .clip import vp8_clip

SECRET = "bench-secret-bench-secret-bench-secret-01"
PY = sys.executable
RESULTS = Path(__file__).resolve().parent.parent / "results"


# How much lower the viewer processes' priority is (`nice`).
VIEWERS_NICE = int(os.environ.get("BENCH_VIEWERS_NICE", "5"))


def delay_histogram(port: int) -> dict[str, float]:
    """Read the relay's forward-delay histogram as {upper bound: cumulative count}, and the
    video copies it holds back (under "held")."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("teleconsult_media_forward_delay_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            out[le] = float(line.split()[-1])
        elif line.startswith("teleconsult_media_held_copies "):
            out["held"] = float(line.split()[-1])
    return out


def quantile_bound(hist: dict[str, float], q: float) -> str:
    total = hist.get("+Inf", 0)
    for le, n in hist.items():
        if total and n >= q * total:
            return le
    return "+Inf"


def run(
    mode: str,
    subscribers: int,
    size: str,
    bitrate: int,
    window: float,
    audio: bool = False,
    live: bool = False,
    stagger: float = 0.0,
    procs: int = 1,
    record: bool = False,
    nodes: int = 1,
    edge_only: bool = False,
    workers: int | None = None,
) -> dict[str, Any]:
    """One scenario: relay, publisher and subscriber processes; returns what was measured.

    With nodes > 1 the relays form a cluster on a redis-server; the publisher reaches the
    first node and subscriber process i the node i % nodes (a cascaded room), or with edge_only
    every subscriber the second node. `workers` is teleconsult's `--media-workers` (one per
    core when None).
    """
    tmp = Path(tempfile.mkdtemp(prefix="tc-bench-"))
    ports = [free_port() for _ in range(nodes)]
    port = ports[0]
    url = f"ws://127.0.0.1:{port}/ws"
    started: list[subprocess.Popen[Any]] = []
    redis_proc = None

    def spawn(
        *args: str, out: bool = False, env: dict[str, str] | None = None, nice: int = 0
    ) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [*(["nice", "-n", str(nice)] if nice else []), PY, "-m", *args],
            stdout=subprocess.PIPE if out else subprocess.DEVNULL,
            stderr=None if os.environ.get("BENCH_STDERR") else subprocess.DEVNULL,
            text=True,
            env=None if env is None else {**os.environ, **env},
        )
        started.append(p)
        return p

    try:
        cluster: list[str] = []
        if nodes > 1:
            redis_url, redis_proc = start_redis(tmp / "redis")
            cluster = [redis_url]
        janus = mode == "janus"
        if mode == "direct":
            # No server: the publisher and one viewer connect to each other (SDP through
            # files), the baseline for what a server adds to a frame's delay.
            relays: list[subprocess.Popen[Any]] = []
            url = str(tmp / "direct")
            Path(url).mkdir()
        elif janus:
            # Janus's VideoRoom over its WebSocket API: the same publisher and viewers.
            relays = [start_janus(tmp / "janus", port)]
            started.append(relays[0])
            url = f"ws://127.0.0.1:{port}"
        else:
            relays = [
                spawn(
                    "bench.media.relay_server",
                    mode,
                    str(p),
                    SECRET,
                    str(tmp / f"data{i}"),
                    *([*cluster, f"n{i}"] if cluster else []),
                    env=None if workers is None else {"TELECONSULT_MEDIA_WORKERS": str(workers)},
                )
                for i, p in enumerate(ports)
            ]
            for port_of_node in ports:
                wait_http(f"http://127.0.0.1:{port_of_node}/healthz")
        via = ["--janus"] if janus else ["--direct"] if mode == "direct" else []

        def node_url(i: int) -> str:
            return f"ws://127.0.0.1:{ports[i]}/ws"

        def relay_cpu() -> float:
            return tree_cpu_seconds(relays[0].pid) if relays else 0.0

        if nodes > 1:
            time.sleep(2.0)  # every node has beaten once: placement sees them all
        total = 20 + window + subscribers * 0.4 + subscribers * stagger
        pub_args = [
            "bench.media.publisher",
            url,
            "b",
            mint(SECRET, "b", Role.OPERATOR, "pub", 3600, "pub"),
            str(tmp / "pub.json"),
            "--size",
            size,
            "--bitrate",
            str(bitrate),
            "--duration",
            str(total),
        ]
        pub = spawn(
            *pub_args,
            *(["--audio"] if audio else []),
            *(["--live"] if live else []),
            # A camera, not a probe: recording it needs no operator's consent.
            *(["--source", "camera"] if record else []),
            *via,
            out=True,
        )
        assert pub.stdout is not None
        stream = json.loads(pub.stdout.readline())["stream"]
        time.sleep(1.0)
        idle0, idle_t0 = relay_cpu(), time.monotonic()
        time.sleep(3.0)
        idle_cpu = (relay_cpu() - idle0) / (time.monotonic() - idle_t0)
        subs = []
        per = [subscribers // procs + (1 if i < subscribers % procs else 0) for i in range(procs)]
        k = 0
        for i, n in enumerate(per):
            if n == 0:
                continue
            tokens = ",".join(
                mint(SECRET, "b", Role.AUDIENCE, f"s{k + j}", 3600, f"s{k + j}") for j in range(n)
            )
            k += n
            subs.append(
                spawn(
                    "bench.media.subscribers",
                    url
                    if janus or not relays
                    else f"ws://127.0.0.1:{ports[1 if edge_only else i % nodes]}/ws",
                    "b",
                    stream,
                    str(tmp / f"subs{i}.json"),
                    "--tokens",
                    tokens,
                    "--stagger",
                    str(stagger),
                    "--duration",
                    str(window + 8),
                    *via,
                    out=True,
                    # The viewers stand in for machines of their own: on this one they yield
                    # the CPU to the server measured (Janus's or teleconsult's alike).
                    nice=VIEWERS_NICE,
                )
            )
        for p in subs:
            assert p.stdout is not None
            p.stdout.readline()  # all of this process's subscribers have answered
        if record:
            toggle = spawn(
                "bench.media.record_toggle",
                url,
                "b",
                mint(SECRET, "b", Role.MODERATOR, "mod", 3600, "mod"),
                str(window + 5),
                out=True,
            )
            assert toggle.stdout is not None
            toggle.stdout.readline()
        time.sleep(3.0)  # the first keyframe (at most 2 s away in a replayed clip)
        t0, c0 = time.time(), relay_cpu()
        per0 = [tree_cpu_seconds(r.pid) for r in relays]
        time.sleep(window)
        t1, c1 = time.time(), relay_cpu()
        per_node = [
            round((tree_cpu_seconds(r.pid) - c) / (t1 - t0) * 100, 1)
            for r, c in zip(relays, per0, strict=True)
        ]
        hist = delay_histogram(port) if mode == "teleconsult" else {}
        for p in subs:
            p.wait(window + 60)
        pub.wait(total + 30)
        sends = json.loads((tmp / "pub.json").read_text())
        results = []
        for i in range(len(subs)):
            results += json.loads((tmp / f"subs{i}.json").read_text())
        # A replayed clip repeats every 10 s: a frame is (content, the send it followed).
        window_sends = [(k, t) for k, t in sends if t0 <= t <= t1 - 0.5]
        fps, delivered, delays, first, aps = [], [], [], [], []
        whole = range(int(t0) + 1, int(t1))  # the seconds wholly inside the window
        packets_out = sum(r["per_second"].get(str(sec), 0) for r in results for sec in whole) / max(
            1, len(whole)
        )
        for r in results:
            arrivals = r["arrivals"]
            fps.append(sum(1 for _, t in arrivals if t0 <= t <= t1) / (t1 - t0))
            if audio:
                aps.append(sum(1 for t in r["audio_arrivals"] if t0 <= t <= t1) / (t1 - t0))
            if r["connected_to_first_frame"] is not None:
                first.append(r["connected_to_first_frame"] * 1000)
            if window_sends and mode != "mediarelay":
                seen: dict[str, list[float]] = {}
                for k, t in arrivals:
                    seen.setdefault(k, []).append(t)
                got = 0
                for k, ts in window_sends:
                    after = [ta for ta in seen.get(k, []) if 0 <= ta - ts < 2.0]
                    if after:
                        got += 1
                        delays.append((after[0] - ts) * 1000)
                delivered.append(got / len(window_sends))
        delays.sort()
        cpu = (c1 - c0) / (t1 - t0)
        out: dict[str, Any] = {
            "mode": mode,
            "subscribers": subscribers,
            "size": size,
            "bitrate": bitrate,
            "audio": audio,
            "live": live,
            "recording": record,
            "relay_cpu": round(cpu * 100, 1),
            "nodes": nodes,
            "workers": (workers if workers is not None else len(os.sched_getaffinity(0)))
            if mode == "teleconsult" and nodes == 1
            else None,
            "subscribers_on": "second node" if edge_only else "spread",
            "relay_cpu_per_node": per_node,
            "relay_cpu_idle_publisher_only": round(idle_cpu * 100, 1),
            "video_packets_out_per_s": round(packets_out),
            # Relay CPU over the packets it sent: what each forwarded copy cost (all of it,
            # receiving, RTCP and timers included).
            "cpu_us_per_packet_out": round(cpu / packets_out * 1e6, 1) if packets_out else None,
            "load1": round(os.getloadavg()[0], 2),
            "fps_min": round(min(fps), 1) if fps else None,
            "fps_mean": round(statistics.mean(fps), 1) if fps else None,
        }
        if delivered:
            out["frames_delivered_min"] = round(min(delivered), 4)
            out["frames_delivered_median"] = round(statistics.median(delivered), 4)
            # The viewers that saw every frame of the window (a frame or two at its edges aside).
            out["viewers_every_frame"] = sum(1 for d in delivered if d >= 0.99)
        if "held" in hist:
            out["held_copies_at_end"] = int(hist.pop("held"))
        if aps:
            out["audio_packets_per_s_min"] = round(min(aps), 1)
        if delays:
            out["frame_delay_ms_p50"] = round(delays[len(delays) // 2], 2)
            out["frame_delay_ms_p95"] = round(delays[int(len(delays) * 0.95)], 2)
            out["frame_delay_ms_p99"] = round(delays[int(len(delays) * 0.99)], 2)
        if hist:
            out["forward_delay_p50_le_s"] = quantile_bound(hist, 0.5)
            out["forward_delay_p99_le_s"] = quantile_bound(hist, 0.99)
        if first:
            first.sort()
            out["connected_to_first_frame_ms_p50"] = round(first[len(first) // 2], 1)
            out["connected_to_first_frame_ms_max"] = round(first[-1], 1)
        return out
    finally:
        if redis_proc is not None:
            started.append(redis_proc)
        for p in started:
            if p.poll() is None:
                p.terminate()
        for p in started:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
            if p.stdout:
                p.stdout.close()


def e2e_latency(seconds: float) -> dict[str, Any]:
    """Latency from capture to decoded picture, read from the synthetic source's stamps."""
    tmp = Path(tempfile.mkdtemp(prefix="tc-bench-"))
    port = free_port()
    common = [
        "--server",
        f"http://127.0.0.1:{port}",
        "--room",
        "lat",
        "--secret",
        SECRET,
        "--data-dir",
        str(tmp),
    ]
    server = serve(port, SECRET, tmp)
    pub = None
    try:
        pub = subprocess.Popen(
            [
                TELECONSULT,
                "publish",
                *common,
                "--synthetic",
                "--size",
                "1280x720",
                "--duration",
                str(seconds + 15),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert pub.stdout is not None
        pub.stdout.readline()
        out = subprocess.run(
            [TELECONSULT, "subscribe", *common, "--duration", str(seconds)],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
        (feed,) = json.loads(out.stdout.splitlines()[-1])["summary"].values()
        return dict(feed)
    finally:
        for p in (pub, server):
            if p is not None:
                p.terminate()
                p.wait(10)
                if p.stdout:
                    p.stdout.close()


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 // 1024
    import aiortc

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem,
        "python": platform.python_version(),
        "aiortc": aiortc.__version__,
        "kernel": platform.release(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter windows, fewer points")
    scenarios = "cpu,fullhd,janus,added,capacity,viewers,record,cascade,late,late-clip,latency"
    ap.add_argument("--only", help=f"comma-separated: {scenarios}")
    args = ap.parse_args()
    window = 8.0 if args.quick else 15.0
    only = set((args.only or scenarios).split(","))
    vp8_clip(1280, 720, 30, 1_500_000, 10, 60)
    vp8_clip(1920, 1080, 30, 4_000_000, 10, 60)
    report: dict[str, Any] = {"machine": machine(), "runs": []}

    def record(r: dict[str, Any]) -> None:
        report["runs"].append(r)
        print(json.dumps(r), flush=True)

    if "cpu" in only:
        for n in (1, 4) if args.quick else (1, 4, 8, 16):
            record(run("teleconsult", n, "1280x720", 1_500_000, window))
        for n in (1, 4):
            record(run("mediarelay", n, "1280x720", 1_500_000, window))
    if "fullhd" in only:
        # Issue 16's points: 1080p at 4 Mbit/s (about 400 packets/s in) to 1, 8 and 16.
        for n in (1, 8, 16):
            record(run("teleconsult", n, "1920x1080", 4_000_000, window))
    if "janus" in only:
        # Issue 16's comparison: the same publisher and viewers through Janus's VideoRoom and
        # through teleconsult, interleaved, at 1080p 4 Mbit/s; then a late joiner to a
        # publisher that ignores PLI (the replayed clip), where Janus's figure is its GOP.
        # teleconsult with its media workers (one per core) and in its own process alone.
        for n in (1, 16) if args.quick else (1, 16, 32):
            # At one viewer, the same viewer straight from the publisher too: what each server
            # adds to a frame's delay is its figure less this one.
            modes: list[tuple[str, int | None]] = [("janus", None), ("teleconsult", None)]
            modes += [("direct", None)] if n == 1 else [("teleconsult", 0)]
            for mode, workers in modes:
                procs = (n + 15) // 16
                record(run(mode, n, "1920x1080", 4_000_000, window, procs=procs, workers=workers))
        for mode in ("janus", "teleconsult"):
            record(run(mode, 10, "1280x720", 1_500_000, window, stagger=1.0))
    if "added" in only:
        # What each server adds to a frame's delay at one viewer of 1080p: the same viewer
        # straight from the publisher, then through teleconsult (with its media workers and
        # in one process) and Janus, interleaved, three rounds; each round's figure less its
        # own direct one.
        for round_ in range(3):
            base: float | None = None
            for mode, workers in (("direct", None), ("teleconsult", None), ("teleconsult", 0),
                                  ("janus", None)):  # fmt: skip
                r = run(mode, 1, "1920x1080", 4_000_000, window, workers=workers)
                p50 = r.get("frame_delay_ms_p50")
                if mode == "direct":
                    base = p50
                elif base is not None and p50 is not None:
                    r["added_ms_p50"] = round(p50 - base, 2)
                record({**r, "round": round_})
    if "capacity" in only:
        record(run("teleconsult", 30, "1920x1080", 4_000_000, window, audio=True, procs=2))
    if "viewers" in only:
        # How many viewers of one 1080p feed get every frame, Janus and teleconsult in turn.
        for n in (64, 96, 128):
            for mode in ("janus", "teleconsult"):
                record(run(mode, n, "1920x1080", 4_000_000, window, procs=(n + 15) // 16))
    if "record" in only:
        # The same stream with and without the recorder, in one run.
        for on in (False, True):
            record(run("teleconsult", 4, "1280x720", 1_500_000, window, audio=True, record=on))
    if "cascade" in only:
        # The same feed to the same subscribers from one node, then from two cascaded nodes
        # (the publisher on the first; half the subscribers on each).
        for n in (16, 32):
            for nodes in (1, 2):
                record(run("teleconsult", n, "1280x720", 1_500_000, window, procs=2, nodes=nodes))
            # Every subscriber on the second node: the origin sends one copy whatever their number.
            record(
                run(
                    "teleconsult",
                    n,
                    "1280x720",
                    1_500_000,
                    window,
                    procs=2,
                    nodes=2,
                    edge_only=True,
                )
            )
    if "late" in only:
        record(run("teleconsult", 10, "1280x720", 1_500_000, window, live=True, stagger=1.0))
    if "late-clip" in only:
        # The replayed clip cannot make a keyframe on demand: joiners depend on the relay's
        # keyframe cache, or wait for the clip's next keyframe (its GOP is 2 s).
        record(run("teleconsult", 10, "1280x720", 1_500_000, window, stagger=1.0))
    if "latency" in only:
        report["e2e_latency"] = e2e_latency(10.0)
        print(json.dumps({"e2e_latency": report["e2e_latency"]}), flush=True)
    RESULTS.mkdir(exist_ok=True)
    # A partial run does not overwrite the full one.
    name = "media.json" if args.only is None else f"media-{'-'.join(sorted(only))}.json"
    (RESULTS / name).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
