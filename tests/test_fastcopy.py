"""The compiled path reads and sends what the Python path would, on the same sessions."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pylibsrtp
import pytest
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pylibsrtp import Policy, Session

from teleconsult.media import aioice_adapter, fastcopy
from teleconsult.media.rtpcopy import CopyHeader, vad_byte

from .test_rtpcopy import COPIES, extensions_map

KEY = bytes(range(30))  # AES_CM_128_HMAC_SHA1_80: 16 bytes of key, 14 of salt


def sessions() -> tuple[Session, Session]:
    """A sending and a receiving SRTP session with one key, as two ends of a DTLS handshake."""
    tx = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    rx = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_INBOUND))
    return tx, rx


@pytest.fixture(scope="module")
def link() -> Iterator[tuple[socket.socket, socket.socket, bytes]]:
    """A UDP sender and receiver on 127.0.0.1, and the receiver's address as a sockaddr."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as into,
    ):
        into.bind(("127.0.0.1", 0))
        into.settimeout(2)
        host, port = into.getsockname()
        yield out, into, fastcopy.FAST.sockaddr(host, port)


def test_the_compiled_path_is_built_and_used() -> None:
    # ./scripts/bootstrap builds it (gcc and the Python headers); a run without it would
    # measure and test only the fallback.
    assert fastcopy.built(), "media/_fastcopy.c was not built: reinstall with a C compiler"
    assert os.environ.get("TELECONSULT_PURE_PYTHON") == "1" or fastcopy.FAST is not None


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(**COPIES, payload=st.binary(max_size=1300))
def test_a_compiled_copy_is_the_python_copy_and_decrypts(
    link: tuple[socket.socket, socket.socket, bytes],
    ids: dict[str, int],
    mid: str,
    numbered: bool,
    level: tuple[bool, int] | None,
    marker: int,
    pt: int,
    seq: int,
    ts: int,
    abs_send_time: int,
    number: int,
    payload: bytes,
) -> None:
    out, into, addr = link
    header = CopyHeader(extensions_map(ids), 0x11223344, mid, numbered, level is not None)
    tx, rx = sessions()
    n = number if numbered else None
    plain, sent = fastcopy.FAST.copy(
        out.fileno(), addr, fastcopy.session_address(tx), header.template, (marker << 7) | pt,
        seq, ts, header.abs_at, abs_send_time, header.tcc_at, n, header.vad_at,
        None if level is None else vad_byte(level), payload,
    )  # fmt: skip
    expected = header.make((marker << 7) | pt, seq, ts, abs_send_time, n, level, payload)
    assert plain == expected
    wire = into.recv(4096)
    assert sent == len(wire) == len(expected) + 10  # the 80-bit authentication tag
    assert rx.unprotect(wire) == expected


def test_both_paths_share_one_session_across_the_sequence_wrap(
    link: tuple[socket.socket, socket.socket, bytes],
) -> None:
    # Copies made in turn by the compiled path and by pylibsrtp (RTX, padding and the fallback
    # use it) through the 16-bit wrap and far past it: SRTP's rollover counter is one, so the
    # receiver decrypts every packet (a second, diverging session would fail after the wrap).
    out, into, addr = link
    header = CopyHeader(extensions_map({"mid": 1, "abs": 2, "tcc": 3, "level": 4}), 7, "0",
                        True, False)  # fmt: skip
    tx, rx = sessions()
    srtp = fastcopy.session_address(tx)
    start = 0xFFFF - 300
    for i in range(3000):
        seq = (start + i) & 0xFFFF
        payload = i.to_bytes(4, "big") * 50
        if i % 3:
            plain, sent = fastcopy.FAST.copy(
                out.fileno(), addr, srtp, header.template, 96, seq, 3000 * i, header.abs_at,
                i & 0xFFFFFF, header.tcc_at, i & 0xFFFF, None, None, payload,
            )  # fmt: skip
            assert sent > 0
        else:
            plain = header.make(96, seq, 3000 * i, i & 0xFFFFFF, i & 0xFFFF, None, payload)
            out.sendto(tx.protect(plain), into.getsockname())
        assert rx.unprotect(into.recv(4096)) == plain


def test_a_socket_that_went_away_loses_the_copy_and_raises_nothing() -> None:
    header = CopyHeader(extensions_map({"mid": 1, "abs": 2, "tcc": 3, "level": 4}), 7, "0",
                        False, False)  # fmt: skip
    tx, _ = sessions()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fd = sock.fileno()
    sock.close()  # the path was replaced between two copies
    plain, sent = fastcopy.FAST.copy(
        fd, fastcopy.FAST.sockaddr("127.0.0.1", 9), fastcopy.session_address(tx),
        header.template, 96, 1, 2, header.abs_at, 3, None, None, None, None, b"x" * 100,
    )  # fmt: skip
    assert sent == -1 and plain.endswith(b"x" * 100)


