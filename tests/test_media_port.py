"""All of a node's media on one UDP port and one TCP port (`--media-port`,
`--media-tcp-port`), across its media workers: the candidates name them, nothing else is
bound, and publishers and viewers on both workers share them with their pictures arriving;
stray datagrams on them change nobody's path."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aioice.stun
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

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
UNCONNECTED = "0.0.0.0:*"  # a socket's peer in `ss`, when it has none


def token(role: Role, who: str) -> str:
    return mint(SECRET, "ward", role, who, 3600, who)


def free_port() -> int:
    """A port free for both UDP and TCP on HOST."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((HOST, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((HOST, port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no port free for UDP and TCP")


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


def udp_sockets_of(pids: list[int]) -> list[tuple[int, int, str]]:
    """(pid, local port, peer) of each UDP socket these processes hold (UNCONNECTED when it
    has no peer)."""
    out = subprocess.run(
        [executable("ss"), "-uanpH"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    found = []
    for line in out.splitlines():
        for pid in pids:
            if f"pid={pid}," in line:
                fields = line.split()
                found.append((pid, int(fields[3].rsplit(":", 1)[1]), fields[4]))
    return found


def children(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True, timeout=10
    ).stdout
    return [int(x) for x in out.split()]


def forged(ufrags: list[str]) -> list[bytes]:
    """Datagrams a node's port sees, none with valid credentials: checks naming its live
    connections, answers naming each worker, RTP, RTCP and DTLS."""
    out = []
    for ufrag in ufrags:
        request = aioice.stun.Message(
            message_method=aioice.stun.Method.BINDING, message_class=aioice.stun.Class.REQUEST
        )
        request.attributes["USERNAME"] = f"{ufrag}:peer"
        request.attributes["PRIORITY"] = 1
        request.add_message_integrity(b"not-the-password")
        request.add_fingerprint()
        out.append(bytes(request))
    for worker in range(2):
        answer = aioice.stun.Message(
            message_method=aioice.stun.Method.BINDING,
            message_class=aioice.stun.Class.RESPONSE,
            transaction_id=bytes([worker]) + bytes(11),
        )
        answer.attributes["XOR-MAPPED-ADDRESS"] = (HOST, 9)
        out.append(bytes(answer))
    out += [
        bytes([0x80, 96]) + bytes(40),
        bytes([0x81, 200]) + bytes(26),
        b"\x16\xfe\xfd" + bytes(30),
    ]
    return out


# One mutation: which seed, bytes set (where, what), where it is cut, what is appended, and
# which of four senders sends it.
Mutation = tuple[int, list[tuple[int, int]], int, bytes, int]


def mutations(examples: int = 3000) -> list[Mutation]:
    """Hypothesis's mutations, made before any media runs: hypothesis checks that nothing else
    draws from `random` while it generates, and aiortc's tasks in this thread would."""
    out: list[Mutation] = []

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate])
    @given(
        st.integers(0, 63),
        st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
        st.integers(0, 220),
        st.binary(max_size=16),
        st.integers(0, 3),
    )
    def make(seed: int, flips: list[tuple[int, int]], cut: int, tail: bytes, who: int) -> None:
        out.append((seed, flips, cut, tail, who))

    make()
    return out


def mutated(seeds: list[bytes], recipe: list[Mutation]) -> list[tuple[int, bytes]]:
    """The datagrams the mutations make of the seeds, each with its sender."""
    out = []
    for seed, flips, cut, tail, who in recipe:
        data = bytearray(seeds[seed % len(seeds)])
        for at, value in flips:
            if at < len(data):
                data[at] = value
        out.append((who, bytes(data[:cut]) + tail))
    return out


def blast(port: int, datagrams: list[tuple[int, bytes]]) -> None:
    """Send datagrams to the port, each from one of four addresses."""
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    try:
        for who, data in datagrams:
            senders[who].sendto(data, (HOST, port))
    finally:
        for sender in senders:
            sender.close()


