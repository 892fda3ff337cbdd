"""The connections of a process sharing one UDP and one TCP media port: every use of aioice
internals for it (built against aioice 0.13.0), beside `aioice_adapter.py`.

A process's connections share a port (`SharedPort`, told apart by `media/demux.py`); in a
media worker, the port is the node's, held by the server (`WorkerPort`, `media/nodeport.py`).
ICE over TCP is passive, on one port (`_TcpPath`, RFC 6544 and RFC 4571).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import socket
import weakref
from collections.abc import Iterator
from typing import Any

import aioice
import aioice.ice
import aioice.stun
from aioice.candidate import candidate_foundation, candidate_priority
from aioice.utils import random_string
from aiortc.rtp import is_rtcp

from .aioice_adapter import (
    SO_TIMESTAMPNS,
    guarded_datagram_received,
    host_addresses,
    taker_of,
    waiting_datagrams,
)
from .datagrams import INGRESS, RTP, STUN, broken, kind_of
from .demux import UFRAG_ALPHABET, Demux, request_username, worker_named
from .nodeport import DATAGRAM, RELEASE, TCP, TIE, UNTIE, Hand, reuse_socket
from .overload import LOAD

log = logging.getLogger("teleconsult.media")

# The port a process's connections share (None: each binds one of its own, as aioice does).
_MEDIA_PORT: int | None = None
# The TCP port a process's connections are offered on (None: UDP only).
_MEDIA_TCP_PORT: int | None = None
# The shared sockets, by the address they are bound to.
_SHARED: dict[str, SharedPort] = {}
# Set in a media worker whose ports are the node's (held by the server, `media/nodeport.py`).
_WORKER: _Worker | None = None
# Set while connecting to another server (a cascade leg, a media worker on this machine): its
# connections come from one port too, so its address could not tell them apart here.
_OWN_PORTS: contextvars.ContextVar[bool] = contextvars.ContextVar("own_ports", default=False)
_original_component_candidates = aioice.ice.Connection.get_component_candidates


# aioice's username fragments are 4 characters: on a shared port, where they tell connections
# apart, two of a few hundred would clash now and then. Ours are 8, and never one in use.
UFRAG_LENGTH = 8
_LIVE: weakref.WeakValueDictionary[str, aioice.ice.Connection] = weakref.WeakValueDictionary()
_original_connection_init = aioice.ice.Connection.__init__


def _connection_init(self: aioice.ice.Connection, *args: Any, **kwargs: Any) -> None:
    if kwargs.get("local_username") is None:
        ufrag = _new_ufrag()
        while ufrag in _LIVE:
            ufrag = _new_ufrag()
        kwargs["local_username"] = ufrag
    _original_connection_init(self, *args, **kwargs)
    _LIVE[self.local_username] = self


def _new_ufrag() -> str:
    if _WORKER is None:
        return random_string(UFRAG_LENGTH)
    # A media worker's name its connections by their first character (`demux.worker_named`).
    return UFRAG_ALPHABET[_WORKER.index] + random_string(UFRAG_LENGTH - 1)


def _transaction_id() -> bytes:
    """A STUN transaction id whose first byte names this media worker (88 random bits)."""
    assert _WORKER is not None
    return bytes([_WORKER.index]) + os.urandom(11)


def _share_ports() -> None:
    """Gather through this module, with username fragments that tell connections apart."""
    aioice.ice.Connection.__init__ = _connection_init  # type: ignore[method-assign]
    aioice.ice.Connection.get_component_candidates = _component_candidates  # type: ignore[method-assign,assignment]


def use_media_ports(udp: int | None, tcp: int | None) -> None:
    """Give every connection of this process made from now on its host candidates on the one
    UDP port `udp`, and a passive TCP candidate on `tcp` (None: a port each, aioice's way; no
    TCP)."""
    global _MEDIA_PORT, _MEDIA_TCP_PORT
    _MEDIA_PORT, _MEDIA_TCP_PORT = udp, tcp
    if udp is not None or tcp is not None:
        _share_ports()


class _Worker:
    """What a media worker sharing the node's ports has of them: its index, the node's UDP
    sockets (to send from), and its hand to the server."""

    def __init__(self, index: int, sockets: dict[str, socket.socket], hand: socket.socket):
        self.index = index
        self.sockets = sockets
        self.hand = Hand(hand, self._received)
        self._adopting: set[asyncio.Future[None]] = set()

    def _received(
        self,
        kind: bytes,
        local: str,
        remote: tuple[str, int],
        payload: bytes,
        received: socket.socket | None,
    ) -> None:
        if kind == TCP and received is not None:
            if _MEDIA_TCP_PORT is None:
                received.close()
                return
            task = asyncio.ensure_future(_adopt_tcp(local, _MEDIA_TCP_PORT, received, payload))
            self._adopting.add(task)
            task.add_done_callback(self._adopting.discard)
            return
        if received is not None:
            received.close()
        port = _SHARED.get(local)
        if not isinstance(port, WorkerPort):
            return
        if kind == DATAGRAM:
            port.arrived([(payload, remote, -1.0)])
        elif kind == RELEASE:
            port.demux.untie(remote)


def use_node_port(index: int, sockets: dict[str, socket.socket], hand: socket.socket) -> None:
    """Make this process media worker `index`, sharing the node's ports: the server's UDP
    sockets (by address) to send from, and the hand it takes the rest through."""
    global _WORKER
    if index >= len(UFRAG_ALPHABET):
        raise ValueError(f"at most {len(UFRAG_ALPHABET)} media workers share a port")
    _WORKER = _Worker(index, sockets, hand)
    aioice.stun.random_transaction_id = _transaction_id  # type: ignore[attr-defined]
    _share_ports()


@contextlib.contextmanager
def own_ports() -> Iterator[None]:
    """Within the block, connections bind ports of their own although a shared one is set."""
    token = _OWN_PORTS.set(True)
    try:
        yield
    finally:
        _OWN_PORTS.reset(token)


async def open_media_ports() -> None:
    """Bind the shared ports now on the addresses ICE gathers on: a port in use stops the start,
    with why (an address that comes later is bound at its first use)."""
    if _WORKER is not None:
        for address, sock in _WORKER.sockets.items():
            if _MEDIA_PORT is not None:
                _SHARED[address] = WorkerPort(address, _MEDIA_PORT, sock, _WORKER.hand)
        _WORKER.hand.start()
        return
    for address in host_addresses():
        if _MEDIA_PORT is not None:
            await SharedPort.on(address, _MEDIA_PORT)
        if _MEDIA_TCP_PORT is not None:
            await _tcp_server(address, _MEDIA_TCP_PORT)


def _authentic(member: aioice.ice.StunProtocol, data: bytes) -> bool:
    """Whether a STUN request carries the member connection's own integrity."""
    try:
        message = aioice.stun.parse_message(data)
        return bool(message.check_message_integrity(member.receiver.local_password.encode("utf8")))
    except Exception:
        return False


