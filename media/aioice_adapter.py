"""Every use of aioice internals (aiortc's ICE) but the shared ports', in one place, so an
upgrade breaks here or in `aioice_ports.py` alone.

Built against aioice 0.13.0: what reaches an ICE port is checked before aioice parses it,
consent freshness is checked more often, and host candidates can be pinned to addresses.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
import time
import weakref
from collections.abc import Callable
from typing import Any

import aioice
import aioice.ice
import aioice.stun
from aiortc.rtp import is_rtcp

from .datagrams import INGRESS, RTP, STUN, broken, kind_of
from .fastcopy import FAST
from .overload import LOAD

log = logging.getLogger("teleconsult.media")


# Connections whose media datagrams are offered straight from the socket to a taker (it tells
# whether it took the datagram), instead of waiting in the connection's queue for a task.
_TAKERS: weakref.WeakKeyDictionary[aioice.ice.Connection, Callable[[bytes], bool]] = (
    weakref.WeakKeyDictionary()
)


def take_datagrams_now(connection: aioice.ice.Connection, taker: Callable[[bytes], bool]) -> None:
    """Offer this connection's non-STUN datagrams to `taker` as they arrive (it must not hold
    a strong reference to the connection: the registry holds it weakly)."""
    _TAKERS[connection] = taker


def taker_of(connection: aioice.ice.Connection) -> Callable[[bytes], bool] | None:
    """Return what takes this connection's datagrams as they arrive, if anything does."""
    return _TAKERS.get(connection)


# The most datagrams read from one ICE socket per readiness event (see `_drained`).
DRAIN = 32
# Linux's SO_TIMESTAMPNS (and SCM_TIMESTAMPNS), which the socket module does not name.
SO_TIMESTAMPNS = 35
_STAMP_SPACE = socket.CMSG_SPACE(16)  # a struct timespec
# The ICE sockets whose datagrams the kernel stamps with their arrival.
_STAMPED: weakref.WeakSet[aioice.ice.StunProtocol] = weakref.WeakSet()


def _drained(protocol: aioice.ice.StunProtocol, data: bytes | str, addr: tuple[Any, ...]) -> None:
    """Take a datagram asyncio read, then the ones already waiting on the same socket.

    asyncio reads one datagram per readiness event, so each costs a pass of the event loop
    and an epoll_wait besides its recvfrom; a frame arrives as a burst of packets, and
    reading the burst at once saves most of those system calls. How long each of those
    waited in the queue tells the node whether it keeps up (`media/overload.py`).
    """
    guarded_datagram_received(protocol, data, addr)
    transport = protocol.transport
    sock = getattr(transport, "_sock", None)
    if sock is None:
        return
    try:
        if protocol not in _STAMPED:
            _STAMPED.add(protocol)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        waiting = waiting_datagrams(sock)
    except OSError as exc:  # an ICMP error, say: as asyncio itself hands it on
        protocol.error_received(exc)
        return
    # The node's load shows in how long its publishers' media waited: they send at their own
    # pace, where RTCP comes now and then (and a client in the same process would come only
    # when the node's loop lets it). The oldest datagram of the read tells how far behind the
    # loop is; the newest may have just come.
    if protocol.receiver in _TAKERS:
        oldest = max(
            (w for d, _, w in waiting if kind_of(d) == RTP and not is_rtcp(d)), default=-1.0
        )
        if oldest >= 0:
            LOAD.waited(oldest)
    for data, addr, _waited in waiting:
        if transport.is_closing():
            return
        guarded_datagram_received(protocol, data, addr)


def waiting_datagrams(sock: socket.socket) -> list[tuple[bytes, tuple[Any, ...], float]]:
    """Read what waits on a socket (up to DRAIN - 1), with the seconds each waited."""
    if FAST is not None:
        return FAST.drain(sock.fileno(), DRAIN - 1)  # type: ignore[no-any-return]
    out = []
    for _ in range(DRAIN - 1):
        try:
            data, ancillary, _flags, addr = sock.recvmsg(65536, _STAMP_SPACE)
        except (BlockingIOError, InterruptedError):
            break
        waited = -1.0
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                seconds, nanoseconds = struct.unpack("qq", value[:16])
                waited = time.time() - (seconds + nanoseconds / 1e9)
        out.append((data, addr, waited))
    return out


