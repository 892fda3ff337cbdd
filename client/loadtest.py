"""`teleconsult loadtest`: rooms of publishers and viewers that do not decode, against a running
node, measured second by second (frames delivered, delay, loss, the node's CPU) and judged
against thresholds, as IT would before going live."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import ssl
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from aiortc import RTCConfiguration
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket
from tqdm import tqdm

from teleconsult.media.aioice_adapter import use_host_addresses
from teleconsult.media.aiortc_adapter import ForwardingReceiver, RelayPeerConnection

from .media import MediaClient
from .replay import KEY, ReplayTrack, vp8_clip
from .signaling import JoinRefused, SignalingClient

FPS = 30
# Frame size and bitrate of each --video choice (VP8, a keyframe every 2 s).
VIDEO = {
    "360p": (640, 360, 800_000),
    "720p": (1280, 720, 1_500_000),
    "1080p": (1920, 1080, 4_000_000),
}
CLIP_SECONDS = 10
# Seconds after the start that are not judged: every viewer's first keyframe is on its way.
WARMUP = 2


@dataclass
class Plan:
    """What to run, and what passes."""

    server: str
    admin_key: str
    rooms: int = 1
    publishers: int = 1
    viewers: int = 4
    duration: float = 30.0
    video: str = "720p"
    annotations: float = 0.0
    out: Path = Path(".")
    cache: Path | None = None
    tls: ssl.SSLContext | None = None
    address: str | None = None  # the address clients gather media on (None: every one)
    min_delivered: float | None = None  # share of the frames sent, at every viewer
    max_p95_ms: float | None = None
    max_loss: float | None = None  # share of packets
    max_cpu: float | None = None  # percent of one core, the node's processes together


class SendLog(dict[str, float]):
    """A publisher's frames by their identifying bytes: when each was last sent."""

    def append(self, item: tuple[str, float]) -> None:
        """Note a frame sent (ReplayTrack's log)."""
        self[item[0]] = item[1]


def vp8_frame_start(payload: bytes) -> int | None:
    """Where the frame's data begins in the first packet of a VP8 frame (RFC 7741), or None
    for any other packet."""
    if not payload or not payload[0] & 0x10 or payload[0] & 0x07:
        return None  # not the start of partition 0
    at = 1
    if payload[0] & 0x80:
        if len(payload) < 2:
            return None
        extension = payload[1]
        at = 2
        if extension & 0x80:  # a picture id, 7 or 15 bits
            if len(payload) <= at:
                return None
            at += 2 if payload[at] & 0x80 else 1
        if extension & 0x40:  # TL0PICIDX
            at += 1
        if extension & 0x30:  # TID and KEYIDX
            at += 1
    return at if at < len(payload) else None


@dataclass
class Stream:
    """What one viewer received of one publisher's video."""

    sent: SendLog
    frames: int = 0
    packets: int = 0
    first: int | None = None  # extended sequence numbers
    highest: int | None = None
    latencies: list[float] = field(default_factory=list)
    seen: dict[int, None] = field(default_factory=dict)

    def on_packet(self, packet: RtpPacket, codec: RTCRtpCodecParameters, layer: str = "") -> None:
        """Count a packet as it arrives, undecoded."""
        now = time.time()
        self.packets += 1
        seq = packet.sequence_number
        if self.highest is None or self.first is None:
            self.first = self.highest = seq
        else:
            ext = self.highest + ((seq - self.highest + 32768) % 65536 - 32768)
            self.highest = max(self.highest, ext)
        start = vp8_frame_start(packet.payload)
        if start is not None:
            sent = self.sent.get(packet.payload[start : start + KEY].hex())
            if sent is not None:
                self.latencies.append(now - sent)
        if packet.marker and packet.timestamp not in self.seen:
            self.seen[packet.timestamp] = None
            if len(self.seen) > 64:
                del self.seen[next(iter(self.seen))]
            self.frames += 1

    @property
    def expected(self) -> int:
        """Packets sent to this viewer so far, by their numbering."""
        return 0 if self.first is None or self.highest is None else self.highest - self.first + 1


