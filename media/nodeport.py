"""A node's one UDP and one TCP media port, shared by its media worker processes.

The server binds the ports. A worker that proves an address its peer's (an authenticated
check, an answer to its own check) binds a socket of its own to the same port, connected to
that address, and the kernel gives it that peer's datagrams from then on. What no connected
socket takes reaches the server, which hands it to the worker the datagram names: a check by
the first character of its username fragment, a response by the first byte of its
transaction id (`demux.worker_named`). New TCP connections are handed over whole, by their
first check. Each worker verifies what it is handed, as on a port of its own.
"""

from __future__ import annotations

import array
import asyncio
import functools
import json
import logging
import socket
from collections.abc import Callable
from typing import Any

from .datagrams import INGRESS, STUN, broken, kind_of
from .demux import worker_named

log = logging.getLogger("teleconsult.media")

# What the two ends of a hand say to each other, by the message's first byte.
DATAGRAM = b"d"  # a datagram from a remote address (either way: handed, or sent back)
TCP = b"t"  # a TCP connection (its descriptor), with the bytes read from it so far
TIE = b"T"  # a worker took an address: datagrams from it that still reach the server go there
UNTIE = b"U"  # a worker let an address go
RELEASE = b"r"  # another worker took an address this one had: let it go
KINDS = (DATAGRAM, TCP, TIE, UNTIE, RELEASE)

# A message's header (its local address and the remote one) is short; a datagram at most 64 kB.
MAX_MESSAGE = 65536 + 1024
# Messages read from a hand per readiness event.
HAND_BURST = 64
# Seconds a new TCP connection has to send its first check before it is closed, and frames it
# may send before one.
GATE_SECONDS = 10.0
GATE_FRAMES = 4
# Bytes read from a new TCP connection before its first check: more, and it is closed.
GATE_BYTES = 8 * 1024
# Receive buffer of the node's port, as a shared port's.
BUFFER = 8 * 1024 * 1024

Address = tuple[str, int]
# What a hand gives its owner: the kind, the local address, the remote one, the payload and
# a received descriptor (TCP), if any.
Received = Callable[[bytes, str, Address, bytes, socket.socket | None], None]


def pack(kind: bytes, local: str, remote: Address, payload: bytes = b"") -> bytes:
    """One message of a hand."""
    head = json.dumps([local, remote[0], remote[1]], separators=(",", ":")).encode()
    return kind + len(head).to_bytes(2, "big") + head + payload


def unpack(message: bytes) -> tuple[bytes, str, Address, bytes] | None:
    """(kind, local address, remote address, payload) of a message, or None if malformed."""
    if len(message) < 3 or message[:1] not in KINDS:
        return None
    size = int.from_bytes(message[1:3], "big")
    try:
        local, host, port = json.loads(message[3 : 3 + size])
    except (ValueError, TypeError):
        return None
    if not (isinstance(local, str) and isinstance(host, str) and isinstance(port, int)):
        return None
    return message[:1], local, (host, port), message[3 + size :]


def hand_pair() -> tuple[socket.socket, socket.socket]:
    """A socket pair for a hand: messages keep their bounds and carry descriptors."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in (ours, theirs):
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
    ours.setblocking(False)
    return ours, theirs


class Hand:
    """One end of the socket pair between the server and a worker that the node's port's
    traffic goes through (`pack`)."""

    def __init__(self, sock: socket.socket, received: Received) -> None:
        self.sock = sock
        self._received = received
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Read messages as they come."""
        self.sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def send(
        self, kind: bytes, local: str, remote: Address, payload: bytes = b"", fd: int | None = None
    ) -> bool:
        """Send one message (and a descriptor); tell whether it went (not when the other end
        is gone or behind)."""
        ancillary = []
        if fd is not None:
            ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
        try:
            self.sock.sendmsg([pack(kind, local, remote, payload)], ancillary)
        except OSError:
            return False
        return True

    def _readable(self) -> None:
        for _ in range(HAND_BURST):
            try:
                message, ancillary, _flags, _ = self.sock.recvmsg(
                    MAX_MESSAGE, socket.CMSG_SPACE(array.array("i").itemsize)
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.close()
                return
            if not message:
                self.close()  # the other end is gone
                return
            received = _descriptor(ancillary)
            parsed = unpack(message)
            if parsed is None:
                if received is not None:
                    received.close()
                log.warning("a malformed message between media processes was dropped")
                continue
            kind, local, remote, payload = parsed
            try:
                self._received(kind, local, remote, payload, received)
            except Exception:
                log.exception("a message between media processes was not handled")

    def close(self) -> None:
        """Stop reading and close this end."""
        if self._loop is not None and self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())
        self.sock.close()


def _descriptor(ancillary: list[tuple[int, int, bytes]]) -> socket.socket | None:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS and len(data) >= 4:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            for extra in fds[1:]:
                socket.socket(fileno=extra).close()
            return socket.socket(fileno=fds[0])
    return None


