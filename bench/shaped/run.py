"""Viewers on links of their own under one simulcast stream, second by second: what each decodes
when one link narrows and widens again, or loses and delays packets.

Usage (as root: it makes network namespaces):
    python -m bench.shaped.run --scenario narrow   # 3 viewers; one link at 1 Mbit/s for 30 s
    python -m bench.shaped.run --scenario lossy    # 1 viewer; 10 % loss, 100 ms round trip
    python -m bench.shaped.run --scenario cpu      # server CPU, 1 and 8 viewers, layers or not

One `teleconsult serve`; a publisher in this process sending a pre-encoded clip (the stamped
synthetic ultrasound) as three VP8 layers, 1280x720 at 1.8 Mbit/s, 640x360 at 500 kbit/s and
320x180 at 150 kbit/s, 30 frames/s, a keyframe a second (tests/simulcast_util.py); each viewer
a process in a network namespace of its own (bench/shaped/viewer.py), decoding every picture
and checking its stamp. A narrowed link is `tc tbf` on the server's end of the viewer's veth
pair; loss and delay are made in the viewer's process (this kernel has no netem). The cpu
scenario runs on 127.0.0.1 with non-decoding viewers (bench/media/subscribers.py), all on the
full size, and measures the server's CPU with the three layers coming in and, in turn in the
same run, with the full size alone as a plain stream. Writes the per-second lines and a
summary to --out (bench/results/) and prints the summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from teleconsult.client.signaling import SignalingClient
from teleconsult.media.aioice_adapter import use_host_addresses
from teleconsult.session.roles import Role
from teleconsult.signaling.tokens import mint
from tests.netns import Namespace, namespace
from tests.simulcast_util import FPS, NARROW_LINK, RATED_LAYERS, SimulcastPublisher

from ..common import cpu_seconds, free_port, serve

SECRET = "shaped-secret-shaped-secret-shaped-0123"
ROOM = "shaped"
RESULTS = Path(__file__).resolve().parent.parent / "results"
CLIP = 90  # frames: 3 s, looped
GOP = 30
# The narrow scenario: seconds of a good link, narrowed, and good again.
BEFORE, NARROWED, AFTER = 10, 30, 20
LOSSY_S = 60
LOSS, DELAY = 0.10, 0.05
# The cpu scenario: viewers per point, rounds of every point, seconds to settle and to measure.
CPU_VIEWERS, CPU_ROUNDS, SETTLE_S, MEASURE_S = (1, 8), 2, 6, 20


async def viewer(
    ns: Namespace, port: int, stream: str, who: str, t0: float, seconds: int, *shaping: str
) -> list[dict[str, Any]]:
    """Run one viewer in its namespace; return its per-second lines."""
    token = mint(SECRET, ROOM, Role.AUDIENCE, who, 3600, who)
    argv = ns.command(
        [sys.executable, "-m", "bench.shaped.viewer", f"ws://{ns.host}:{port}/ws", ROOM, stream,
         token, ns.address, str(t0), "--seconds", str(seconds), "--clip", str(CLIP), *shaping]
    )  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    assert proc.stdout is not None
    lines = []
    try:
        async with asyncio.timeout(seconds + 60):
            async for raw in proc.stdout:
                line = json.loads(raw)
                if "t" in line:
                    lines.append(line)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    return lines


def share(lines: list[dict[str, Any]], start: int, end: int) -> float:
    """Pictures decoded in seconds [start, end) against those published."""
    got: int = sum(x["decoded"] for x in lines if start <= x["t"] < end)
    return round(got / (FPS * (end - start)), 4)


def summary_narrow(views: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """The narrowed viewer's pictures while narrowed and after; the others' throughout."""
    narrowed, *others = views
    cap, lift = BEFORE, BEFORE + NARROWED
    during = [x for x in narrowed if cap <= x["t"] < lift]
    settled = [x for x in during if x["t"] >= cap + 3]
    back = next(
        (x["t"] - lift + 1 for x in narrowed if x["t"] >= lift and x["width"] == 1280), None
    )
    return {
        "narrowed": {
            "decoded_share_while_narrowed": share(narrowed, cap, lift),
            "decoded_share_from_3_s_after": share(narrowed, cap + 3, lift),
            "corrupted_while_narrowed": sum(x["corrupted"] for x in during),
            "corrupted_from_3_s_after": sum(x["corrupted"] for x in settled),
            "widths_from_3_s_after": sorted({x["width"] for x in settled}),
            "longest_still_s": max(x["still_s"] for x in during),
            "full_size_again_after_s": back,
            "decoded_share_after": share(narrowed, lift + 10, lift + AFTER),
        },
        "others": [
            {
                "decoded_share": share(v, 2, cap + NARROWED + AFTER),
                "corrupted": sum(x["corrupted"] for x in v if x["t"] >= 2),
                "widths": sorted({x["width"] for x in v if x["t"] >= 2}),
                "kbps_mean": round(sum(x["kbps"] for x in v[2:]) / max(1, len(v[2:]))),
                "kbps_min": min(x["kbps"] for x in v[2:]),
            }
            for v in others
        ],
    }


def summary_lossy(views: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """The lossy viewer's pictures after its first seconds."""
    (lines,) = views
    settled = [x for x in lines if x["t"] >= 5]
    return {
        "decoded_share": share(lines, 5, LOSSY_S),
        "corrupted": sum(x["corrupted"] for x in settled),
        "longest_still_s": max(x["still_s"] for x in settled),
        "widths": sorted({x["width"] for x in settled}),
        "kbps_mean": round(sum(x["kbps"] for x in settled) / max(1, len(settled))),
    }


