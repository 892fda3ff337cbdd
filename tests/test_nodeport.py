"""The server's end of the node's media ports (`media/nodeport.py`), with the workers' ends of
their hands read by the test: what reaches the port goes to the worker it names and nowhere
else, an address taken by a second worker is released by the first, a TCP connection is
handed over whole, and junk (datagrams, hand messages) breaks nothing."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator

import pytest
from aioice import stun
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teleconsult.media import nodeport
from teleconsult.media.datagrams import INGRESS, STUN, kind_of
from teleconsult.media.demux import UFRAG_ALPHABET, worker_named
from teleconsult.media.nodeport import (
    DATAGRAM,
    KINDS,
    RELEASE,
    TCP,
    TIE,
    Hand,
    NodePort,
    hand_pair,
    pack,
    unpack,
)

from .test_media_port import HOST, free_port

Message = tuple[bytes, str, tuple[str, int], bytes, socket.socket | None]


def check_for(worker: int, key: str = "p" * 22) -> bytes:
    """A connectivity check naming a connection of `worker` (as a browser sends it)."""
    message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    message.attributes["USERNAME"] = f"{UFRAG_ALPHABET[worker]}bcdefgh:peer"
    message.attributes["PRIORITY"] = 1
    message.add_message_integrity(key.encode())
    message.add_fingerprint()
    return bytes(message)


def answer_to(worker: int) -> bytes:
    """An answer to a check `worker` sent (its transaction id's first byte)."""
    transaction = bytes([worker]) + os.urandom(11)
    return bytes(stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=transaction))


class Far:
    """A worker's end of its hand, as the test reads it."""

    def __init__(self, sock: socket.socket) -> None:
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.hand = Hand(sock, lambda *m: self.inbox.put_nowait(m))
        self.hand.start()

    async def next(self, timeout: float = 2.0) -> Message:
        return await asyncio.wait_for(self.inbox.get(), timeout)

    async def nothing(self, wait: float = 0.3) -> None:
        await asyncio.sleep(wait)
        assert self.inbox.empty(), self.inbox.get_nowait()


@pytest.fixture
async def node() -> AsyncIterator[tuple[NodePort, list[Far]]]:
    port = NodePort(free_port(), free_port())
    await port.open([HOST])
    far = []
    for index in range(2):
        ours, theirs = hand_pair()
        port.attach(index, ours)
        far.append(Far(theirs))
    yield port, far
    for f in far:
        f.hand.close()
    port.close()


async def test_what_reaches_the_port_goes_to_the_worker_it_names(
    node: tuple[NodePort, list[Far]],
) -> None:
    port, (w0, w1) = node
    assert port.udp is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.bind((HOST, 0))
        me = client.getsockname()
        for data, to in ((check_for(1), w1), (answer_to(0), w0), (check_for(0), w0)):
            client.sendto(data, (HOST, port.udp))
            kind, local, remote, payload, fd = await to.next()
            assert (kind, local, remote, payload, fd) == (DATAGRAM, HOST, me, data, None)
        # Media from an address no worker took: nobody's.
        before = sum(INGRESS.dropped.values())
        client.sendto(bytes([0x80, 96]) + bytes(30), (HOST, port.udp))
        await w0.nothing()
        await w1.nothing()
        assert sum(INGRESS.dropped.values()) == before + 1
        # Taken by worker 1: its media goes there (until its own socket takes it).
        w1.hand.send(TIE, HOST, me)
        await asyncio.sleep(0.1)
        rtp = bytes([0x80, 96]) + bytes(30)
        client.sendto(rtp, (HOST, port.udp))
        assert (await w1.next())[3] == rtp
        # Taken by worker 0 next: worker 1 is told to let it go.
        w0.hand.send(TIE, HOST, me)
        kind, _, remote, _, _ = await w1.next()
        assert (kind, remote) == (RELEASE, me)
        # A datagram worker 0 got that names worker 1 is passed on, and not back.
        passed = check_for(1)
        w0.hand.send(DATAGRAM, HOST, me, passed)
        assert (await w1.next())[3] == passed
        w1.hand.send(DATAGRAM, HOST, me, check_for(1))  # names its sender: dropped
        await w0.nothing()
        await w1.nothing()