def guarded_datagram_received(
    protocol: aioice.ice.StunProtocol, data: bytes | str, addr: tuple[Any, ...]
) -> None:
    """Take one datagram on an ICE port: drop what is broken, hand on the rest by kind.

    Replaces aioice's own, which lets parse errors other than ValueError escape and passes
    whatever is not STUN (an empty datagram included) to the DTLS transport, which then ends.
    """
    data = bytes(data) if isinstance(data, bytes | bytearray) else data.encode()
    why = broken(data)
    if why is not None:
        INGRESS.drop(why, "too short, wrong version or not for this port")
        return
    if kind_of(data) != STUN:
        # DTLS and SRTP authenticate what they accept; aioice would only try STUN on it.
        connection = protocol.receiver
        taker = _TAKERS.get(connection)
        # Taken now only with nothing queued before it, so that the order stays the arrival's.
        if taker is None or not connection._queue.empty() or not taker(data):
            connection.data_received(data, protocol.local_candidate.component)
        return
    try:
        message = aioice.stun.parse_message(data)
    except Exception as e:
        INGRESS.drop(STUN, f"unparsable: {type(e).__name__}")
        return
    try:
        if message.message_class in (aioice.stun.Class.RESPONSE, aioice.stun.Class.ERROR):
            # aioice checks a response's integrity against its request's key.
            transaction = protocol.transactions.get(message.transaction_id)
            if transaction is not None:
                transaction.response_received(message, (addr[0], addr[1]))
        elif message.message_class == aioice.stun.Class.REQUEST:
            # aioice answers a request without valid integrity with 400 or 401 and goes no
            # further (RFC 8489 9.1.3); only an authenticated check reaches ICE.
            protocol.receiver.request_received(message, (addr[0], addr[1]), protocol)
        # Indications (keepalives) need nothing, as in aioice.
    except Exception as e:
        INGRESS.drop(STUN, f"refused: {type(e).__name__}")


def guard_ice_ports() -> None:
    """Make every ICE port of this process drop broken datagrams before aioice sees them."""
    aioice.ice.StunProtocol.datagram_received = _drained  # type: ignore[method-assign,assignment]


# Consent freshness (RFC 7675) checked every second, lost after four unanswered checks: a dead
# media path is noticed in about 4 s instead of aioice's 30 s.
CONSENT_INTERVAL = 1.0
CONSENT_FAILURES = 4


def quick_consent() -> None:
    """Make ICE in this process notice a dead media path within about four seconds."""
    aioice.ice.CONSENT_INTERVAL = CONSENT_INTERVAL  # type: ignore[assignment]
    aioice.ice.CONSENT_FAILURES = CONSENT_FAILURES
    aioice.ice.Connection.query_consent = _query_consent  # type: ignore[method-assign,assignment]


async def _answered(connection: aioice.ice.Connection, pair: Any) -> bool:
    """Send one consent check on a pair (no retransmission, as aioice); tell whether it was
    answered."""
    assert connection.remote_password is not None
    request = connection.build_request(pair, nominate=False)
    try:
        await pair.protocol.request(
            request,
            pair.remote_addr,
            integrity_key=connection.remote_password.encode("utf8"),
            retransmissions=0,
        )
    except aioice.stun.TransactionError:
        return False
    return True


async def _query_consent(connection: aioice.ice.Connection) -> None:
    """Check consent (RFC 7675) as aioice does, with one last check before it expires.

    A check sent while the path was down times out up to half a second after the path came
    back (a link down for 5 s, say); taken for the last of the misses, it ended a path that
    worked again, and the client had to subscribe anew. One more check, sent then, tells.
    """
    failures = 0
    while True:
        await asyncio.sleep(CONSENT_INTERVAL * (0.8 + 0.4 * random.random()))
        for pair in list(connection._nominated.values()):
            failures = 0 if await _answered(connection, pair) else failures + 1
        if failures < CONSENT_FAILURES:
            continue
        pairs = list(connection._nominated.values())
        answered = [await _answered(connection, pair) for pair in pairs]
        if pairs and all(answered):
            failures = 0
            continue
        # As aioice: the task is done before close(), which would otherwise cancel it.
        connection._query_consent_task = None
        await connection.close()
        return


_original_send_data = aioice.ice.StunProtocol.send_data


def nominated_pair(connection: aioice.ice.Connection) -> Any:
    """Return the connection's nominated candidate pair (its identity changes with the path)."""
    pair = connection._nominated.get(1)
    if pair is None:
        raise ConnectionError("Cannot send data, not connected")
    return pair


def plain_socket(pair: Any) -> tuple[int, tuple[str, int]] | None:
    """Return (file descriptor, remote address) when the pair is an ordinary socket that sends
    datagrams unchanged (not a TURN allocation, not a test's replaced send), else None."""
    protocol = pair.protocol
    if type(protocol) is not aioice.ice.StunProtocol or (
        type(protocol).send_data is not _original_send_data
    ):
        return None
    sock = protocol.transport.get_extra_info("socket")
    if sock is None:
        return None
    host, port = pair.remote_addr[:2]
    return sock.fileno(), (host, port)


def send_datagram_now(connection: aioice.ice.Connection, data: bytes) -> bool:
    """Send a datagram on the connection's nominated pair at once, when that pair is an
    ordinary socket that sends it unchanged; tell whether it did (else use `send`)."""
    pair = nominated_pair(connection)
    protocol = pair.protocol
    if type(protocol) is not aioice.ice.StunProtocol or (
        type(protocol).send_data is not _original_send_data
    ):
        return False
    protocol.transport.sendto(data, pair.remote_addr)
    return True


_original_host_addresses = aioice.ice.get_host_addresses


def use_host_addresses(addresses: list[str] | None) -> None:
    """Gather ICE host candidates on these addresses only (None: aioice's own choice).

    aioice never offers 127.0.0.1; on loopback, or to pin one interface, we say which.
    """
    if addresses is None:
        aioice.ice.get_host_addresses = _original_host_addresses
        return
    chosen = list(addresses)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses


def host_addresses() -> list[str]:
    """The addresses ICE gathers host candidates on in this process."""
    return list(aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True))
