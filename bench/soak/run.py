"""A whole session for a long time: is every frame delivered every minute, and does the server grow?

Usage: python -m bench.soak.run [--minutes 10] [--subscribers 8] [--size 1920x1080]
       [--bitrate 4000000] [--annotate-hz 5] [--no-record] [--out FILE] [--keep]

One `teleconsult serve`, a publisher replaying a pre-encoded VP8 clip with Opus audio, viewers
that count frames without decoding, an expert drawing, a moderator recording; all processes of
their own on 127.0.0.1. Every minute: frames each viewer got against frames sent, the server's
RSS, open files and CPU (its media workers included), and the machine's load. Exits 1 if a
minute lost frames or the server's RSS or open files grew by 10 % or more after the fifth
minute.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from teleconsult.session.roles import Role
from teleconsult.signaling.tokens import mint

from ..common import free_port, serve, stop, tree_cpu_seconds, tree_pids
from ..media.clip import vp8_clip

SECRET = "soak-secret-soak-secret-soak-secret-0123"
PY = sys.executable
RESULTS = Path(__file__).resolve().parent.parent / "results"
ROOM = "soak"
# Frames sent by the end of a minute and frames received by then differ by what was in flight
# when the minute turned: a frame or two on loopback; more is loss.
EDGE = 2


def rss_kib(pid: int) -> int:
    """Return the resident set in KiB of a process and its children (the media workers)."""
    total = 0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{p}/status").read_text().splitlines()
            total += sum(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return total


def open_files(pid: int) -> int:
    """Return how many file descriptors a process and its children (the media workers) hold."""
    total = 0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{p}/fd"))
    return total


def udp_drops(pids: dict[str, int]) -> dict[str, int]:
    """Return datagrams the kernel dropped so far because a socket's buffer was full, by owner.

    A process that does not read for a moment (its event loop held) loses what arrives beyond
    its buffer: this tells whose moment it was.
    """
    owner: dict[str, str] = {}
    for name, top in pids.items():
        for pid in tree_pids(top):  # the server's media sockets are its workers'
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    with contextlib.suppress(OSError):
                        link = os.readlink(f"/proc/{pid}/fd/{fd}")
                        if link.startswith("socket:["):
                            owner[link[8:-1]] = name
    drops = dict.fromkeys(pids, 0)
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                cols = row.split()
                if cols[9] in owner:
                    drops[owner[cols[9]]] += int(cols[-1])
    return drops


def rcvbuf_errors() -> int:
    """Return the datagrams this machine's kernel dropped so far for a full receive buffer."""
    rows = [
        r.split() for r in Path("/proc/net/snmp").read_text().splitlines() if r.startswith("Udp:")
    ]
    return int(rows[1][rows[0].index("RcvbufErrors")])


