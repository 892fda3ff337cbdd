"""The sockets of the TURN server: its UDP and TCP (or TLS) listeners and each relay's port."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from typing import Protocol

from aioice import stun

from .wire import Address, Send, is_channel_data


class Served(Protocol):
    """What the listeners hand messages to: the TURN server."""

    def handle(self, data: bytes, transport: str, client: Address, send: Send) -> None:
        """Serve one STUN message or ChannelData from a client."""

    def lost(self, transport: str, client: Address) -> None:
        """A client's TCP or TLS connection closed."""


class UdpListener(asyncio.DatagramProtocol):
    """TURN over UDP: each datagram one message."""

    def __init__(self, server: Served) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        assert self.transport is not None
        transport = self.transport
        self.server.handle(data, "udp", addr[:2], lambda out: transport.sendto(out, addr))


class TcpConnection(asyncio.Protocol):
    """TURN over TCP: STUN messages and 4-byte-aligned ChannelData, framed by their lengths."""

    def __init__(self, server: Served, kind: str = "tcp") -> None:
        self.server = server
        self.kind = kind
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.peer: Address = ("", 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")[:2]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > 1 << 20:  # a peer that never frames: cut it off
            assert self.transport is not None
            self.transport.close()
            return
        while len(self.buffer) >= 4:
            _, length = struct.unpack("!HH", self.buffer[:4])
            if is_channel_data(self.buffer):
                full = 4 + length + stun.padding_length(length)
            else:
                full = 20 + length
            if len(self.buffer) < full:
                return
            frame, self.buffer = self.buffer[:full], self.buffer[full:]
            assert self.transport is not None
            self.server.handle(frame, self.kind, self.peer, self.transport.write)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.lost(self.kind, self.peer)


class Relay(asyncio.DatagramProtocol):
    """An allocation's relayed port: what peers send to it goes to the client."""

    def __init__(self, deliver: Callable[[bytes, Address], None]) -> None:
        self.deliver = deliver

    def datagram_received(self, data: bytes, addr: Address) -> None:
        with contextlib.suppress(Exception):
            self.deliver(data, addr[:2])
