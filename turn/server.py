"""A TURN server (RFC 8656 over RFC 8489 STUN) in asyncio: UDP and TCP listeners, UDP relays.

Messages are parsed and built with aioice's STUN codec; this module owns allocations,
permissions, channels, authentication and the relays.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import ssl
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aioice import stun

from . import credentials
from .policy import PeerPolicy
from .transports import Relay, TcpConnection, UdpListener
from .wire import (
    FIRST_CHANNEL,
    IPV4,
    LAST_CHANNEL,
    Address,
    Send,
    attribute,
    is_channel_data,
    unknown_required,
)

log = logging.getLogger("teleconsult.turn")


PERMISSION_LIFETIME = 300.0
CHANNEL_LIFETIME = 600.0
DEFAULT_LIFETIME = 600
MAX_LIFETIME = 3600
NONCE_LIFETIME = 600.0
UDP = 17
REQUESTED_ADDRESS_FAMILY = 0x0017


@dataclass
class Allocation:
    """One client's relay: its socket, lifetime, permissions and channels."""

    key: tuple[str, Address]
    username: str
    send: Send
    relay: asyncio.DatagramTransport | None = None
    relay_address: Address = ("", 0)
    expires: float = 0.0
    permissions: dict[str, float] = field(default_factory=dict)
    channels: dict[int, tuple[Address, float]] = field(default_factory=dict)
    by_peer: dict[Address, int] = field(default_factory=dict)


@dataclass
class Stats:
    """What the server counts for /metrics."""

    allocations: int = 0
    relayed_bytes: int = 0
    auth_failures: int = 0
    errors: Counter[int] = field(default_factory=Counter)