async def run(scenario: str) -> dict[str, Any]:
    count = 3 if scenario == "narrow" else 1
    seconds = BEFORE + NARROWED + AFTER if scenario == "narrow" else LOSSY_S
    shaping = ["--loss", str(LOSS), "--delay", str(DELAY)] if scenario == "lossy" else []
    tmp = Path(tempfile.mkdtemp(prefix="tc-shaped-"))
    port = free_port()
    with namespace(11) as first, namespace(12) as second, namespace(13) as third:
        spaces = [first, second, third][:count]
        for ns in spaces:
            ns.inside("ip", "route", "add", "default", "via", ns.host)
        # Every viewer reaches the one announced address through its own link.
        server = serve(port, SECRET, tmp / "data", "--host", "0.0.0.0", "--announce", first.host)
        use_host_addresses([first.host])
        sig = SignalingClient(
            f"ws://{first.host}:{port}/ws",
            mint(SECRET, ROOM, Role.OPERATOR, "op", 3600, "op"),
            ROOM,
        )
        publisher = SimulcastPublisher(sig, layers=RATED_LAYERS, frames=CLIP, gop=GOP)
        try:
            await sig.connect()
            stream = await publisher.publish()
            await asyncio.sleep(2)
            t0 = time.time() + 6  # seconds count from here, once every viewer is in
            views = asyncio.gather(
                *(
                    viewer(ns, port, stream, f"v{i}", t0, seconds, *shaping)
                    for i, ns in enumerate(spaces)
                )
            )
            cpu0, wall0 = cpu_seconds(server.pid), time.monotonic()
            if scenario == "narrow":
                await asyncio.sleep(t0 + BEFORE - time.time())
                with first.shaped(*NARROW_LINK):
                    await asyncio.sleep(t0 + BEFORE + NARROWED - time.time())
            results = await views
            cpu_pct = (cpu_seconds(server.pid) - cpu0) / (time.monotonic() - wall0) * 100
        finally:
            await publisher.close()
            await sig.close()
            use_host_addresses(None)
            server.terminate()
            server.wait(timeout=10)
    summary = summary_narrow(results) if scenario == "narrow" else summary_lossy(results)
    return {
        "scenario": scenario,
        "summary": summary,
        "server_cpu_pct": round(cpu_pct, 1),
        "frames_sent": publisher.frames_sent,
        "load1": os.getloadavg()[0],
        "seconds": results,
    }