def _asked(member: aioice.ice.StunProtocol, transaction: bytes) -> bool:
    """Whether a STUN response answers one of the member connection's own requests."""
    return transaction in member.transactions


class SharedPort(asyncio.DatagramProtocol):
    """One UDP socket that the connections of this process share, each datagram handed to the
    connection it is for (`media/demux.py`)."""

    def __init__(self, address: str, port: int) -> None:
        self.address, self.port = address, port
        self.demux: Demux[aioice.ice.StunProtocol] = Demux(_authentic, _asked)
        self.transport: asyncio.DatagramTransport | None = None
        self.sock: socket.socket | None = None

    @classmethod
    async def on(cls, address: str, port: int) -> SharedPort:
        """The shared port on an address, bound at first use."""
        shared = _SHARED.get(address)
        if shared is None or shared.transport is None or shared.transport.is_closing():
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.bind((address, port))
            except OSError as e:
                sock.close()
                raise OSError(e.errno, f"media port {address}:{port}: {e.strerror}") from None
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SHARED_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            sock.setblocking(False)
            shared = cls(address, port)
            shared.sock = sock
            await asyncio.get_running_loop().create_datagram_endpoint(lambda: shared, sock=sock)
            _SHARED[address] = shared
        return shared

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """Hand a datagram, and those already waiting behind it, to their connections."""
        assert self.sock is not None
        try:
            waiting = waiting_datagrams(self.sock)
        except OSError:
            waiting = []  # an ICMP error about one peer: nobody else's concern
        self.arrived([(data, addr, -1.0), *waiting])

    def arrived(self, batch: list[tuple[bytes, tuple[Any, ...], float]]) -> None:
        """Hand datagrams read together (with the seconds each waited) to their connections."""
        routed = [(d, (a[0], a[1]), w, self._route(d, a)) for d, a, w in batch]
        # As on a connection's own port (`_drained`): how long publishers' media waited.
        oldest = max(
            (
                w
                for d, _, w, m in routed
                if m is not None and taker_of(m.receiver) is not None and kind_of(d) == RTP
                and not is_rtcp(d)
            ),
            default=-1.0,
        )  # fmt: skip
        if oldest >= 0:
            LOAD.waited(oldest)
        for data, address, _waited, member in routed:
            self._take(data, address, member)

    def send(self, data: Any, addr: Any) -> None:
        """Send a datagram from the port."""
        if self.transport is not None:
            self.transport.sendto(data, addr)

    def _route(self, data: bytes, addr: tuple[Any, ...]) -> aioice.ice.StunProtocol | None:
        return self.demux.route(data, (addr[0], addr[1]))

    def _take(
        self, data: bytes, address: tuple[str, int], member: aioice.ice.StunProtocol | None
    ) -> None:
        if member is None:
            why = broken(data)
            if why is not None:
                INGRESS.drop(why, "too short, wrong version or not for this port")
            else:
                INGRESS.drop(kind_of(data), "from an address no check came from (shared port)")
            return
        if not member.transport.is_closing():
            # Its guard drops what is broken, as on a connection's own port.
            guarded_datagram_received(member, data, address)

    def error_received(self, exc: Exception) -> None:
        """An ICMP error about one peer: it concerns no other connection on the port."""