def dropped_datagrams(http_port: int) -> dict[str, float]:
    """The node's count of dropped datagrams by kind (the server's and its workers')."""
    with urllib.request.urlopen(f"http://{HOST}:{http_port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    found = re.findall(
        r'^teleconsult_media_dropped_datagrams_total\{kind="(\w+)"\} (\S+)$', text, re.M
    )
    return {kind: float(n) for kind, n in found}


def ice_credentials(sdp: str) -> tuple[str, str]:
    """The node's ICE username fragment and password in an SDP it wrote."""
    ufrag = re.search(r"a=ice-ufrag:(\S+)", sdp)
    pwd = re.search(r"a=ice-pwd:(\S+)", sdp)
    assert ufrag and pwd, sdp
    return ufrag.group(1), pwd.group(1)


def check(sock: socket.socket, port: int, ufrag: str, pwd: str) -> int:
    """Send a connectivity check for `ufrag` ("node's:client's") signed with the node's
    password (a wrong one when `pwd` is wrong) and return the class of the answer from the
    media port (or raise TimeoutError)."""
    request = aioice.stun.Message(
        message_method=aioice.stun.Method.BINDING, message_class=aioice.stun.Class.REQUEST
    )
    request.attributes["USERNAME"] = ufrag
    request.attributes["PRIORITY"] = 1
    request.add_message_integrity(pwd.encode())
    request.add_fingerprint()
    sock.settimeout(0.5)
    for _ in range(6):  # retransmitted, as ICE does
        sock.sendto(bytes(request), (HOST, port))
        try:
            while True:
                data, source = sock.recvfrom(2048)
                answer = aioice.stun.parse_message(data)
                if answer.transaction_id == request.transaction_id:
                    assert source == (HOST, port), source
                    return int(answer.message_class)
        except TimeoutError:
            continue
    raise TimeoutError("no answer to a check")


def holder(pids: list[int], port: int, peer: tuple[str, int]) -> list[int]:
    """The processes holding a socket on the media port connected to `peer`."""
    return [
        p
        for p, local, remote in udp_sockets_of(pids)
        if local == port and remote == f"{peer[0]}:{peer[1]}"
    ]


async def held_by(pids: list[int], port: int, peer: tuple[str, int], pid: int) -> None:
    """Wait until exactly `pid` holds the socket connected to `peer`."""
    found: list[int] = []
    for _ in range(50):
        found = await asyncio.to_thread(holder, pids, port, peer)
        if found == [pid]:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"held by {found}, not [{pid}]")