def reuse_socket(address: str) -> socket.socket:
    """A UDP socket that may share its port with the node's other media sockets."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


class NodePort:
    """The server's end of the node's media ports: it binds them, hands what reaches it to
    the worker each datagram or connection names, and keeps which worker took which
    address."""

    def __init__(self, udp: int | None, tcp: int | None) -> None:
        self.udp, self.tcp = udp, tcp
        self.sockets: dict[str, socket.socket] = {}  # the UDP port, by local address
        self.hands: dict[int, Hand] = {}  # by worker index
        self.owners: dict[tuple[str, Address], int] = {}  # (local, remote) -> worker index
        self._transports: list[asyncio.BaseTransport] = []
        self._servers: list[asyncio.Server] = []

    async def open(self, addresses: list[str]) -> None:
        """Bind the ports on these addresses; a port in use raises OSError, saying which."""
        loop = asyncio.get_running_loop()
        for address in addresses:
            if self.udp is not None:
                sock = reuse_socket(address)
                try:
                    sock.bind((address, self.udp))
                except OSError as e:
                    sock.close()
                    raise _saying(e, f"media port {address}:{self.udp}") from None
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
                sock.setblocking(False)
                self.sockets[address] = sock
                transport, _ = await loop.create_datagram_endpoint(
                    functools.partial(_Port, self, address), sock=sock
                )
                self._transports.append(transport)
            if self.tcp is not None:
                try:
                    server = await loop.create_server(
                        functools.partial(_Gate, self, address),
                        host=address,
                        port=self.tcp,
                        reuse_address=True,
                    )
                except OSError as e:
                    raise _saying(e, f"media TCP port {address}:{self.tcp}") from None
                self._servers.append(server)

    def attach(self, index: int, sock: socket.socket) -> None:
        """Hand worker `index` its traffic through this end of its pair."""
        self.detach(index)
        hand = Hand(sock, lambda *m: self._from_worker(index, *m))
        hand.start()
        self.hands[index] = hand

    def detach(self, index: int) -> None:
        """Forget a worker (it stopped): its addresses are nobody's."""
        hand = self.hands.pop(index, None)
        if hand is not None:
            hand.close()
        for key in [k for k, i in self.owners.items() if i == index]:
            del self.owners[key]

    def close(self) -> None:
        """Close the ports and the hands."""
        for index in list(self.hands):
            self.detach(index)
        for transport in self._transports:
            transport.close()
        for server in self._servers:
            server.close()

    def route(self, local: str, data: bytes, remote: Address, source: int | None = None) -> None:
        """Hand a datagram that reached the node's port to its worker, or drop it."""
        index = worker_named(data)
        if index is None:
            index = self.owners.get((local, remote))
        hand = self.hands.get(index) if index is not None and index != source else None
        if hand is None or not hand.send(DATAGRAM, local, remote, data):
            why = broken(data)
            INGRESS.drop(why or kind_of(data), "no media worker for it (node port)")

    def _from_worker(
        self,
        index: int,
        kind: bytes,
        local: str,
        remote: Address,
        payload: bytes,
        received: socket.socket | None,
    ) -> None:
        if received is not None:
            received.close()  # only the server hands descriptors over
        key = (local, remote)
        if kind == TIE:
            previous = self.owners.get(key)
            self.owners[key] = index
            if previous is not None and previous != index and previous in self.hands:
                self.hands[previous].send(RELEASE, local, remote)
        elif kind == UNTIE:
            if self.owners.get(key) == index:
                del self.owners[key]
        elif kind == DATAGRAM:
            # One that reached a worker's socket but names another: a check for a connection
            # there from an address the first still has.
            self.route(local, payload, remote, source=index)

    def hand_tcp(self, index: int, local: str, remote: Address, buffered: bytes, fd: int) -> bool:
        """Hand a new TCP connection to worker `index`, with what was read of it."""
        hand = self.hands.get(index)
        return hand is not None and hand.send(TCP, local, remote, buffered, fd=fd)


def _saying(error: OSError, what: str) -> OSError:
    """The error, saying which port it is about."""
    return OSError(error.errno, f"{what}: {error.strerror}")


class _Port(asyncio.DatagramProtocol):
    """The node's UDP port on one address, in the server."""

    def __init__(self, node: NodePort, address: str) -> None:
        self.node, self.address = node, address

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.node.route(self.address, bytes(data), (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        """An ICMP error about one peer (after a worker sent to it): nobody else's concern."""


def _frames(buffered: bytes) -> list[bytes]:
    """The whole RFC 4571 frames at the start of a TCP stream."""
    frames: list[bytes] = []
    at = 0
    while at + 2 <= len(buffered):
        size = int.from_bytes(buffered[at : at + 2], "big")
        if at + 2 + size > len(buffered):
            break
        frames.append(buffered[at + 2 : at + 2 + size])
        at += 2 + size
    return frames


def _first_check_worker(frames: list[bytes]) -> int | None:
    """The worker the first STUN frame naming one names, if any."""
    for frame in frames:
        index = worker_named(frame)
        if index is not None:
            return index
    return None


class _Gate(asyncio.Protocol):
    """A new TCP connection to the node's TCP port, read until its first check tells which
    worker it is for."""

    def __init__(self, node: NodePort, address: str) -> None:
        self.node, self.address = node, address
        self.transport: asyncio.Transport | None = None
        self.peer: Address = ("", 0)
        self.buffered = b""
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        self._timer = asyncio.get_running_loop().call_later(GATE_SECONDS, transport.close)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffered += data
        frames = _frames(self.buffered)
        index = _first_check_worker(frames)
        if index is not None:
            fd = self.transport.get_extra_info("socket").fileno()
            if not self.node.hand_tcp(index, self.address, self.peer, self.buffered, fd):
                INGRESS.drop(STUN, "on the TCP media port, for no media worker")
            # Handed, the worker holds the connection: closing our copy leaves it open.
            self.transport.abort()
            return
        if len(frames) >= GATE_FRAMES or len(self.buffered) > GATE_BYTES:
            INGRESS.drop(STUN, "on the TCP media port without a check for a worker")
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
