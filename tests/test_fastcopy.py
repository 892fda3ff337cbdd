"""The compiled per-copy path sends what the Python path would, protected by the same session."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pylibsrtp import Policy, Session

from teleconsult.media import fastcopy
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