class WorkerPort(SharedPort):
    """The node's UDP port as a media worker shares it (`media/nodeport.py`): it sends from
    the server's socket, and reads each peer's datagrams from a socket of its own bound to
    the same port and connected to that peer, made when the peer's address is proven."""

    def __init__(self, address: str, port: int, sock: socket.socket, hand: Hand) -> None:
        super().__init__(address, port)
        self.sock = sock  # the server's: only sent from here, never read
        self.hand = hand
        self.demux = Demux(_authentic, _asked, self._tie, self._untie)
        self.connected: dict[tuple[str, int], socket.socket] = {}

    def send(self, data: Any, addr: Any) -> None:
        assert self.sock is not None
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            INGRESS.drop(kind_of(bytes(data)), "not sent: the media port's buffer is full")
        except OSError:
            pass  # as asyncio's transport: one peer's error is nobody else's

    def arrived(self, batch: list[tuple[bytes, tuple[Any, ...], float]]) -> None:
        assert _WORKER is not None
        kept = []
        for data, addr, waited in batch:
            address = (addr[0], addr[1])
            named = worker_named(data)
            if (named is not None and named != _WORKER.index) or (
                named is None and not self.demux.tied(address)
            ):
                # Another worker's: a check from an address one of ours still has, or what
                # reached a socket of ours in the instant it was bound and not yet connected.
                self.hand.send(DATAGRAM, self.address, address, data)
            else:
                kept.append((data, addr, waited))
        super().arrived(kept)

    def _readable(self, sock: socket.socket) -> None:
        try:
            waiting = waiting_datagrams(sock)
        except OSError:
            return  # an ICMP error about the peer, reported on its connected socket
        self.arrived(waiting)

    def _tie(self, address: tuple[str, int]) -> None:
        """A peer's address is proven: take its datagrams on a socket of this process."""
        sock = reuse_socket(self.address)
        try:
            sock.bind((self.address, self.port))
            sock.connect(address)
        except OSError as e:
            sock.close()
            # The server still hands this peer's datagrams here, one by one.
            log.warning("no socket of its own for a media peer (%s): %s", self.address, e)
        else:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SHARED_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            self.connected[address] = sock
            asyncio.get_running_loop().add_reader(sock.fileno(), self._readable, sock)
        self.hand.send(TIE, self.address, address)

    def _untie(self, address: tuple[str, int]) -> None:
        sock = self.connected.pop(address, None)
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        self.hand.send(UNTIE, self.address, address)


