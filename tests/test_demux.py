"""The shared media port's choice of connection: real STUN checks from aioice, forged and
random datagrams that tie nothing, a port reused, a connection gone."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from aioice import stun
from hypothesis import given, settings
from hypothesis import strategies as st

from teleconsult.media.demux import Demux, request_username, response_transaction


@dataclass(eq=False)
class Conn:
    """A connection as the demux sees it: its ufrag and password, its checks in flight."""

    ufrag: str
    password: str
    asked: set[bytes] = field(default_factory=set)


def authentic(conn: Conn, data: bytes) -> bool:
    try:
        return bool(stun.parse_message(data).check_message_integrity(conn.password.encode()))
    except ValueError:
        return False


def asked(conn: Conn, transaction: bytes) -> bool:
    return transaction in conn.asked


def check(to: Conn, key: str | None = None, theirs: str = "peer") -> bytes:
    """A connectivity check for `to`, as a browser sends it (signed with `key`)."""
    message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    message.attributes["USERNAME"] = f"{to.ufrag}:{theirs}"
    message.attributes["PRIORITY"] = 12345
    message.add_message_integrity((key or to.password).encode())
    message.add_fingerprint()
    return bytes(message)


def answer(transaction: bytes) -> bytes:
    message = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=transaction)
    message.attributes["XOR-MAPPED-ADDRESS"] = ("10.0.0.9", 5000)
    return bytes(message)


RTP = bytes([0x80, 96]) + bytes(30)
A, B = ("10.0.0.1", 40000), ("10.0.0.2", 40000)


def room() -> tuple[Demux[Conn], Conn, Conn]:
    demux: Demux[Conn] = Demux(authentic, asked)
    one, two = Conn("ab12", "p" * 22), Conn("cd34", "q" * 22)
    demux.join(one.ufrag, one)
    demux.join(two.ufrag, two)
    return demux, one, two


def test_a_signed_check_ties_its_address_and_media_follows() -> None:
    demux, one, two = room()
    assert request_username(check(one)) == "ab12:peer"
    assert demux.route(RTP, A) is None  # media before any check: whose?
    assert demux.route(check(one), A) is one
    assert demux.route(RTP, A) is one
    assert demux.route(check(two), B) is two
    assert demux.route(RTP, B) is two and demux.route(RTP, A) is one


def test_a_forged_check_reaches_its_connection_but_ties_nothing() -> None:
    demux, one, two = room()
    demux.route(check(one), A)
    # Someone who learnt two's ufrag (not its password) checks from A, then from C.
    forged = check(two, key="x" * 22)
    assert demux.route(forged, A) is one  # A stays one's
    assert demux.route(RTP, A) is one
    assert demux.route(forged, ("10.9.9.9", 1)) is two  # to be refused by two (401)
    assert demux.route(RTP, ("10.9.9.9", 1)) is None


def test_an_answer_to_our_own_check_ties_the_address_it_came_from() -> None:
    demux, one, _ = room()
    transaction = os.urandom(12)
    one.asked.add(transaction)
    assert response_transaction(answer(transaction)) == transaction
    assert demux.route(answer(os.urandom(12)), A) is None  # nobody asked
    assert demux.route(answer(transaction), A) is one
    assert demux.route(RTP, A) is one


def test_a_port_reused_by_the_next_connection_and_a_connection_gone() -> None:
    demux, one, two = room()
    demux.route(check(one), A)
    # The browser closed one and its next connection, two, comes from the same port.
    assert demux.route(check(two), A) is two
    assert demux.route(RTP, A) is two
    demux.leave(two)
    assert demux.route(RTP, A) is None and demux.route(check(two), A) is None
    assert len(demux) == 1


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.binary(max_size=120), st.integers(0, 3)),
        max_size=40,
    )
)
def test_nothing_unauthenticated_ties_an_address(junk: list[tuple[bytes, int]]) -> None:
    demux, one, _ = room()
    demux.route(check(one), A)
    addresses = [A, B, ("10.0.0.3", 1), ("10.0.0.4", 2)]
    for data, which in junk:
        # Some look like STUN: a header and the first connection's name in a USERNAME.
        if which == 3 and len(data) >= 20:
            data = bytes([0, 1]) + data[2:]
        demux.route(data, addresses[which])
    assert demux.route(RTP, A) is one
    for address in addresses[1:]:
        assert demux.route(RTP, address) is None