async def test_every_worker_shares_the_nodes_one_port(tmp_path: Path) -> None:
    recipe = mutations()
    port, tcp = free_port(), free_port()
    extra = ["--media-port", str(port), "--media-workers", "2", "--media-tcp-port", str(tcp)]
    with server_process(tmp_path / "data", *extra) as (http_port, proc):
        use_host_addresses([HOST])
        url = f"ws://{HOST}:{http_port}/ws"
        rooms = ("ward", "clinic")
        ops = [
            SignalingClient(url, mint(SECRET, r, Role.OPERATOR, "op", 3600, "op"), r) for r in rooms
        ]
        experts = [
            SignalingClient(url, mint(SECRET, r, Role.EXPERT, "ex", 3600, "ex"), r) for r in rooms
        ]
        publishers = [MediaClient(o) for o in ops]
        watchers = [MediaClient(e) for e in experts]
        viewers = [StampViewer() for _ in experts]
        tasks, sdps = [], []
        subs: list[tuple[str, str]] = []
        try:
            # A publisher goes to the least loaded worker: one room on each.
            for op, publisher, sig, media, viewer in zip(
                ops, publishers, experts, watchers, viewers, strict=True
            ):
                await op.connect()
                stream = await publisher.publish([(UltrasoundTrack(320, 240, 15), "probe", "")])
                await sig.connect()
                sub = await media.subscribe(stream.id)
                assert stream.pc.remoteDescription and sub.pc.remoteDescription
                sdps += [stream.pc.remoteDescription.sdp, sub.pc.remoteDescription.sdp]
                assert sub.pc.localDescription is not None
                node, _ = ice_credentials(sub.pc.remoteDescription.sdp)
                theirs, _ = ice_credentials(sub.pc.localDescription.sdp)
                subs.append((f"{node}:{theirs}", ice_credentials(sub.pc.remoteDescription.sdp)[1]))
                tasks.append(asyncio.ensure_future(viewer.watch(sub.tracks[f"{stream.id}.0"])))
            for viewer in viewers:
                assert await viewer.back_after(time.time()) < 10
            # Every candidate the node gave names its one UDP port, or its one TCP port.
            assert set().union(*map(candidate_ports, sdps)) == {port}
            assert set().union(*map(tcp_candidate_ports, sdps)) == {tcp}
            # The server holds the port (its workers send from it too); each worker holds
            # sockets on it connected to its peers, and no other UDP port.
            workers = children(proc.pid)
            held = udp_sockets_of([proc.pid, *workers])
            assert (proc.pid, port, UNCONNECTED) in held, held
            assert all(local == port for p, local, _ in held if p != proc.pid), held
            for worker in workers:
                assert any(p == worker and peer != UNCONNECTED for p, _, peer in held), held

            # One address, checking for a connection on one worker, then on the other (a
            # client whose next connection reuses its port): each check answered from the
            # port, and the address moves to the worker of the connection that proved it.
            (ward_ufrag, ward_pwd), (clinic_ufrag, clinic_pwd) = subs
            success, error = int(aioice.stun.Class.RESPONSE), int(aioice.stun.Class.ERROR)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.bind((HOST, 0))
                me = client.getsockname()
                assert await asyncio.to_thread(check, client, port, ward_ufrag, ward_pwd) == success
                first = await asyncio.to_thread(holder, workers, port, me)
                assert len(first) == 1, first
                assert (
                    await asyncio.to_thread(check, client, port, clinic_ufrag, clinic_pwd)
                    == success
                )
                other = next(w for w in workers if w != first[0])
                await held_by(workers, port, me, other)
                # A check signed with a wrong password is refused and moves nothing.
                wrong = await asyncio.to_thread(check, client, port, ward_ufrag, "x" * 22)
                assert wrong == error
                await asyncio.sleep(0.3)
                await held_by(workers, port, me, other)
                assert await asyncio.to_thread(check, client, port, ward_ufrag, ward_pwd) == success
                await held_by(workers, port, me, first[0])

            # Stray and forged datagrams from addresses no check came from: checks naming the
            # live connections (wrong keys), answers naming both workers, media and junk,
            # mutated by hypothesis. Dropped, and nobody's path moves.
            datagrams = mutated(forged([u.split(":")[0] for u, _ in subs]), recipe)
            await asyncio.to_thread(blast, port, datagrams)
            # Counted where each was dropped, the workers included (a forged check that still
            # names a live connection is answered 401 instead): nearly all of them.
            for _ in range(50):
                dropped = await asyncio.to_thread(dropped_datagrams, http_port)
                if sum(dropped.values()) >= 0.8 * len(datagrams):
                    break
                await asyncio.sleep(0.1)
            assert sum(dropped.values()) >= 0.8 * len(datagrams), dropped
            # And on the TCP port: junk, a length past the end, a check nobody signed.
            await asyncio.to_thread(strange_tcp, tcp)
            for viewer in viewers:
                assert await viewer.back_after(time.time()) < 5
            log = (tmp_path / "data" / "server.log").read_text(errors="replace")
            assert "Traceback" not in log, log[-3000:]
            # Everyone leaves: the workers let every peer's socket go (a session of hours has
            # people come and go; nothing is left behind per peer).
            for task in tasks:
                task.cancel()
            for media in (*watchers, *publishers):
                await media.close()
            connected: list[tuple[int, int, str]] = []
            for _ in range(100):
                held = await asyncio.to_thread(udp_sockets_of, workers)
                connected = [h for h in held if h[2] != UNCONNECTED]
                if not connected:
                    break
                await asyncio.sleep(0.1)
            assert not connected, connected
        finally:
            for task in tasks:
                task.cancel()
            for media in (*watchers, *publishers):
                await media.close()
            for sig in (*experts, *ops):
                await sig.close()
            use_host_addresses(None)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_media_port_in_use_stops_the_start_with_why(tmp_path: Path, workers: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((HOST, 0))
        port = first = taken.getsockname()[1]
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