# Receive buffer of a shared port: every connection's bursts queue on it (aioice gives each
# of its own sockets the same size).
SHARED_BUFFER = 8 * 1024 * 1024


class _Share(asyncio.DatagramTransport):
    """One connection's view of a shared port: it sends through it and leaves it on close."""

    def __init__(self, shared: SharedPort, member: aioice.ice.StunProtocol) -> None:
        super().__init__()
        self._shared, self._member = shared, member
        self._closing = False

    def sendto(self, data: Any, addr: Any = None) -> None:
        if not self._closing:
            self._shared.send(data, addr)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self._shared.sock
        if name == "sockname":
            return (self._shared.address, self._shared.port)
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._shared.demux.leave(self._member)
        asyncio.get_running_loop().call_soon(self._member.connection_lost, None)

    def abort(self) -> None:
        self.close()


async def _component_candidates(
    connection: aioice.ice.Connection, component: int, addresses: list[str], timeout: int = 5
) -> list[aioice.Candidate]:
    """aioice's gathering, with the host candidates on the shared port, and a passive TCP
    candidate on the TCP media port."""
    if _OWN_PORTS.get() or (_MEDIA_PORT is None and _MEDIA_TCP_PORT is None):
        return await _original_component_candidates(connection, component, addresses, timeout)
    tcp = []
    if _MEDIA_TCP_PORT is not None:
        for address in addresses:
            await _tcp_server(address, _MEDIA_TCP_PORT)
            tcp.append(_tcp_candidate(component, address, _MEDIA_TCP_PORT))
    if _MEDIA_PORT is None:
        found = await _original_component_candidates(connection, component, addresses, timeout)
        return found + tcp
    members = []
    if _WORKER is not None:
        addresses = [a for a in addresses if a in _SHARED]  # the node's ports are bound on these
    for address in addresses:
        # A worker's are the node's, made at its start (`open_media_ports`).
        shared = (
            _SHARED[address] if _WORKER is not None else await SharedPort.on(address, _MEDIA_PORT)
        )
        member = aioice.ice.StunProtocol(connection)
        member.connection_made(_Share(shared, member))
        member.local_candidate = aioice.Candidate(
            foundation=candidate_foundation("host", "udp", address),
            component=component,
            transport="udp",
            priority=candidate_priority(component, "host"),
            host=address,
            port=_MEDIA_PORT,
            type="host",
        )
        shared.demux.join(connection.local_username, member)
        members.append(member)
    connection._protocols += members
    # Relayed candidates (TURN), if any are configured, as aioice gathers them.
    others = await _original_component_candidates(connection, component, [], timeout)
    return [m.local_candidate for m in members] + tcp + others


# -- ICE over TCP (RFC 6544), passive: for networks that let no UDP through -------------------

_TCP_SERVERS: dict[str, asyncio.Server] = {}
# Bytes a TCP path may have waiting to be sent before datagrams are dropped, as a congested
# UDP path would drop them: queued longer, media is only late.
TCP_BACKLOG = 512 * 1024
# Frames on a TCP connection before its first authenticated check: more, and it is closed.
TCP_STRANGER_FRAMES = 4


async def _tcp_server(address: str, port: int) -> None:
    if _WORKER is not None:
        return  # the server listens, and hands this process its connections (`_adopt_tcp`)
    server = _TCP_SERVERS.get(address)
    if server is not None and server.is_serving():
        return
    try:
        server = await asyncio.get_running_loop().create_server(
            lambda: _TcpPath(address, port), host=address, port=port, reuse_address=True
        )
    except OSError as e:
        raise OSError(e.errno, f"media TCP port {address}:{port}: {e.strerror}") from None
    _TCP_SERVERS[address] = server


