"""A case conference on one node: voices by loudness and video by need, beside the same room
forwarding every track, in one run.

Usage: python -m bench.conference.run [--audience 100] [--experts 15] [--cameras 3]
       [--minutes 2] [--procs 4] [--phases need,all] [--probe 1920x1080]
       [--probe-bitrate 4000000] [--out FILE]

Each phase starts its own `teleconsult serve` (the "all" phase with `--loudest-voices 0`, its
listeners pausing nothing), the speakers (bench.conference.speakers: the operator's 1080p probe,
720p room camera and microphone; the experts' microphones and cameras, talking to a script) and
the audience (bench.conference.audience, --procs processes). Measured from the script's start:
the server's CPU (its media workers included), what it sent (the bytes the listeners received
on loopback), the probe's frame rate at every listener, whether each listener got exactly the
three loudest voices midway through every step, and how soon a new speaker reached it.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from teleconsult.session.roles import Role
from teleconsult.signaling.tokens import mint

from ..common import free_port, metric_sums, serve, stop, tree_cpu_seconds

SECRET = "conference-secret-conference-secret-0123"
PY = sys.executable
RESULTS = Path(__file__).resolve().parent.parent / "results"
ROOM = "case-conference"
DOWN = ("packets", "retransmits", "repeats_ignored", "plis", "held_packets")


def percentile_ms(values: list[float], q: float) -> int | None:
    """The q-th percentile (nearest rank) of seconds, in milliseconds; None if none."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * 1000)


def read_lines(proc: subprocess.Popen[str], into: list[dict[str, Any]]) -> threading.Thread:
    """Collect a child's JSON lines as they come."""

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                into.append(json.loads(line))

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def wait_for(lines: list[dict[str, Any]], key: str, count: int, seconds: float) -> None:
    """Wait until `count` lines carry `key`, or raise TimeoutError."""
    deadline = time.time() + seconds
    while sum(key in x for x in lines) < count:
        if time.time() > deadline:
            raise TimeoutError(f"{key}: {sum(key in x for x in lines)} of {count}")
        time.sleep(0.2)


# Where audience process k runs: the command line that runs argv there, and its address.
Place = Callable[[int, list[str]], tuple[list[str], str]]


