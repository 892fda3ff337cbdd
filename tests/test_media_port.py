"""All of a node's media on one UDP port per media process (`--media-port`): the candidates
name it, nothing else is bound, and a publisher and two viewers share it with their pictures
arriving; stray datagrams on it change nobody's path."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from teleconsult.client.media import MediaClient
from teleconsult.client.signaling import SignalingClient
from teleconsult.media.aioice_adapter import use_host_addresses
from teleconsult.media.synthetic import UltrasoundTrack
from teleconsult.session.roles import Role
from teleconsult.signaling.tokens import mint

from .conftest import SECRET, server_process
from .media_util import StampViewer
from .need import executable

HOST = "127.0.0.1"


def token(role: Role, who: str) -> str:
    return mint(SECRET, "ward", role, who, 3600, who)


def free_pair() -> int:
    """A UDP port P with P+1 free as well (for two media workers)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
            a.bind((HOST, 0))
            port = int(a.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                try:
                    b.bind((HOST, port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no two free ports in a row")


def candidate_ports(sdp: str) -> set[int]:
    return {int(m) for m in re.findall(r"a=candidate:\S+ \d+ udp \d+ \S+ (\d+) typ", sdp)}


def tcp_candidate_ports(sdp: str) -> set[int]:
    found = re.findall(r"a=candidate:\S+ \d+ tcp \d+ \S+ (\d+) typ host tcptype passive", sdp)
    assert found, sdp
    return {int(m) for m in found}


def strange_tcp(port: int) -> None:
    """Talk nonsense to a TCP media port: it must hang up, and tie nothing."""
    forged = b"\x00\x01\x00\x0c" + bytes(16) + b"\x00\x06\x00\x08abcdefgh"
    frames = (b"\x80" + bytes(30), forged, b"\x17\xfe\xfd" + bytes(20), b"", bytes(4))
    data = b"".join(len(f).to_bytes(2, "big") + f for f in frames)
    with socket.create_connection((HOST, port), timeout=5) as conn:
        conn.sendall(data + b"\xff\xff" + bytes(10))  # and a frame that never ends
        # Closed by the node (reset, when it closed with our bytes unread).
        with contextlib.suppress(ConnectionResetError):
            assert conn.recv(100) == b""


def udp_ports_of(pids: list[int]) -> set[int]:
    """The local UDP ports these processes hold."""
    out = subprocess.run(
        [executable("ss"), "-uanpH"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    ports = set()
    for line in out.splitlines():
        if any(f"pid={pid}," in line for pid in pids):
            ports.add(int(line.split()[3].rsplit(":", 1)[1]))
    return ports


def children(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, timeout=10
    ).stdout
    return [int(x) for x in out.split()]


async def test_one_port_per_media_process_carries_every_connection(tmp_path: Path) -> None:
    port, tcp = free_pair(), free_pair()
    extra = ["--media-port", str(port), "--media-workers", "2", "--media-tcp-port", str(tcp)]
    with server_process(tmp_path / "data", *extra) as (http_port, proc):
        use_host_addresses([HOST])
        url = f"ws://{HOST}:{http_port}/ws"
        op = SignalingClient(url, token(Role.OPERATOR, "op"), "ward")
        experts = [SignalingClient(url, token(Role.EXPERT, f"ex{i}"), "ward") for i in range(2)]
        publisher = MediaClient(op)
        watchers = [MediaClient(e) for e in experts]
        viewers = [StampViewer() for _ in experts]
        tasks = []
        try:
            await op.connect()
            stream = await publisher.publish([(UltrasoundTrack(320, 240, 15), "probe", "")])
            assert stream.pc.remoteDescription is not None
            ports = candidate_ports(stream.pc.remoteDescription.sdp)
            for sig, media, viewer in zip(experts, watchers, viewers, strict=True):
                await sig.connect()
                sub = await media.subscribe(stream.id)
                assert sub.pc.remoteDescription is not None
                ports |= candidate_ports(sub.pc.remoteDescription.sdp)
                tasks.append(asyncio.ensure_future(viewer.watch(sub.tracks[f"{stream.id}.0"])))
            # Every candidate the node gave names one of its two media ports.
            assert ports and ports <= {port, port + 1}, ports
            for viewer in viewers:
                assert await viewer.back_after(time.time()) < 10
            # Stray datagrams from an address no check came from: dropped, nobody's path moves.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stray:
                for p in (port, port + 1):
                    for junk in (bytes([0x80, 96]) + bytes(40), b"\x00\x01\x00\x00" + bytes(16)):
                        stray.sendto(junk, (HOST, p))
            # And on the TCP port: junk, a length past the end, a check nobody signed.
            for p in (tcp, tcp + 1):
                await asyncio.to_thread(strange_tcp, p)
            for viewer in viewers:
                assert await viewer.back_after(time.time()) < 5
            # Every candidate offered a passive TCP path on the TCP ports.
            assert tcp_candidate_ports(stream.pc.remoteDescription.sdp) <= {tcp, tcp + 1}
            # The workers hold no other UDP port (the server process itself none for media).
            held = udp_ports_of(children(proc.pid))
            assert held <= {port, port + 1}, held
        finally:
            for task in tasks:
                task.cancel()
            for media in watchers:
                await media.close()
            await publisher.close()
            for sig in (*experts, op):
                await sig.close()
            use_host_addresses(None)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_media_port_in_use_stops_the_start_with_why(tmp_path: Path, workers: str) -> None:
    # With workers, the second one's port is the one taken: no worker left starting again.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((HOST, 0))
        port = taken.getsockname()[1]
        first = port if workers == "0" else port - 1
        done = subprocess.run(
            [
                str(Path(sys.executable).parent / "teleconsult"), "serve", "--port", "0",
                "--announce", HOST, "--media-port", str(first), "--media-workers", workers,
                "--turn-port", "-1", "--data-dir", str(tmp_path / "d"),
            ],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode != 0
    assert f"media port {HOST}:{port}" in done.stderr, done.stderr[-2000:]