@dataclass
class Second:
    """One second of the run, all viewers together."""

    t: int
    frames: int
    expected_frames: int
    p50_ms: float | None
    p95_ms: float | None
    lost: int
    packets: int
    cpu: float | None  # percent of one core


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank), or None."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]


def node_cpu_seconds(server: str, tls: ssl.SSLContext | None) -> float | None:
    """The node's processes' CPU seconds so far, from its /metrics; None if it does not answer."""
    try:
        with urllib.request.urlopen(f"{server}/metrics", timeout=2, context=tls) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    found = re.findall(r"^teleconsult_process_cpu_seconds_total\{[^}]*\} (\S+)$", text, re.M)
    return sum(float(x) for x in found) if found else None


def mint(plan: Plan, room: str, role: str, name: str) -> str:
    """A token from the node's admin API."""
    request = urllib.request.Request(
        f"{plan.server}/api/rooms/{room}/tokens",
        data=json.dumps({"role": role, "name": name, "ttl": plan.duration + 600}).encode(),
        headers={"Authorization": f"Bearer {plan.admin_key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10, context=plan.tls) as answer:
            return str(json.load(answer)["token"])
    except OSError as e:
        raise ValueError(f"cannot get a token from {plan.server}: {e}") from None


class Run:
    """The clients of one load test and what they measured."""

    def __init__(self, plan: Plan) -> None:
        if plan.video not in VIDEO:
            raise ValueError(f"--video: one of {', '.join(VIDEO)}")
        self.plan = plan
        self.ws = re.sub(r"^http", "ws", plan.server) + "/ws"
        self.signals: list[SignalingClient] = []
        self.clients: list[MediaClient] = []
        self.streams: list[Stream] = []
        self.seconds: list[Second] = []
        self.tasks: list[asyncio.Future[None]] = []

    async def _join(self, room: str, role: str, name: str) -> tuple[SignalingClient, MediaClient]:
        token = await asyncio.to_thread(mint, self.plan, room, role, name)
        sig = SignalingClient(self.ws, token, room, tls=self.plan.tls)
        self.signals.append(sig)
        try:
            await sig.connect()
        except JoinRefused as e:
            more = (
                " (more --rooms, or the node's --max-participants)" if e.code == "room_full" else ""
            )
            raise ValueError(f"{name} of {room} was refused: {e.code}, {e.message}{more}") from None
        except OSError as e:
            raise ValueError(f"cannot reach {self.ws}: {e}") from None
        media = MediaClient(sig)
        self.clients.append(media)
        return sig, media

    async def start(self, clip: list[bytes]) -> None:
        """Publish in every room, then have every viewer subscribe to every publisher there."""
        plan = self.plan
        for r in range(plan.rooms):
            room = f"loadtest-{r}"
            published: list[tuple[str, SendLog]] = []
            for p in range(plan.publishers):
                _, media = await self._join(room, "operator", f"publisher {p}")
                log = SendLog()
                track = ReplayTrack("video", clip, FPS, 90000, log)
                stream = await media.publish([(track, "probe", f"load {p}")])
                published.append((stream.id, log))
            for v in range(plan.viewers):
                sig, media = await self._join(room, "expert", f"viewer {v}")
                for stream_id, log in published:
                    pc = RelayPeerConnection(RTCConfiguration(iceServers=[]))
                    await media.subscribe(stream_id, pc=pc)
                    counted = Stream(log)
                    self.streams.append(counted)
                    for t in pc.getTransceivers():
                        if isinstance(t.receiver, ForwardingReceiver):
                            t.receiver.on_packet = counted.on_packet
                if plan.annotations > 0 and published:
                    self.tasks.append(asyncio.ensure_future(self._point(sig, published[0][0])))

    async def _point(self, sig: SignalingClient, feed: str) -> None:
        """Move a pointer over a feed at the planned rate until the connection ends."""
        n = 0
        while not sig.closed:
            n += 1
            x = (n % 100) / 100
            with contextlib.suppress(Exception):
                await sig.send(
                    {"type": "annotate", "op": "pointer", "feed": feed, "points": [[x, 0.5]]}
                )
            await asyncio.sleep(1 / self.plan.annotations)

    async def measure(self) -> None:
        """Sample every second for the planned duration, with a progress bar."""
        plan = self.plan
        cpu0 = await asyncio.to_thread(node_cpu_seconds, plan.server, plan.tls)
        t0 = time.monotonic()
        last = (t0, cpu0)
        counted = [(s.frames, s.packets, s.expected) for s in self.streams]
        with tqdm(total=int(plan.duration), unit="s", desc="loadtest", leave=False) as bar:
            for second in range(int(plan.duration)):
                await asyncio.sleep(max(0.0, t0 + second + 1 - time.monotonic()))
                now = time.monotonic()
                cpu = await asyncio.to_thread(node_cpu_seconds, plan.server, plan.tls)
                share = None
                if cpu is not None and last[1] is not None:
                    share = (cpu - last[1]) / (now - last[0]) * 100
                last = (now, cpu if cpu is not None else last[1])
                latencies: list[float] = []
                frames = lost = packets = 0
                for i, s in enumerate(self.streams):
                    f0, p0, e0 = counted[i]
                    frames += s.frames - f0
                    packets += s.packets - p0
                    lost += max(0, (s.expected - e0) - (s.packets - p0))
                    counted[i] = (s.frames, s.packets, s.expected)
                    latencies += s.latencies
                    s.latencies = []
                p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
                self.seconds.append(
                    Second(
                        second + 1, frames, FPS * len(self.streams),
                        None if p50 is None else p50 * 1000, None if p95 is None else p95 * 1000,
                        lost, packets, share,
                    )
                )  # fmt: skip
                bar.update(1)
                bar.set_postfix(
                    frames=f"{frames}/{FPS * len(self.streams)}",
                    p95=f"{p95 * 1000:.0f}ms" if p95 is not None else "-",
                    cpu=f"{share:.0f}%" if share is not None else "-",
                )

    async def close(self) -> None:
        """Leave, each client given a bounded time (the node may be gone)."""
        for task in self.tasks:
            task.cancel()
        for media in self.clients:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(media.close(), 5)
        for sig in self.signals:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sig.close(), 5)


def summary(plan: Plan, seconds: list[Second]) -> list[tuple[str, str, str, str]]:
    """The table's rows: what, measured, threshold, verdict ("ok", "FAIL" or "")."""
    judged = [s for s in seconds if s.t > WARMUP] or seconds
    sent = sum(s.expected_frames for s in judged)
    delivered = sum(s.frames for s in judged) / sent if sent else 0.0
    packets = sum(s.packets + s.lost for s in judged)
    loss = sum(s.lost for s in judged) / packets if packets else 1.0
    p50s = [s.p50_ms for s in judged if s.p50_ms is not None]
    p95s = [s.p95_ms for s in judged if s.p95_ms is not None]
    cpus = [s.cpu for s in judged if s.cpu is not None]
    worst = min((s.frames / s.expected_frames for s in judged if s.expected_frames), default=0.0)
    p95 = max(p95s) if p95s else math.inf

    def verdict(ok: bool, limit: float | None) -> str:
        return "" if limit is None else ("ok" if ok else "FAIL")

    rows = [
        ("frames delivered", f"{delivered:.2%}", _limit(">=", plan.min_delivered, "%"),
         verdict(delivered >= (plan.min_delivered or 0), plan.min_delivered)),
        ("worst second", f"{worst:.2%}", "", ""),
        ("delay p50 (median second)", f"{percentile(p50s, 50) or math.inf:.0f} ms", "", ""),
        ("delay p95 (worst second)", f"{p95:.0f} ms", _limit("<=", plan.max_p95_ms, " ms"),
         verdict(p95 <= (plan.max_p95_ms or math.inf), plan.max_p95_ms)),
        ("packets lost", f"{loss:.2%}", _limit("<=", plan.max_loss, "%"),
         verdict(loss <= (plan.max_loss if plan.max_loss is not None else 1), plan.max_loss)),
        ("node CPU, mean", f"{sum(cpus) / len(cpus):.1f} %" if cpus else "unknown",
         _limit("<=", plan.max_cpu, " %"),
         verdict(bool(cpus) and sum(cpus) / len(cpus) <= (plan.max_cpu or math.inf), plan.max_cpu)),
        ("node CPU, highest second", f"{max(cpus):.1f} %" if cpus else "unknown", "", ""),
    ]  # fmt: skip
    return rows


def _limit(sign: str, value: float | None, unit: str) -> str:
    if value is None:
        return ""
    return f"{sign} {value:.0%}" if unit == "%" else f"{sign} {value:g}{unit}"


def table(rows: list[tuple[str, str, str, str]]) -> str:
    """The rows as aligned text."""
    head = ("", "measured", "threshold", "")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [head, *rows]
    ]
    return "\n".join(lines)