def test_bad_arguments_are_errors_not_crashes() -> None:
    header = CopyHeader(extensions_map({"mid": 1, "abs": 2, "tcc": 3, "level": 4}), 7, "0",
                        False, False)  # fmt: skip
    tx, _ = sessions()
    addr = fastcopy.FAST.sockaddr("::1", 9)  # IPv6 is a sockaddr too
    assert len(addr) == 28
    with pytest.raises(ValueError):
        fastcopy.FAST.sockaddr("example", 9)
    with pytest.raises(ValueError):  # larger than any datagram we forward
        fastcopy.FAST.copy(-1, addr, fastcopy.session_address(tx), header.template, 96, 1, 2,
                           None, None, None, None, None, None, b"x" * 5000)  # fmt: skip
    with pytest.raises(ValueError):  # an offset past the header
        fastcopy.FAST.copy(-1, addr, fastcopy.session_address(tx), header.template, 96, 1, 2,
                           500, 1, None, None, None, None, b"")  # fmt: skip
    with pytest.raises(TypeError):
        fastcopy.FAST.copy(1, 2, 3)


# Every extension aiortc's map reads, by the uri a publisher's offer names.
RECEIVED_URIS = [
    "urn:ietf:params:rtp-hdrext:sdes:mid",
    "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
    "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "urn:ietf:params:rtp-hdrext:toffset",
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
]


def received_map(ids: list[int]) -> HeaderExtensionsMap:
    m = HeaderExtensionsMap()
    m.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=i, uri=uri)
                for uri, i in zip(RECEIVED_URIS, ids, strict=False)
            ]
        )
    )
    return m


@st.composite
def publisher_packets(draw: st.DrawFn) -> tuple[HeaderExtensionsMap, bytes]:
    """What a publisher may send, and what an attacker or a broken one may: any fields,
    one- and two-byte extensions of right and wrong lengths, padding, then any bytes changed."""
    two = draw(st.booleans())
    ids = draw(st.permutations(list(range(1, 15 if not two else 40)))).copy()[: len(RECEIVED_URIS)]
    m = received_map(ids[: draw(st.integers(0, len(RECEIVED_URIS)))])
    right = [16, 16, 16, 3, 3, 1, 2]  # mid, rids, abs, toffset, level, tcc (the sdes ones vary)
    elements = b""
    for _ in range(draw(st.integers(0, 6))):
        k = draw(st.integers(0, len(ids) - 1))
        size = draw(st.integers(1, right[k])) if draw(st.booleans()) else right[k]
        if not two:
            size = min(size, 16)
        value = draw(st.binary(min_size=size, max_size=size))
        if k < 3 and draw(st.booleans()):
            value = (draw(st.text("ab0-_", min_size=1, max_size=size)).encode() + value)[:size]
        elements += draw(st.sampled_from([b"", b"\0"]))  # padding between elements
        if two:
            elements += bytes([ids[k], size]) + value
        else:
            elements += bytes([(ids[k] << 4) | (size - 1)]) + value
    elements += b"\0" * (-len(elements) % 4)
    csrc = draw(st.lists(st.integers(0, 0xFFFFFFFF), max_size=3))
    padding = draw(st.integers(0, 20))
    first = 0x80 | (0x20 if padding else 0) | (0x10 if elements else 0) | len(csrc)
    data = bytes([first, draw(st.integers(0, 255))]) + draw(st.binary(min_size=10, max_size=10))
    data += b"".join(c.to_bytes(4, "big") for c in csrc)
    if elements:
        data += (0x1000 if two else 0xBEDE).to_bytes(2, "big") + (len(elements) // 4).to_bytes(
            2, "big"
        )
        data += elements
    data += draw(st.binary(max_size=300))
    if padding:
        data += b"\0" * (padding - 1) + bytes([padding])
    for _ in range(draw(st.integers(0, 2))):  # a few bytes changed, anywhere
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    return m, data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data


def aiortc_parse(data: bytes, m: HeaderExtensionsMap) -> RtpPacket | None:
    try:
        return RtpPacket.parse(data, m)
    except Exception:  # ValueError, struct.error or UnicodeDecodeError: aiortc drops the packet
        return None


def assert_same(made: RtpPacket | None, expected: RtpPacket | None) -> None:
    if expected is None:
        assert made is None
        return
    assert made is not None and type(made) is RtpPacket
    assert vars(made.extensions) == vars(expected.extensions)
    assert made.extensions == expected.extensions
    assert {k: v for k, v in vars(made).items() if k != "extensions"} == {
        k: v for k, v in vars(expected).items() if k != "extensions"
    }


def map_ids(m: HeaderExtensionsMap) -> object:
    return m._HeaderExtensionsMap__ids  # type: ignore[attr-defined]


