"""Stray datagrams on every UDP port of a live session: the picture goes on, nothing is logged
as a traceback, and what is dropped is counted."""

from __future__ import annotations

import contextlib
import json
import random
import re
import select
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aioice import stun
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from .test_media_port import free_port

# The datagram that cut a live ultrasound feed (issue 12): an empty UDP datagram to an ICE
# port reached aiortc's DTLS transport, whose receive loop ended on `data[0]`; publisher and
# subscriber legs failed at once and the stream was removed.
REGRESSION = b""


class LiveSession:
    """tests/live_session.py in a process of its own, asked how it is after each batch."""

    def __init__(self, folder: Path, shared: list[int]) -> None:
        self.folder = folder
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.live_session", str(folder), *map(str, shared)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).parent.parent,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        info = json.loads(self._line(60))
        self.ports: list[int] = info["ports"]
        self.ufrags: list[str] = info["ufrags"]
        self.ssrcs: list[int] = info["ssrcs"]
        self.metrics_url: str = info["metrics"]
        self.tcp: list[int] = info["tcp"]  # the ICE-TCP port, when the node shares its ports

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "the live session did not answer"
        line = self.proc.stdout.readline()
        assert line, f"the live session ended; see {self.folder / 'session.log'}"
        return line

    def ask(self) -> dict[str, Any]:
        """Return the session's state: healthy, frames decoded, datagrams dropped by kind."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("?\n")
        self.proc.stdin.flush()
        return dict(json.loads(self._line(10)))

    def frames_after(self, count: int, timeout: float) -> tuple[int, int]:
        """Wait for `count` more decoded frames; return (frames before, frames now)."""
        start = self.ask()["frames"]
        deadline = time.monotonic() + timeout
        now = start
        while now < start + count and time.monotonic() < deadline:
            time.sleep(0.2)
            now = self.ask()["frames"]
        return start, now

    def tracebacks(self) -> list[str]:
        """Return the log lines that start a traceback."""
        text = (self.folder / "session.log").read_text(errors="replace")
        return [line for line in text.splitlines() if "Traceback" in line]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture(scope="module", params=["own", "shared"])
def live(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[LiveSession]:
    # "own": a port per connection; "shared": the node's one UDP media port (media/demux.py),
    # and its ICE-TCP port.
    shared = [free_port(), free_port()] if request.param == "shared" else []
    session = LiveSession(tmp_path_factory.mktemp("fuzz"), shared)
    try:
        _, frames = session.frames_after(5, 10)
        assert frames >= 5, "no picture before the attack"
        yield session
    finally:
        session.close()


def seeds(ufrags: list[str], ssrcs: list[int]) -> list[bytes]:
    """Well-formed datagrams of every kind a media port can see, without valid credentials."""
    out: list[bytes] = []
    for ufrag in ufrags:
        check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        check.attributes.update(
            {
                "USERNAME": f"{ufrag}:peer",
                "PRIORITY": 1,
                "ICE-CONTROLLING": 7,
                "USE-CANDIDATE": None,
            }
        )
        check.add_message_integrity(b"not-the-password")
        check.add_fingerprint()
        out.append(bytes(check))
    for method in (
        stun.Method.BINDING,
        stun.Method.ALLOCATE,
        stun.Method.REFRESH,
        stun.Method.CHANNEL_BIND,
        stun.Method.CREATE_PERMISSION,
    ):
        for cls in stun.Class:
            m = stun.Message(method, cls)
            m.attributes["XOR-MAPPED-ADDRESS"] = ("127.0.0.1", 9)
            m.attributes["NONCE"] = b"0-0"
            m.attributes["LIFETIME"] = 600
            out.append(bytes(m))
    for content in (20, 21, 22, 23):  # change cipher spec, alert, handshake, application data
        body = bytes(range(40))
        out.append(struct.pack("!BHHIHH", content, 0xFEFD, 1, 0, 7, len(body)) + body)
    for ssrc in [*ssrcs, 0x12345678]:
        for pt in (96, 97, 111, 127):
            out.append(struct.pack("!BBHII", 0x80, pt, 65535, 3000, ssrc) + b"\x90" + bytes(30))
        # Extension header whose length field reaches past the packet.
        out.append(struct.pack("!BBHIIHH", 0x90, 96, 1, 1, ssrc, 0xBEDE, 40) + bytes(8))
        for rtcp in (200, 201, 202, 203, 205, 206):
            out.append(struct.pack("!BBHII", 0x81, rtcp, 3, ssrc, ssrc) + bytes(8))
    out.append(struct.pack("!HH", 0x4001, 20) + bytes(20))  # TURN ChannelData
    return out


@st.composite
def datagrams(draw: st.DrawFn, corpus: list[bytes]) -> bytes:
    """A seed datagram with flips, truncation, lying 16-bit fields or extra bytes."""
    data = bytearray(draw(st.sampled_from(corpus)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "cut", "field", "grow", "byte0"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[draw(st.integers(0, len(data))) :]
        elif op == "field" and len(data) >= 2:
            i = draw(st.integers(0, len(data) - 2))
            data[i : i + 2] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
        elif op == "grow":
            data += draw(st.binary(max_size=64))
        elif op == "byte0" and data:
            data[0] = draw(st.integers(0, 255))
    return bytes(data)


EXAMPLES = 400
PER_EXAMPLE = 50  # 400 x 50 = 20,000 datagrams, each to every port


def test_mutated_datagrams_on_every_port_leave_the_picture(live: LiveSession) -> None:
    corpus = seeds(live.ufrags, live.ssrcs)
    # The publisher's and subscriber's ICE ports (one, shared), and TURN's.
    assert len(live.ports) >= (2 if live.tcp else 3)
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = 0
    first = live.ask()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        phases=[Phase.generate],  # one live session: a failure ends it, shrinking cannot help
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(st.lists(datagrams(corpus), min_size=PER_EXAMPLE, max_size=PER_EXAMPLE))
    def attack(batch: list[bytes]) -> None:
        nonlocal sent
        for data in batch:
            for port in live.ports:
                out.sendto(data, ("127.0.0.1", port))
            sent += 1
        assert live.ask()["healthy"], "the stream or the subscription was removed"

    try:
        attack()
    finally:
        out.close()
    assert sent >= EXAMPLES * PER_EXAMPLE
    # The expert's picture goes on: frames keep arriving after the attack.
    mark, now = live.frames_after(30, 10)
    assert now >= mark + 30 and mark > first["frames"]
    assert not live.tracebacks()
    dropped = live.ask()["dropped"]
    assert {"empty", "stun", "rtp", "channeldata", "unknown"} <= set(dropped), dropped


def test_the_datagram_that_cut_the_feed_is_dropped(live: LiveSession) -> None:
    before = live.ask()["dropped"].get("empty", 0)
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for port in live.ports:
            out.sendto(REGRESSION, ("127.0.0.1", port))
    finally:
        out.close()
    state = live.ask()
    assert state["healthy"]
    # Each ICE port (both, or the one shared) drops it; TURN drops its own.
    assert state["dropped"]["empty"] >= before + len(live.ports) - 1
    mark, now = live.frames_after(10, 5)
    assert now >= mark + 10
    assert not live.tracebacks()
    with urllib.request.urlopen(live.metrics_url, timeout=5) as r:
        metrics = r.read().decode()
    count = re.search(
        r'^teleconsult_media_dropped_datagrams_total\{kind="empty"\} (\S+)$', metrics, re.M
    )
    assert count is not None and float(count.group(1)) >= state["dropped"]["empty"]


def test_random_datagrams_from_many_sources(live: LiveSession) -> None:
    rng = random.Random(12)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
    try:
        for i in range(2000):
            data = rng.randbytes(rng.randrange(0, 200))
            socks[i % 8].sendto(data, ("127.0.0.1", live.ports[i % len(live.ports)]))
    finally:
        for s in socks:
            s.close()
    assert live.ask()["healthy"]
    assert not live.tracebacks()


@pytest.mark.parametrize("live", ["shared"], indirect=True)
def test_nonsense_on_the_tcp_media_port(live: LiveSession) -> None:
    """Framed junk, forged checks naming the live connections, lengths past the end: each TCP
    connection is closed or ignored, and the picture goes on."""
    corpus = seeds(live.ufrags, live.ssrcs)
    (port,) = live.tcp
    first = live.ask()

    @settings(
        max_examples=100,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(st.lists(datagrams(corpus), min_size=1, max_size=8), st.integers(0, 3))
    def attack(frames: list[bytes], cut: int) -> None:
        stream = b"".join(len(f).to_bytes(2, "big") + f for f in frames)
        if cut:  # a frame announced longer than what follows
            stream += (1000 * cut).to_bytes(2, "big") + bytes(cut)
        # Closed by the node mid-way (after four frames that are no valid check): as good.
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as conn,
            contextlib.suppress(OSError),
        ):
            conn.sendall(stream)
        assert live.ask()["healthy"], "the stream or the subscription was removed"

    attack()
    mark, now = live.frames_after(30, 10)
    assert now >= mark + 30 and mark > first["frames"]
    assert not live.tracebacks()