def plot(seconds: list[Second], path: Path, title: str) -> None:
    """Four panels over time: frames, delay, loss, the node's CPU."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("the plot needs matplotlib: pip install 'teleconsult[loadtest]'") from None
    t = [s.t for s in seconds]
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    axes[0].plot(t, [s.frames for s in seconds], label="delivered")
    axes[0].plot(t, [s.expected_frames for s in seconds], "--", label="sent")
    axes[0].set_ylabel("frames / s")
    axes[0].legend(loc="lower right")
    axes[1].plot(t, [s.p50_ms for s in seconds], label="p50")
    axes[1].plot(t, [s.p95_ms for s in seconds], label="p95")
    axes[1].set_ylabel("delay, ms")
    axes[1].legend(loc="upper right")
    axes[2].plot(t, [100 * s.lost / max(1, s.lost + s.packets) for s in seconds])
    axes[2].set_ylabel("packets lost, %")
    axes[3].plot(t, [s.cpu for s in seconds])
    axes[3].set_ylabel("node CPU, % of a core")
    axes[3].set_xlabel("seconds")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


async def run(plan: Plan) -> tuple[str, bool]:
    """Run the load test; return the report's text and whether every threshold held."""
    if plan.address is not None:
        use_host_addresses([plan.address])
    width, height, bitrate = VIDEO[plan.video]
    clip = await asyncio.to_thread(
        vp8_clip, width, height, FPS, bitrate, CLIP_SECONDS, 2 * FPS, plan.cache
    )
    test = Run(plan)
    try:
        await test.start(clip)
        await test.measure()
    finally:
        await test.close()
    rows = summary(plan, test.seconds)
    plan.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    title = (
        f"{plan.rooms} room(s), {plan.publishers} publisher(s) and {plan.viewers} viewer(s) each,"
        f" {plan.video}"
    )
    png = plan.out / f"loadtest-{stamp}.png"
    plot(test.seconds, png, title)
    raw = plan.out / f"loadtest-{stamp}.json"
    raw.write_text(
        json.dumps(
            {
                "plan": {k: v for k, v in vars(plan).items() if k not in ("admin_key", "tls")}
                | {"out": str(plan.out), "cache": str(plan.cache)},
                "seconds": [vars(s) for s in test.seconds],
                "summary": rows,
            },
            indent=1,
        )
    )
    text = f"{title}, {int(plan.duration)} s\n{table(rows)}\nplot: {png}\nraw: {raw}"
    return text, all(r[3] != "FAIL" for r in rows)