class TurnServer:
    """Serves TURN for participants holding credentials minted with the shared secret."""

    def __init__(
        self,
        secret: str,
        realm: str = "teleconsult",
        host: str = "127.0.0.1",
        port: int = 3478,
        relay_host: str | None = None,
        policy: PeerPolicy | None = None,
        quota: int = 10,
        max_allocations: int = 1000,
        clock: Callable[[], float] = time.time,
        tls: ssl.SSLContext | None = None,
        tls_port: int = 5349,
    ) -> None:
        self.secret = secret
        self.realm = realm
        self.host = host
        self.port = port
        self.relay_host = relay_host or host
        self.policy = policy or PeerPolicy(own=[host])
        self.quota = quota
        self.max_allocations = max_allocations
        self.clock = clock
        self.allocations: dict[tuple[str, Address], Allocation] = {}
        # The relays' own ports: never a peer (a relay sending to a relay is a loop).
        self.relay_ports: set[int] = set()
        self.stats = Stats()
        self._nonce_key = secrets.token_bytes(16)
        self._servers: list[Any] = []
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.udp_address: Address = (host, port)
        self.tcp_address: Address = (host, port)
        self.tls = tls
        self.tls_port = tls_port
        self.tls_address: Address | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on UDP and TCP."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: UdpListener(self), local_addr=(self.host, self.port)
        )
        self._servers.append(transport)
        self.udp_address = transport.get_extra_info("sockname")[:2]
        try:
            tcp = await loop.create_server(
                lambda: TcpConnection(self), self.host, self.port or self.udp_address[1]
            )
        except OSError:
            if self.port:
                raise
            # An ephemeral UDP port's number may be taken for TCP: take another.
            tcp = await loop.create_server(lambda: TcpConnection(self), self.host, 0)
        self._servers.append(tcp)
        self.tcp_address = tcp.sockets[0].getsockname()[:2]
        if self.tls is not None:
            # TURN over TLS ("turns:"): the same framing as TCP, inside TLS.
            tls = await loop.create_server(
                lambda: TcpConnection(self, "tls"), self.host, self.tls_port, ssl=self.tls
            )
            self._servers.append(tls)
            self.tls_address = tls.sockets[0].getsockname()[:2]
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def stop(self) -> None:
        """Close every relay and listener."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        for allocation in list(self.allocations.values()):
            self._release(allocation)
        for server in self._servers:
            server.close()

    # -- one datagram or framed message from a client ----------------------------------------

    def handle(self, data: bytes, transport: str, client: Address, send: Send) -> None:
        """Answer one message; bad input gets the RFC's error or is dropped, nothing more."""
        if is_channel_data(data):
            self._channel_data(data, transport, client)
            return
        try:
            message = stun.parse_message(data)
        except (ValueError, struct.error, IndexError, KeyError):
            return  # not STUN (or broken): dropped, as RFC 8489 section 6.3 says
        try:
            self._dispatch(message, data, transport, client, send)
        except Exception:  # one bad message never takes the server down
            log.exception("TURN message handling failed")

    def _dispatch(
        self, m: stun.Message, raw: bytes, transport: str, client: Address, send: Send
    ) -> None:
        if m.message_class == stun.Class.INDICATION:
            if m.message_method == stun.Method.SEND:
                self._send_indication(m, transport, client)
            return
        if m.message_class != stun.Class.REQUEST:
            return
        unknown = unknown_required(raw)
        if unknown:
            self._error(send, m, 420, "Unknown Attribute", extra={"UNKNOWN": unknown})
            return
        if m.message_method == stun.Method.BINDING:
            response = stun.Message(
                stun.Method.BINDING,
                stun.Class.RESPONSE,
                m.transaction_id,
                {"XOR-MAPPED-ADDRESS": client},
            )
            response.add_fingerprint()
            send(bytes(response))
            return
        key = self._authenticate(m, send)
        if key is None:
            return
        if m.message_method == stun.Method.ALLOCATE:
            family = attribute(raw, REQUESTED_ADDRESS_FAMILY)
            if family is not None and family[:1] != bytes([IPV4]):
                self._error(send, m, 440, "Address Family not Supported", key)
                return
        handler = {
            stun.Method.ALLOCATE: self._allocate,
            stun.Method.REFRESH: self._refresh,
            stun.Method.CREATE_PERMISSION: self._create_permission,
            stun.Method.CHANNEL_BIND: self._channel_bind,
        }.get(m.message_method)
        if handler is None:
            self._error(send, m, 400, "Bad Request", key)
            return
        handler(m, key, transport, client, send)

    # -- authentication ----------------------------------------------------------------------

    def _nonce(self) -> bytes:
        expiry = int(self.clock() + NONCE_LIFETIME)
        mac = hmac.new(self._nonce_key, str(expiry).encode(), hashlib.sha256).hexdigest()[:16]
        return f"{expiry:x}-{mac}".encode()

    def _nonce_ok(self, nonce: bytes) -> bool:
        expiry_hex, _, mac = nonce.partition(b"-")
        try:
            expiry = int(expiry_hex.decode("ascii"), 16)
        except ValueError:  # not ASCII, or not hexadecimal
            return False
        good = hmac.new(self._nonce_key, str(expiry).encode(), hashlib.sha256).hexdigest()[:16]
        return hmac.compare_digest(mac, good.encode()) and expiry >= self.clock()

    def _authenticate(self, m: stun.Message, send: Send) -> bytes | None:
        a = m.attributes
        if "MESSAGE-INTEGRITY" not in a:
            self._error(send, m, 401, "Unauthorized", challenge=True)
            return None
        if not all(k in a for k in ("USERNAME", "REALM", "NONCE")):
            self._error(send, m, 400, "Bad Request")
            return None
        if not self._nonce_ok(a["NONCE"]):
            self._error(send, m, 438, "Stale Nonce", challenge=True)
            return None
        password = credentials.check(self.secret, a["USERNAME"], self.clock())
        key = None
        if password is not None and a["REALM"] == self.realm:
            key = hashlib.md5(f"{a['USERNAME']}:{self.realm}:{password}".encode()).digest()
        if key is None or not m.check_message_integrity(key):
            self.stats.auth_failures += 1
            self._error(send, m, 401, "Unauthorized", challenge=True)
            return None
        return key

    # -- methods -----------------------------------------------------------------------------

    def _allocate(
        self, m: stun.Message, key: bytes, transport: str, client: Address, send: Send
    ) -> None:
        five = (transport, client)
        if five in self.allocations:
            self._error(send, m, 437, "Allocation Mismatch", key)
            return
        if m.attributes.get("REQUESTED-TRANSPORT") != UDP << 24:
            self._error(send, m, 442, "Unsupported Transport Protocol", key)
            return
        username = m.attributes["USERNAME"]
        who = credentials.identity(username)
        mine = sum(
            1 for al in self.allocations.values() if credentials.identity(al.username) == who
        )
        if mine >= self.quota or len(self.allocations) >= self.max_allocations:
            self._error(send, m, 486, "Allocation Quota Reached", key)
            return
        allocation = Allocation(five, username, send)
        self.allocations[five] = allocation
        lifetime = self._lifetime(m)
        allocation.expires = self.clock() + lifetime
        loop = asyncio.get_running_loop()

        async def open_relay() -> None:
            try:
                relay, _ = await loop.create_datagram_endpoint(
                    lambda: Relay(lambda data, peer: self.from_peer(allocation, data, peer)),
                    local_addr=(self.relay_host, 0),
                )
            except OSError:
                self.allocations.pop(five, None)
                self._error(send, m, 508, "Insufficient Capacity", key)
                return
            allocation.relay = relay
            allocation.relay_address = relay.get_extra_info("sockname")[:2]
            self.relay_ports.add(allocation.relay_address[1])
            self.stats.allocations += 1
            self._reply(
                send,
                m,
                key,
                {
                    "XOR-RELAYED-ADDRESS": allocation.relay_address,
                    "XOR-MAPPED-ADDRESS": client,
                    "LIFETIME": lifetime,
                },
            )

        task = loop.create_task(open_relay())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refresh(
        self, m: stun.Message, key: bytes, transport: str, client: Address, send: Send
    ) -> None:
        allocation = self.allocations.get((transport, client))
        if allocation is None or allocation.username != m.attributes["USERNAME"]:
            self._error(send, m, 437, "Allocation Mismatch", key)
            return
        lifetime = self._lifetime(m)
        if lifetime == 0:
            self._release(allocation)
        else:
            allocation.expires = self.clock() + lifetime
        self._reply(send, m, key, {"LIFETIME": lifetime})

    def _create_permission(
        self, m: stun.Message, key: bytes, transport: str, client: Address, send: Send
    ) -> None:
        allocation = self._owned(m, key, transport, client, send)
        if allocation is None:
            return
        peer = m.attributes.get("XOR-PEER-ADDRESS")
        if peer is None:
            self._error(send, m, 400, "Bad Request", key)
            return
        if not self.policy.permits(peer[0]):
            self._error(send, m, 403, "Forbidden", key)
            return
        allocation.permissions[peer[0]] = self.clock() + PERMISSION_LIFETIME
        self._reply(send, m, key, {})

    def _channel_bind(
        self, m: stun.Message, key: bytes, transport: str, client: Address, send: Send
    ) -> None:
        allocation = self._owned(m, key, transport, client, send)
        if allocation is None:
            return
        number, peer = m.attributes.get("CHANNEL-NUMBER"), m.attributes.get("XOR-PEER-ADDRESS")
        if number is None or peer is None or not FIRST_CHANNEL <= number <= LAST_CHANNEL:
            self._error(send, m, 400, "Bad Request", key)
            return
        bound = allocation.channels.get(number)
        if (bound is not None and bound[0] != peer) or allocation.by_peer.get(
            peer, number
        ) != number:
            self._error(send, m, 400, "Bad Request", key)
            return
        if not self.policy.permits(peer[0]) or not self._reaches(peer):
            self._error(send, m, 403, "Forbidden", key)
            return
        now = self.clock()
        allocation.channels[number] = (peer, now + CHANNEL_LIFETIME)
        allocation.by_peer[peer] = number
        allocation.permissions[peer[0]] = now + PERMISSION_LIFETIME
        self._reply(send, m, key, {})

    # -- data --------------------------------------------------------------------------------

    def _send_indication(self, m: stun.Message, transport: str, client: Address) -> None:
        allocation = self.allocations.get((transport, client))
        peer, data = m.attributes.get("XOR-PEER-ADDRESS"), m.attributes.get("DATA")
        if allocation is None or allocation.relay is None or peer is None or data is None:
            return
        if allocation.permissions.get(peer[0], 0) >= self.clock() and self._reaches(peer):
            allocation.relay.sendto(data, peer)
            self.stats.relayed_bytes += len(data)

    def _channel_data(self, data: bytes, transport: str, client: Address) -> None:
        allocation = self.allocations.get((transport, client))
        if allocation is None or allocation.relay is None or len(data) < 4:
            return
        number, length = struct.unpack("!HH", data[:4])
        if len(data) < 4 + length:
            return  # truncated: dropped
        bound = allocation.channels.get(number)
        if bound is None or bound[1] < self.clock():
            return
        payload = data[4 : 4 + length]
        allocation.relay.sendto(payload, bound[0])
        self.stats.relayed_bytes += len(payload)

    def from_peer(self, allocation: Allocation, data: bytes, peer: Address) -> None:
        """Pass a peer's datagram to the client, if the client permitted that peer."""
        now = self.clock()
        if allocation.permissions.get(peer[0], 0) < now:
            return
        self.stats.relayed_bytes += len(data)
        number = allocation.by_peer.get(peer)
        if number is not None and allocation.channels[number][1] >= now:
            frame = struct.pack("!HH", number, len(data)) + data
            if allocation.key[0] in ("tcp", "tls"):
                frame += bytes(stun.padding_length(len(data)))
            allocation.send(frame)
            return
        indication = stun.Message(
            stun.Method.DATA,
            stun.Class.INDICATION,
            attributes={"XOR-PEER-ADDRESS": peer, "DATA": data},
        )
        allocation.send(bytes(indication))

    # -- helpers -----------------------------------------------------------------------------

    def _owned(
        self, m: stun.Message, key: bytes, transport: str, client: Address, send: Send
    ) -> Allocation | None:
        allocation = self.allocations.get((transport, client))
        if allocation is None or allocation.username != m.attributes["USERNAME"]:
            self._error(send, m, 437, "Allocation Mismatch", key)
            return None
        return allocation

    @staticmethod
    def _lifetime(m: stun.Message) -> int:
        asked = m.attributes.get("LIFETIME", DEFAULT_LIFETIME)
        return 0 if asked == 0 else max(DEFAULT_LIFETIME, min(int(asked), MAX_LIFETIME))

    def _reply(self, send: Send, m: stun.Message, key: bytes, attrs: dict[str, Any]) -> None:
        response = stun.Message(m.message_method, stun.Class.RESPONSE, m.transaction_id, attrs)
        response.add_message_integrity(key)
        send(bytes(response))

    def _error(
        self,
        send: Send,
        m: stun.Message,
        code: int,
        reason: str,
        key: bytes | None = None,
        challenge: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.stats.errors[code] += 1
        attrs: dict[str, Any] = {"ERROR-CODE": (code, reason)}
        if challenge:
            attrs.update({"REALM": self.realm, "NONCE": self._nonce()})
        response = stun.Message(m.message_method, stun.Class.ERROR, m.transaction_id, attrs)
        raw = bytes(response)
        if extra and "UNKNOWN" in extra:
            # UNKNOWN-ATTRIBUTES (0x000A) is not in aioice's table: append it by hand.
            values = b"".join(struct.pack("!H", t) for t in extra["UNKNOWN"])
            attr = (
                struct.pack("!HH", 0x000A, len(values))
                + values
                + bytes(stun.padding_length(len(values)))
            )
            raw = stun.set_body_length(raw + attr, len(raw) - 20 + len(attr))
            send(raw)
            return
        if key is not None:
            response.add_message_integrity(key)
        else:
            response.add_fingerprint()
        send(bytes(response))

    def lost(self, transport: str, client: Address) -> None:
        """A client's TCP or TLS connection closed: its allocation goes with it."""
        allocation = self.allocations.get((transport, client))
        if allocation is not None:
            self._release(allocation)

    def _reaches(self, peer: Address) -> bool:
        """Tell whether a datagram may go to this peer's port: as the policy says, and never to
        one of this server's own ports on the node's own address (a loop)."""
        if peer[0] in self.policy.own_hosts and self.own_port(peer[1]):
            return False
        return self.policy.permits_port(*peer)

    def own_port(self, port: int) -> bool:
        """Tell whether a port of this host is the server's own: a listener or a relay."""
        listening = (self.udp_address[1], self.tcp_address[1])
        tls = () if self.tls_address is None else (self.tls_address[1],)
        return port in listening or port in tls or port in self.relay_ports

    def _release(self, allocation: Allocation) -> None:
        self.allocations.pop(allocation.key, None)
        if allocation.relay is not None:
            allocation.relay.close()
            self.relay_ports.discard(allocation.relay_address[1])

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(5)
            self.sweep()

    def sweep(self) -> None:
        """Drop expired allocations, permissions and channels."""
        now = self.clock()
        for allocation in list(self.allocations.values()):
            if allocation.expires < now:
                self._release(allocation)
                continue
            allocation.permissions = {p: e for p, e in allocation.permissions.items() if e >= now}
            for number, (peer, expires) in list(allocation.channels.items()):
                if expires < now:
                    del allocation.channels[number]
                    allocation.by_peer.pop(peer, None)