@settings(max_examples=1500, deadline=None)
@given(publisher_packets())
def test_a_compiled_parse_is_aiortcs_parse(sample: tuple[HeaderExtensionsMap, bytes]) -> None:
    # Field by field, the same packet (or the same refusal) for anything that arrives.
    m, data = sample
    assert_same(fastcopy.FAST.parse(data, map_ids(m)), aiortc_parse(data, m))


@settings(max_examples=300, deadline=None)
@given(publisher_packets())
def test_a_compiled_receive_verifies_then_parses(sample: tuple[HeaderExtensionsMap, bytes]) -> None:
    m, data = sample
    tx, rx = sessions()
    _, rx_python = sessions()
    try:
        wire = tx.protect(data)
    except pylibsrtp.Error:
        assume(False)  # not RTP enough for libsrtp to protect: no publisher sends it
    made = fastcopy.FAST.receive(fastcopy.session_address(rx), wire, map_ids(m))
    assert_same(made, aiortc_parse(rx_python.unprotect(wire), m))
    # The same datagram again is a replay, and one changed byte is not authentic: dropped.
    assert fastcopy.FAST.receive(fastcopy.session_address(rx), wire, map_ids(m)) is None
    forged = wire[:-1] + bytes([wire[-1] ^ 1])
    assert fastcopy.FAST.receive(fastcopy.session_address(rx_python), forged, map_ids(m)) is None


def test_both_receive_paths_share_one_session_across_the_sequence_wrap() -> None:
    # A publisher's packets through the 16-bit wrap and far past it, verified in turn by the
    # compiled path and by pylibsrtp (aiortc's own path takes what waited in its queue): one
    # rollover counter, so every one is read (a second session would fail after the wrap).
    m = received_map([1, 2, 3, 4, 5, 6, 7])
    tx, rx = sessions()
    srtp = fastcopy.session_address(rx)
    start = 0xFFFF - 300
    for i in range(3000):
        sent = RtpPacket(
            payload_type=96,
            sequence_number=(start + i) & 0xFFFF,
            timestamp=(3000 * i) & 0xFFFFFFFF,
            ssrc=5,
            payload=bytes(200) + i.to_bytes(4, "big"),
        )
        sent.extensions.transport_sequence_number = i & 0xFFFF
        plain = sent.serialize(m)
        wire = tx.protect(plain)
        if i % 3:
            got = fastcopy.FAST.receive(srtp, wire, map_ids(m))
        else:
            got = RtpPacket.parse(rx.unprotect(wire), m)
        assert got is not None and got.payload == sent.payload
        assert got.sequence_number == sent.sequence_number
        assert got.extensions.transport_sequence_number == i & 0xFFFF


def test_receive_refuses_what_is_too_long_or_wrongly_called() -> None:
    _, rx = sessions()
    m = received_map([1])
    srtp = fastcopy.session_address(rx)
    assert fastcopy.FAST.receive(srtp, b"\x80" + bytes(1600), map_ids(m)) is None
    assert fastcopy.FAST.parse(b"\x80" + bytes(5000), map_ids(m)) is None
    with pytest.raises(TypeError):
        fastcopy.FAST.receive(srtp, b"")
    with pytest.raises(TypeError):
        fastcopy.FAST.parse("text", map_ids(m))
    with pytest.raises(AttributeError):  # not a map's ids
        fastcopy.FAST.parse(b"\x80" + bytes(20), object())


@pytest.mark.parametrize("compiled", [True, False])
def test_a_burst_is_read_at_once_in_order_with_how_long_it_waited(
    compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What waits on an ICE socket is read in one call (recvmmsg), oldest first, each with the
    # time it spent in the queue from the kernel's stamp: how the node tells it is behind.
    if not compiled:
        monkeypatch.setattr(aioice_adapter, "FAST", None)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as into,
    ):
        into.bind(("127.0.0.1", 0))
        out.bind(("127.0.0.1", 0))
        into.setblocking(False)
        into.setsockopt(socket.SOL_SOCKET, aioice_adapter.SO_TIMESTAMPNS, 1)
        assert aioice_adapter.waiting_datagrams(into) == []
        for i in range(40):
            out.sendto(i.to_bytes(2, "big") * 300, into.getsockname())
        time.sleep(0.2)
        got = aioice_adapter.waiting_datagrams(into)
        assert [d[:2] for d, _, _ in got] == [i.to_bytes(2, "big") for i in range(31)]
        assert all(a == out.getsockname() for _, a, _ in got)
        assert all(0.19 < w < 5 for _, _, w in got)
        rest = aioice_adapter.waiting_datagrams(into)
        assert [d[:2] for d, _, _ in rest] == [i.to_bytes(2, "big") for i in range(31, 40)]