def lag_buckets(url: str) -> dict[float, float]:
    """Return the server's event-loop lag histogram so far (cumulative, by upper bound)."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    pattern = r'^teleconsult_event_loop_lag_seconds_bucket\{le="([^"]+)"\} (\S+)$'
    return {float(m[1]): float(m[2]) for m in re.finditer(pattern, text, re.M)}


def lag_of_minute(now: dict[float, float], before: dict[float, float]) -> dict[str, float]:
    """Looks of the minute 0.25 s late or more, and the bound under which all of them woke."""
    d = {b: n - before.get(b, 0.0) for b, n in now.items()}
    total = d.get(float("inf"), 0.0)
    return {
        "loop_late_looks": int(total - d.get(0.25, total)),
        "loop_lag_max_s": min((b for b, n in d.items() if n >= total), default=0.0),
    }


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
    ap.add_argument("--keep", action="store_true", help="keep the recording and the server's data")
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

    out = args.out or RESULTS / f"soak-{int(time.time())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".server.log")
    server = serve(port, SECRET, tmp / "data", log=log)
    started.append(server)
    seconds = args.minutes * 60
    try:
        pub = spawn(
            "bench.media.publisher", url, ROOM, token(Role.OPERATOR, "op"), str(tmp / "pub.json"),
            "--size", args.size, "--fps", str(args.fps), "--bitrate", str(args.bitrate),
            "--audio", "--source", "camera", "--duration", str(seconds + 30), "--heal",
        )  # fmt: skip
        assert pub.stdout is not None
        first = json.loads(pub.stdout.readline())
        stream = first.get("stream") or first["published"]
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
        pids = {"server": server.pid, "publisher": pub.pid, "viewers": viewers.pid}
        metrics = f"http://127.0.0.1:{port}/metrics"
        cpu0 = {k: tree_cpu_seconds(p) for k, p in pids.items()}
        drops0, lag0, kernel0 = udp_drops(pids), lag_buckets(metrics), rcvbuf_errors()
        # Wall clock against the monotonic one: a jump says the machine itself was paused
        # (a virtual machine snapshotted, say), which every connection sees as a silence.
        skew0 = time.time() - time.monotonic()
        for minute in range(int(args.minutes)):
            time.sleep(max(0.0, t0 + (minute + 1) * 60 - time.time()))
            cpu1 = {k: tree_cpu_seconds(p) for k, p in pids.items()}
            drops1, lag1, kernel1 = udp_drops(pids), lag_buckets(metrics), rcvbuf_errors()
            sample = {
                "minute": minute,
                "rss_mib": round(rss_kib(server.pid) / 1024, 1),
                "open_files": open_files(server.pid),
                "server_cpu_pct": round((cpu1["server"] - cpu0["server"]) / 60 * 100, 1),
                "cpu_pct": {k: round((cpu1[k] - cpu0[k]) / 60 * 100, 1) for k in pids},
                # By owner, of the sockets open at both ends of the minute; the machine's
                # count takes in those closed meanwhile (and any other process's).
                "udp_drops": {k: max(0, drops1[k] - drops0.get(k, 0)) for k in pids},
                "udp_drops_machine": kernel1 - kernel0,
                **lag_of_minute(lag1, lag0),
                "load1": round(os.getloadavg()[0], 2),
                "clock_jump_s": round(time.time() - time.monotonic() - skew0, 2),
            }
            cpu0, drops0, lag0, kernel0 = cpu1, drops1, lag1, kernel1
            skew0 = time.time() - time.monotonic()
            samples.append(sample)
            print(json.dumps(sample), flush=True)
        viewers.wait(120)
        annotator.wait(120)
        pub.wait(seconds + 120)
        if recorder is not None:
            recorder.wait(60)
        sends = json.loads((tmp / "pub.json").read_text())
        report = summarize(args, t0, sends, per_minute, samples, drawn, tmp / "data", out)
    finally:
        stop(started)
        if not args.keep:
            # A 2-hour run records gigabytes; the report holds what was measured of them.
            shutil.rmtree(tmp, ignore_errors=True)
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
    out: Path,
) -> dict[str, Any]:
    """Frames delivered per minute per viewer against frames sent, and growth of the server."""
    minutes = []
    worst = 1.0
    lost_minutes = 0
    lines = [line for line in per_minute if "minute" in line]
    sent_by: list[int] = []  # frames sent from the start to the end of each minute
    got_by: list[
        list[int]
    ] = []  # frames each viewer received from the start to the end of each minute
    for line in lines:
        k = line["minute"]
        sent = sum(1 for _, t in sends if t0 + 60 * k <= t < t0 + 60 * (k + 1))
        sent_by.append((sent_by[-1] if sent_by else 0) + sent)
        previous = got_by[-1] if got_by else [0] * len(line["video"])
        got_by.append([a + b for a, b in zip(previous, line["video"], strict=True)])
    for i, line in enumerate(lines):
        k = line["minute"]
        sent = sent_by[i] - (sent_by[i - 1] if i else 0)
        got = line["video"]
        # Lost: frames sent by the end of this minute and still missing a minute later. A
        # frame sent just before a minute's edge and received just after it is late, not lost.
        later = got_by[min(i + 1, len(got_by) - 1)]
        behind = [sent_by[i] - g for g in later]
        lost_minutes += any(b > EDGE for b in behind)
        worst = min(worst, min(got) / sent if sent else 0.0)
        sample = next((s for s in samples if s["minute"] == k), {})
        minutes.append(
            {
                **sample,
                "sent": sent,
                "received": got,
                "behind": behind,
                "audio": line["audio"],
                "resubscribed": line.get("resubscribed"),
            }
        )
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
        "resubscribed": per_minute[-2].get("resubscribed") if len(per_minute) > 1 else None,
        "server_log": str(out.with_suffix(".server.log")),
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
