"""Thousands of mutated STUN/TURN messages over UDP and TCP; a valid client is served after."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from teleconsult.turn import credentials
from teleconsult.turn.policy import PeerPolicy
from teleconsult.turn.server import TurnServer

SECRET = "turn-secret-for-tests-0123456789"


class Running:
    """A TURN server in an event loop of its own thread, as a client machine would see it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = TurnServer(
            SECRET, host="127.0.0.1", port=0, policy=PeerPolicy(allow=["127.0.0.0/8"])
        )
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.run(self.server.start())

    def run(self, coro: object, timeout: float = 30) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def close(self) -> None:
        self.run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def running() -> Iterator[Running]:
    r = Running()
    try:
        yield r
    finally:
        r.close()


def seeds() -> list[bytes]:
    user, _ = credentials.mint(SECRET, "fuzz", 600, time.time())
    allocate = stun.Message(
        stun.Method.ALLOCATE,
        stun.Class.REQUEST,
        attributes={
            "REQUESTED-TRANSPORT": 17 << 24,
            "USERNAME": user,
            "REALM": "teleconsult",
            "NONCE": b"0-0",
        },
    )
    allocate.add_message_integrity(b"k" * 16)
    send = stun.Message(
        stun.Method.SEND,
        stun.Class.INDICATION,
        attributes={"XOR-PEER-ADDRESS": ("127.0.0.1", 9), "DATA": b"x" * 40},
    )
    bind = stun.Message(
        stun.Method.CHANNEL_BIND,
        stun.Class.REQUEST,
        attributes={"CHANNEL-NUMBER": 0x4001, "XOR-PEER-ADDRESS": ("127.0.0.1", 9)},
    )
    binding = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    return [
        bytes(allocate),
        bytes(send),
        bytes(bind),
        bytes(binding),
        b"\x40\x01\x00\x08" + b"y" * 8,
    ]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds())))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "length"]))
        if kind == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut" and data:
            data = data[: draw(st.integers(0, len(data) - 1))]
        elif kind == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "length" and len(data) >= 4:
            data[2:4] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
    return bytes(data)


FUZZ = settings(
    max_examples=1500,
    deadline=None,
    phases=[Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(message=mutated())
def test_fuzz_udp(running: Running, message: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(message, running.server.udp_address)


@FUZZ
@given(message=mutated())
def test_fuzz_tcp(running: Running, message: bytes) -> None:
    with socket.create_connection(running.server.tcp_address, timeout=5) as s:
        s.sendall(message)


def test_a_valid_client_is_served_after_the_fuzz(running: Running) -> None:
    async def allocate() -> bytes:
        class Inbox(asyncio.DatagramProtocol):
            queue: asyncio.Queue[bytes] = asyncio.Queue()

            def datagram_received(self, data: bytes, addr: object) -> None:
                self.queue.put_nowait(data)

        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.t = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                self.t.sendto(data, addr)  # type: ignore[attr-defined]

        loop = asyncio.get_running_loop()
        peer, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        user, password = credentials.mint(SECRET, "after-fuzz", 600, time.time())
        for transport, addr in (
            ("udp", running.server.udp_address),
            ("tcp", running.server.tcp_address),
        ):
            relay, inbox = await create_turn_endpoint(
                Inbox, addr, user, password, transport=transport
            )
            relay.sendto(b"still here", peer.get_extra_info("sockname"))
            got = await asyncio.wait_for(inbox.queue.get(), 5)
            relay.close()
            assert got == b"still here"
        peer.close()
        return got

    assert asyncio.run(allocate()) == b"still here"
    # Nothing leaked: the fuzz made no allocation that outlives it.
    assert all(a.username.endswith(":after-fuzz") for a in running.server.allocations.values())