async def cpu_point(server: int, port: int, simulcast: bool, viewers: int) -> dict[str, Any]:
    """Server CPU with `viewers` non-decoding viewers of one publisher, layered or not."""
    sig = SignalingClient(
        f"ws://127.0.0.1:{port}/ws", mint(SECRET, ROOM, Role.OPERATOR, "op", 3600, "op"), ROOM
    )
    layers = RATED_LAYERS if simulcast else {"f": RATED_LAYERS["f"]}
    publisher = SimulcastPublisher(sig, layers=layers, frames=CLIP, gop=GOP, simulcast=simulcast)
    log = Path(tempfile.mkdtemp(prefix="tc-shaped-cpu-")) / "viewers.json"
    tokens = ",".join(mint(SECRET, ROOM, Role.AUDIENCE, f"v{i}", 3600, f"v{i}")
                      for i in range(viewers))  # fmt: skip
    proc = None
    try:
        await sig.connect()
        stream = await publisher.publish()
        await asyncio.sleep(1)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.media.subscribers", f"ws://127.0.0.1:{port}/ws", ROOM,
            stream, str(log), "--tokens", tokens, "--duration", str(SETTLE_S + MEASURE_S + 1),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        async with asyncio.timeout(60):
            await proc.stdout.readline()  # {"subscribed": n}
        await asyncio.sleep(SETTLE_S)
        cpu0, wall0, sent0 = cpu_seconds(server), time.monotonic(), publisher.frames_sent
        await asyncio.sleep(MEASURE_S)
        cpu = (cpu_seconds(server) - cpu0) / (time.monotonic() - wall0) * 100
        sent = publisher.frames_sent - sent0
        async with asyncio.timeout(60):
            await proc.wait()
        got = [v["video_frames"] for v in json.loads(log.read_text())]
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        await publisher.close()
        await sig.close()
    return {
        "simulcast": simulcast,
        "viewers": viewers,
        "server_cpu_pct": round(cpu, 1),
        "frames_sent_in_window": sent,
        # Over the viewers' whole subscription, against the frames of that span.
        "frames_per_viewer_min": min(got),
        "load1": os.getloadavg()[0],
    }


async def run_cpu() -> dict[str, Any]:
    """Server CPU at each point, layered and plain in turn, every point CPU_ROUNDS times."""
    tmp = Path(tempfile.mkdtemp(prefix="tc-shaped-"))
    port = free_port()
    server = serve(port, SECRET, tmp / "data")
    use_host_addresses(["127.0.0.1"])
    points = []
    try:
        for _ in range(CPU_ROUNDS):
            for viewers in CPU_VIEWERS:
                for simulcast in (True, False):
                    points.append(await cpu_point(server.pid, port, simulcast, viewers))
                    print(json.dumps(points[-1]), flush=True)
    finally:
        use_host_addresses(None)
        server.terminate()
        server.wait(timeout=10)

    def mean(simulcast: bool, viewers: int) -> float:
        xs = [float(p["server_cpu_pct"]) for p in points
              if p["simulcast"] == simulcast and p["viewers"] == viewers]  # fmt: skip
        return sum(xs) / len(xs)

    low, high = CPU_VIEWERS
    summary = {
        name: {
            **{f"cpu_pct_{v}_viewers": round(mean(simulcast, v), 1) for v in CPU_VIEWERS},
            "per_viewer_pct": round(
                (mean(simulcast, high) - mean(simulcast, low)) / (high - low), 2
            ),
        }
        for name, simulcast in (("simulcast", True), ("plain", False))
    }
    return {"scenario": "cpu", "summary": summary, "points": points}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", choices=["narrow", "lossy", "cpu"], default="narrow")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    load_before = os.getloadavg()[0]
    measured = run_cpu() if args.scenario == "cpu" else run(args.scenario)
    report = {"commit": commit, "load1_before": load_before, **asyncio.run(measured)}
    out = args.out or RESULTS / f"shaped-{args.scenario}-{int(time.time())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k not in ("seconds", "points")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