async def _adopt_tcp(address: str, port: int, sock: socket.socket, buffered: bytes) -> None:
    """Serve a TCP connection the server handed over, with what it read of it so far."""
    path = _TcpPath(address, port)
    try:
        await asyncio.get_running_loop().connect_accepted_socket(lambda: path, sock=sock)
    except OSError:
        sock.close()
        return
    path.data_received(buffered)


def _tcp_candidate(component: int, address: str, port: int) -> aioice.Candidate:
    """A passive TCP host candidate: below every UDP one, so it is the path of last resort
    before TURN (RFC 6544 4.2: UDP preferred)."""
    return aioice.Candidate(
        foundation=candidate_foundation("host", "tcp", address),
        component=component,
        transport="tcp",
        priority=candidate_priority(component, "host", local_pref=0) - (40 << 24),
        host=address,
        port=port,
        type="host",
        tcptype="passive",
    )


class _TcpPath(asyncio.Protocol):
    """One TCP connection a browser opened to the media port, carrying one ICE connection's
    STUN, DTLS and SRTP as RFC 4571 frames (a 16-bit length, then the datagram)."""

    def __init__(self, address: str, port: int) -> None:
        self.address, self.port = address, port
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.member: aioice.ice.StunProtocol | None = None
        self._buffer = bytearray()
        self._strange = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1])
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 2:
            size = int.from_bytes(self._buffer[:2], "big")
            if len(self._buffer) < 2 + size:
                return
            frame = bytes(self._buffer[2 : 2 + size])
            del self._buffer[: 2 + size]
            self._frame(frame)
            if self.transport is None or self.transport.is_closing():
                return

    def _frame(self, data: bytes) -> None:
        if self.member is None and not self._adopt(data):
            self._strange += 1
            INGRESS.drop(kind_of(data), "on the TCP media port before a valid check")
            if self._strange >= TCP_STRANGER_FRAMES and self.transport is not None:
                self.transport.close()
            return
        assert self.member is not None
        guarded_datagram_received(self.member, data, self.peer)  # drops what is broken

    def _adopt(self, data: bytes) -> bool:
        """Tie this TCP connection to the ICE connection its first check is signed for."""
        username = request_username(data) if kind_of(data) == STUN else None
        if username is None:
            return False
        connection = _LIVE.get(username.split(":", 1)[0])
        if connection is None or connection._closing:
            return False
        member = aioice.ice.StunProtocol(connection)
        if not _authentic(member, data):
            return False
        member.connection_made(_TcpShare(self, member))
        member.local_candidate = _tcp_candidate(1, self.address, self.port)
        connection._protocols.append(member)
        self.member = member
        return True

    def send(self, data: bytes) -> None:
        """Send one datagram as a frame, or drop it while the path is backed up."""
        if self.transport is None or self.transport.is_closing():
            return
        if self.transport.get_write_buffer_size() > TCP_BACKLOG:
            INGRESS.drop(kind_of(data), "not sent: the TCP media path is backed up")
            return
        self.transport.write(len(data).to_bytes(2, "big") + data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.member is not None:
            self.member.connection_lost(exc)


class _TcpShare(asyncio.DatagramTransport):
    """A TCP path as the datagram transport its ICE connection sends on."""

    def __init__(self, path: _TcpPath, member: aioice.ice.StunProtocol) -> None:
        super().__init__()
        self._path, self._member = path, member

    def sendto(self, data: Any, addr: Any = None) -> None:
        self._path.send(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return (self._path.address, self._path.port)
        return default  # no "socket": the compiled path sends datagrams, not frames

    def is_closing(self) -> bool:
        return self._path.transport is None or self._path.transport.is_closing()

    def close(self) -> None:
        if self._path.transport is not None:
            self._path.transport.close()

    def abort(self) -> None:
        if self._path.transport is not None:
            self._path.transport.abort()
