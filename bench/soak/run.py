"""A whole session for a long time: is every frame delivered every minute, and does the server grow?

Usage: python -m bench.soak.run [--minutes 10] [--subscribers 8] [--size 1920x1080]
       [--bitrate 4000000] [--annotate-hz 5] [--no-record] [--out FILE]

One `teleconsult serve`, a publisher replaying a pre-encoded VP8 clip with Opus audio, viewers
that count frames without decoding, an expert drawing, a moderator recording; all processes of
their own on 127.0.0.1. Every minute: frames each viewer got against frames sent, the server's
RSS, open files and CPU, and the machine's load. Exits 1 if a minute lost frames or the
server's RSS or open files grew by 10 % or more after the fifth minute.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from session.roles import Role
from signaling.tokens import mint

from ..common import cpu_seconds, free_port, serve
from ..media.clip import vp8_clip

SECRET = "soak-secret-soak-secret-soak-secret-0123"
PY = sys.executable
RESULTS = Path(__file__).resolve().parent.parent / "results"
ROOM = "soak"
# Frames sent in a minute and frames received in it differ at the edges by what was in
# flight when the minute turned: a frame or two, never more on loopback.
EDGE = 2


def rss_kib(pid: int) -> int:
    """Return a process's resident set in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_files(pid: int) -> int:
    """Return how many file descriptors a process holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def lines_of(proc: subprocess.Popen[str], into: list[dict[str, Any]]) -> threading.Thread:
    """Collect a child's JSON lines as they come."""

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip():
                into.append(json.loads(line))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--subscribers", type=int, default=8)
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--bitrate", type=int, default=4_000_000)
    ap.add_argument("--annotate-hz", type=float, default=5.0)
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    # The commit whose code runs: taken now, as the tree may move on during a long run.
    args.commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    w, h = (int(x) for x in args.size.split("x"))
    vp8_clip(w, h, args.fps, args.bitrate, 10, 2 * args.fps)  # encoded once, before timing
    tmp = Path(tempfile.mkdtemp(prefix="tc-soak-"))
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws"
    started: list[subprocess.Popen[Any]] = []

    def spawn(*argv: str) -> subprocess.Popen[str]:
        p = subprocess.Popen(
            [PY, "-m", *argv], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        started.append(p)
        return p

    def token(role: Role, who: str) -> str:
        return mint(SECRET, ROOM, role, who, 24 * 3600, who)

    server = serve(port, SECRET, tmp / "data")
    started.append(server)
    seconds = args.minutes * 60
    try:
        pub = spawn(
            "bench.media.publisher", url, ROOM, token(Role.OPERATOR, "op"), str(tmp / "pub.json"),
            "--size", args.size, "--fps", str(args.fps), "--bitrate", str(args.bitrate),
            "--audio", "--source", "camera", "--duration", str(seconds + 30),
        )  # fmt: skip
        assert pub.stdout is not None
        stream = json.loads(pub.stdout.readline())["stream"]
        recorder = None
        if not args.no_record:
            recorder = spawn(
                "bench.media.record_toggle", url, ROOM, token(Role.MODERATOR, "mod"),
                str(seconds + 10),
            )  # fmt: skip
            assert recorder.stdout is not None
            recorder.stdout.readline()
        time.sleep(3.0)  # the first keyframe (at most two seconds away in the clip)
        t0 = time.time() + 5  # minutes count from here, once every viewer is in
        tokens = ",".join(token(Role.AUDIENCE, f"v{i}") for i in range(args.subscribers))
        viewers = spawn(
            "bench.soak.viewers", url, ROOM, stream, str(t0), "--tokens", tokens,
            "--minutes", str(args.minutes),
        )  # fmt: skip
        per_minute: list[dict[str, Any]] = []
        lines_of(viewers, per_minute)
        annotator = spawn(
            "bench.soak.annotator", url, ROOM, token(Role.EXPERT, "ex"), f"{stream}.0",
            "--hz", str(args.annotate_hz), "--minutes", str(args.minutes),
        )  # fmt: skip
        drawn: list[dict[str, Any]] = []
        lines_of(annotator, drawn)
        samples = []
        cpu0 = cpu_seconds(server.pid)
        for minute in range(int(args.minutes)):
            time.sleep(max(0.0, t0 + (minute + 1) * 60 - time.time()))
            cpu1 = cpu_seconds(server.pid)
            sample = {
                "minute": minute,
                "rss_mib": round(rss_kib(server.pid) / 1024, 1),
                "open_files": open_files(server.pid),
                "server_cpu_pct": round((cpu1 - cpu0) / 60 * 100, 1),
                "load1": round(os.getloadavg()[0], 2),
            }
            cpu0 = cpu1
            samples.append(sample)
            print(json.dumps(sample), flush=True)
        viewers.wait(120)
        annotator.wait(120)
        pub.wait(seconds + 120)
        if recorder is not None:
            recorder.wait(60)
        sends = json.loads((tmp / "pub.json").read_text())
        report = summarize(args, t0, sends, per_minute, samples, drawn, tmp / "data")
    finally:
        for p in reversed(started):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
    out = args.out or RESULTS / f"soak-{int(time.time())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "minutes"}, indent=1))
    print(f"written to {out}")
    return 0 if report["ok"] else 1


def summarize(
    args: argparse.Namespace,
    t0: float,
    sends: list[tuple[str, float]],
    per_minute: list[dict[str, Any]],
    samples: list[dict[str, Any]],
    drawn: list[dict[str, Any]],
    data: Path,
) -> dict[str, Any]:
    """Frames delivered per minute per viewer against frames sent, and growth of the server."""
    minutes = []
    worst = 1.0
    lost_minutes = 0
    for line in per_minute:
        if "minute" not in line:
            continue
        k = line["minute"]
        sent = sum(1 for _, t in sends if t0 + 60 * k <= t < t0 + 60 * (k + 1))
        got = line["video"]
        short = [sent - g for g in got if g < sent - EDGE]
        lost_minutes += bool(short)
        worst = min(worst, min(got) / sent if sent else 0.0)
        sample = next((s for s in samples if s["minute"] == k), {})
        minutes.append({**sample, "sent": sent, "received": got, "audio": line["audio"]})
    base = next((s for s in samples if s["minute"] == 4), samples[0] if samples else None)
    growth_rss = growth_files = 0.0
    if base is not None and samples:
        growth_rss = max(s["rss_mib"] for s in samples[4:] or samples) / base["rss_mib"] - 1
        growth_files = max(s["open_files"] for s in samples[4:] or samples) / base["open_files"] - 1
    files = sorted(p for p in data.glob("recordings/*/*/*") if p.suffix in (".webm", ".mkv"))
    report = {
        "command": "python -m bench.soak.run " + " ".join(sys.argv[1:]),
        "commit": args.commit,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "minutes_run": len(minutes),
        "subscribers": args.subscribers,
        "video": f"{args.size} {args.fps} fps VP8 {args.bitrate / 1e6:g} Mbit/s + Opus",
        "worst_minute_delivered": round(worst, 4),
        "minutes_with_loss": lost_minutes,
        "rss_growth_after_5_min": round(growth_rss, 3),
        "open_files_growth_after_5_min": round(growth_files, 3),
        "load1_mean": round(sum(s["load1"] for s in samples) / max(1, len(samples)), 2),
        "server_cpu_pct_mean": round(
            sum(s["server_cpu_pct"] for s in samples) / max(1, len(samples)), 1
        ),
        "annotator": drawn[-1] if drawn else None,
        "recorded_files": [(p.name, p.stat().st_size) for p in files],
        "minutes": minutes,
    }
    report["ok"] = bool(
        minutes
        and lost_minutes == 0
        and growth_rss < 0.10
        and growth_files < 0.10
        and report["annotator"]
        and report["annotator"].get("errors") == 0
    )
    return report


if __name__ == "__main__":
    sys.exit(main())