async def test_a_tcp_connection_is_handed_over_whole(node: tuple[NodePort, list[Far]]) -> None:
    port, (w0, w1) = node
    assert port.tcp is not None
    framed = b"".join(len(f).to_bytes(2, "big") + f for f in (check_for(1), b"\x17" + bytes(12)))
    reader, writer = await asyncio.open_connection(HOST, port.tcp)
    writer.write(framed)
    await writer.drain()
    kind, local, remote, payload, fd = await w1.next()
    assert (kind, local, remote) == (TCP, HOST, writer.get_extra_info("sockname")[:2])
    assert payload == framed and fd is not None
    # The worker's descriptor is the connection itself: the client hears what it says.
    fd.sendall(b"\x00\x02hi")
    assert await asyncio.wait_for(reader.readexactly(4), 2) == b"\x00\x02hi"
    fd.close()
    writer.close()
    await w0.nothing()


async def test_a_tcp_connection_without_a_check_is_closed(
    node: tuple[NodePort, list[Far]],
) -> None:
    port, (w0, w1) = node
    assert port.tcp is not None
    junk = b"".join(len(f).to_bytes(2, "big") + f for f in [b"\x80" + bytes(20)] * 4)
    reader, writer = await asyncio.open_connection(HOST, port.tcp)
    writer.write(junk)
    await writer.drain()
    try:
        heard = await asyncio.wait_for(reader.read(10), 5)
    except ConnectionResetError:  # closed with our bytes unread
        heard = b""
    assert heard == b""
    writer.close()
    await w0.nothing(0.1)
    await w1.nothing(0.1)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_junk_names_no_worker_unless_it_is_stun(data: bytes) -> None:
    named = worker_named(data)
    assert named is None or (kind_of(data) == STUN and 0 <= named < 256)
    parsed = unpack(data)
    assert parsed is None or parsed[0] in KINDS


@given(st.integers(0, len(UFRAG_ALPHABET) - 1))
def test_a_check_and_an_answer_name_their_worker(index: int) -> None:
    assert worker_named(check_for(index)) == index == worker_named(answer_to(index))


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([DATAGRAM, TCP, TIE, RELEASE]),
    st.text(max_size=40),
    st.text(max_size=40),
    st.integers(0, 65535),
    st.binary(max_size=100),
)
def test_a_hand_message_reads_back(
    kind: bytes, local: str, host: str, port: int, payload: bytes
) -> None:
    assert unpack(pack(kind, local, (host, port), payload)) == (kind, local, (host, port), payload)


async def test_junk_on_a_hand_and_the_port_breaks_nothing(
    node: tuple[NodePort, list[Far]],
) -> None:
    port, (w0, w1) = node
    assert port.udp is not None
    junk = [b"T", b"T\x00\x05[1,2", b"d\xff\xff" + bytes(10), b"x" * 100, b"U\x00\x02{}"]
    for data in junk:
        w0.hand.sock.send(data)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        for data in [b"", *junk]:
            client.sendto(data, (HOST, port.udp))
        await asyncio.sleep(0.2)
        # The server still hands over what names a worker.
        data = check_for(0)
        client.sendto(data, (HOST, port.udp))
        assert (await w0.next())[3] == data
        await w1.nothing(0.1)


async def closed_after(port: int, opening: bytes, within: float) -> None:
    """Open a TCP connection, send `opening`, and see it closed by the node in time."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(opening)
    await writer.drain()
    try:
        heard = await asyncio.wait_for(reader.read(10), within)
    except ConnectionResetError:
        heard = b""
    assert heard == b""
    writer.close()


async def test_a_tcp_connection_that_says_nothing_useful_is_closed(
    node: tuple[NodePort, list[Far]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, (w0, w1) = node
    assert port.tcp is not None
    # One frame that never ends: closed once it has sent more than a check could be.
    await closed_after(port.tcp, b"\xff\xff" + bytes(nodeport.GATE_BYTES + 10), 2.0)
    # Silent: closed when its time is up (a new connection reads the patched time).
    monkeypatch.setattr(nodeport, "GATE_SECONDS", 0.5)
    await closed_after(port.tcp, b"", 3.0)
    await w0.nothing(0.1)
    await w1.nothing(0.1)