def phase(
    args: argparse.Namespace,
    name: str,
    tmp: Path,
    host: str = "127.0.0.1",
    place: Place | None = None,
) -> dict[str, Any]:
    """Run one room for the script's length; return what was measured.

    The server and the speakers use `host`; the audience too, unless `place` puts a process
    elsewhere (a test's network namespace behind a narrow link).
    """
    port = free_port()
    url = f"ws://{host}:{port}/ws"
    extra = ["--loudest-voices", "0"] if name == "all" else []
    started: list[subprocess.Popen[Any]] = []
    readers: list[threading.Thread] = []

    def token(role: Role, who: str) -> str:
        return mint(SECRET, ROOM, role, who, 24 * 3600, who)

    def spawn(*argv: str, k: int = -1) -> subprocess.Popen[str]:
        command, address = [PY, "-m", *argv], host
        if place is not None and k >= 0:
            command, address = place(k, command)
        with (tmp / f"{name}-{len(started)}.err").open("w") as errors:
            p = subprocess.Popen(
                [*command, "--address", address], stdout=subprocess.PIPE, stderr=errors, text=True
            )
        started.append(p)
        return p

    server = serve(port, SECRET, tmp / name, *extra, log=tmp / f"{name}.log", host=host)
    started.append(server)
    seconds = args.minutes * 60
    # Time to publish, then for every listener to subscribe to every stream.
    lead = 20 + args.audience * (args.experts + 1) * 0.03
    t0 = time.time() + lead
    try:
        tokens = [token(Role.OPERATOR, "op")]
        tokens += [token(Role.EXPERT, f"e{i}") for i in range(args.experts)]
        speakers = spawn(
            "bench.conference.speakers", url, ROOM, str(t0), "--tokens", ",".join(tokens),
            "--cameras", str(args.cameras), "--duration", str(seconds),
            "--probe", args.probe, "--probe-bitrate", str(args.probe_bitrate),
        )  # fmt: skip
        said: list[dict[str, Any]] = []
        readers.append(read_lines(speakers, said))
        wait_for(said, "streams", 1, 60)
        heard: list[dict[str, Any]] = []
        procs = []
        for k in range(args.procs):
            names = [f"a{i}" for i in range(k, args.audience, args.procs)]
            if not names:
                continue
            listeners = spawn(
                "bench.conference.audience", url, ROOM, str(t0),
                "--tokens", ",".join(token(Role.AUDIENCE, n) for n in names),
                "--duration", str(seconds), "--experts", str(args.experts),
                *(["--all"] if name == "all" else []), k=k,
            )  # fmt: skip
            procs.append(listeners)
            readers.append(read_lines(procs[-1], heard))
        try:
            wait_for(heard, "joined", len(procs), lead + 60)
        except TimeoutError:
            for err in sorted(tmp.glob(f"{name}-*.err")):
                print(err.name, err.read_text()[-2000:], file=sys.stderr)
            raise
        joined_late = max(x["at"] for x in heard if "joined" in x) - t0
        time.sleep(max(0.0, t0 - time.time()))
        cpu0, load0 = tree_cpu_seconds(server.pid), os.getloadavg()[0]
        clients0 = sum(tree_cpu_seconds(p.pid) for p in [speakers, *procs])
        # The counters while every listener is still there (they leave at the end).
        time.sleep(max(0.0, t0 + seconds - 1 - time.time()))
        down = metric_sums(
            f"http://{host}:{port}", *(f"teleconsult_media_down_{k}_total" for k in DOWN)
        )
        time.sleep(max(0.0, t0 + seconds - time.time()))
        cpu1, load1 = tree_cpu_seconds(server.pid), os.getloadavg()[0]
        clients1 = sum(tree_cpu_seconds(p.pid) for p in [speakers, *procs])
        wait_for(heard, "listeners", len(procs), 120)
        wait_for(said, "sent", 1, 60)
    finally:
        stop(started)
        for reader in readers:
            reader.join(10)  # the pipe's end came with the process's
        for p in started:
            if p.stdout is not None:
                p.stdout.close()
    found = [x for line in heard if "listeners" in line for x in line["listeners"]]
    latencies = [v for f in found for v in f["onset_latency"]]
    reached = [v for v in latencies if v != float("inf")]
    steps = sum(f["steps"] for f in found)
    return {
        "phase": name,
        "listeners": len(found),
        "joined_after_start_s": round(joined_late, 1),
        "server_cpu_pct": round((cpu1 - cpu0) / seconds * 100, 1),
        "clients_cpu_pct": round((clients1 - clients0) / seconds * 100, 1),
        "load1_start": round(load0, 2),
        "load1_end": round(load1, 2),
        "sent_mbit_s": round(sum(f["bytes"] for f in found) * 8 / seconds / 1e6, 1),
        "voice_packets_s": round(sum(f["voice_packets"] for f in found) / seconds),
        "probe_fps_min": min((f["probe_fps_min"] for f in found), default=0),
        # Of 30 a second sent over the script's length, at the listener that got fewest.
        "probe_frames_min": min((f["probe_frames"] for f in found), default=0),
        "probe_frames_sent": int(30 * seconds),
        "exact_top3": f"{sum(f['exact_top3'] for f in found)}/{steps}",
        "third_voice_packets": sum(f["third_packets"] for f in found),
        "most_voices_at_once": max((f["most_voices_at_once"] for f in found), default=0),
        "new_speaker_ms_p50": percentile_ms(reached, 50),
        "new_speaker_ms_p95": percentile_ms(reached, 95),
        "new_speaker_ms_max": percentile_ms(reached, 100),
        "new_speaker_missed": len(latencies) - len(reached),
        # What the server sent its subscribers, all told: copies, retransmissions, keyframe
        # requests, and copies held back while it could not keep up.
        **{f"down_{k}": int(down[f"teleconsult_media_down_{k}_total"]) for k in DOWN},
        "voices_sent": next((x["sent"] for x in said if "sent" in x), {}),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--audience", type=int, default=100)
    ap.add_argument("--experts", type=int, default=15)
    ap.add_argument("--cameras", type=int, default=3)
    ap.add_argument("--minutes", type=float, default=2)
    ap.add_argument("--procs", type=int, default=4, help="processes the audience is packed in")
    ap.add_argument("--phases", default="need,all")
    ap.add_argument("--probe", default="1920x1080", help="the probe's size")
    ap.add_argument("--probe-bitrate", type=int, default=4_000_000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.experts < 7:
        ap.error("--experts: at least 7, for three distinct speakers besides the chair")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    out = args.out or RESULTS / f"conference-{int(time.time())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="tc-conference-") as tmp:
        for name in args.phases.split(","):
            results.append(phase(args, name, Path(tmp)))
            print(json.dumps(results[-1]), flush=True)
    report = {
        "command": "python -m bench.conference.run " + " ".join(sys.argv[1:]),
        "commit": commit,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "audience": args.audience,
        "experts": args.experts,
        "cameras": args.cameras,
        "minutes": args.minutes,
        "phases": results,
    }
    out.write_text(json.dumps(report, indent=1))
    keys = [k for k in results[0] if k not in ("phase", "voices_sent")]
    print(f"{'':28}" + "".join(f"{r['phase']:>14}" for r in results))
    for k in keys:
        print(f"{k:28}" + "".join(f"{r[k]!s:>14}" for r in results))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
