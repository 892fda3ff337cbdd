"""Which ICE connection a datagram on a shared media port belongs to: by the address it came
from, once an authenticated check or an answer to our own check tied that address to one."""

from __future__ import annotations

import struct
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from .datagrams import STUN, kind_of

M = TypeVar("M", bound=Hashable)

USERNAME = 0x0006  # STUN attribute (RFC 8489)
REQUEST, RESPONSE_SUCCESS, RESPONSE_ERROR = 0x0000, 0x0100, 0x0110  # class bits of the type
CLASS_MASK = 0x0110
HEADER = 20


def request_username(data: bytes) -> str | None:
    """The USERNAME of a STUN request, or None (another class, none, or malformed)."""
    if len(data) < HEADER:
        return None
    kind, length = struct.unpack_from("!HH", data)
    if kind & CLASS_MASK != REQUEST:
        return None
    at, end = HEADER, min(len(data), HEADER + length)
    while at + 4 <= end:
        attribute, size = struct.unpack_from("!HH", data, at)
        if attribute == USERNAME:
            value = data[at + 4 : at + 4 + size]
            return value.decode("utf-8", "replace") if len(value) == size else None
        at += 4 + size + (-size % 4)  # values are padded to 4 bytes
    return None


# The characters a username fragment is made of (aioice's): with media workers, the first one
# names the worker that holds the connection, and the first byte of a transaction id the
# worker that asked.
UFRAG_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def worker_named(data: bytes) -> int | None:
    """The media worker a STUN datagram names: a check's recipient by the first character of
    its username fragment, a response by its transaction id; None for anything else."""
    if kind_of(data) != STUN:
        return None
    username = request_username(data)
    if username is not None:
        index = UFRAG_ALPHABET.find(username[:1])
        return index if username and index >= 0 else None
    transaction = response_transaction(data)
    return transaction[0] if transaction is not None else None


def response_transaction(data: bytes) -> bytes | None:
    """The transaction id of a STUN success or error response, or None."""
    if len(data) < HEADER:
        return None
    (kind,) = struct.unpack_from("!H", data)
    if kind & CLASS_MASK not in (RESPONSE_SUCCESS, RESPONSE_ERROR):
        return None
    return data[8:HEADER]


class Demux(Generic[M]):
    """The connections sharing one port: each known by its local ICE username fragment, and by
    the remote addresses proven to be its peer's.

    An address is tied to a connection only by a check that connection can authenticate
    (`authentic`: its MESSAGE-INTEGRITY, keyed with the connection's password) or by an answer
    to one of that connection's own checks (`asked`: its transaction id, 96 random bits). So a
    datagram from anyone else, however it is forged, changes no connection's path.
    """

    def __init__(
        self,
        authentic: Callable[[M, bytes], bool],
        asked: Callable[[M, bytes], bool],
        on_tie: Callable[[tuple[str, int]], None] | None = None,
        on_untie: Callable[[tuple[str, int]], None] | None = None,
    ) -> None:
        self._authentic = authentic
        self._asked = asked
        # Told when an address gets its first connection here, and when it has none left.
        self._on_tie = on_tie
        self._on_untie = on_untie
        self._by_ufrag: dict[str, M] = {}
        self._by_address: dict[tuple[str, int], M] = {}
        self._addresses: dict[M, set[tuple[str, int]]] = {}

    def __len__(self) -> int:
        return len(self._by_ufrag)

    def join(self, ufrag: str, member: M) -> None:
        """Add a connection by its local username fragment."""
        self._by_ufrag[ufrag] = member
        self._addresses.setdefault(member, set())

    def leave(self, member: M) -> None:
        """Forget a connection and every address tied to it."""
        for ufrag in [u for u, m in self._by_ufrag.items() if m == member]:
            del self._by_ufrag[ufrag]
        for address in self._addresses.pop(member, set()):
            if self._by_address.get(address) == member:
                self.untie(address)

    def untie(self, address: tuple[str, int]) -> None:
        """Forget an address (another process's connection took it)."""
        member = self._by_address.pop(address, None)
        if member is None:
            return
        self._addresses.get(member, set()).discard(address)
        if self._on_untie is not None:
            self._on_untie(address)

    def tied(self, address: tuple[str, int]) -> bool:
        """Whether a connection here has this address."""
        return address in self._by_address

    def route(self, data: bytes, address: tuple[str, int]) -> M | None:
        """Return the connection a datagram from `address` is for, or None (drop it)."""
        member = self._by_address.get(address)
        if member is not None:
            if kind_of(data) == STUN:
                # A check for another of our connections from an address in use (a client
                # that closed one connection and reuses its port for the next).
                other = self._checked(data)
                if other is not None and other != member and self._authentic(other, data):
                    self._tie(address, other)
                    return other
            return member
        if kind_of(data) != STUN:
            return None  # media from an address no check of ours has come from
        member = self._checked(data)
        if member is not None:
            if self._authentic(member, data):
                self._tie(address, member)
            # Unauthenticated, it still goes to its connection, which refuses it (400, 401):
            # nothing is tied.
            return member
        transaction = response_transaction(data)
        if transaction is not None:
            for candidate in self._addresses:
                if self._asked(candidate, transaction):
                    self._tie(address, candidate)
                    return candidate
        return None

    def _checked(self, data: bytes) -> M | None:
        """The connection a STUN request names as its recipient (`ours:theirs`), if any."""
        username = request_username(data)
        if username is None:
            return None
        return self._by_ufrag.get(username.split(":", 1)[0])

    def _tie(self, address: tuple[str, int], member: M) -> None:
        previous = self._by_address.get(address)
        if previous is not None and previous != member:
            self._addresses.get(previous, set()).discard(address)
        self._by_address[address] = member
        self._addresses.setdefault(member, set()).add(address)
        if previous is None and self._on_tie is not None:
            self._on_tie(address)
