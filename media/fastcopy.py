"""The compiled twin of the per-packet path (media/_fastcopy.c), when it was built.

Used unless TELECONSULT_PURE_PYTHON=1; without a compiler the install leaves it out and the
pure-Python path (aiortc's parser, media/rtpcopy.py, `send_rtp_now`) does the same work, as
the tests check.
"""

from __future__ import annotations

import os
from typing import Any

from aiortc.rtp import HeaderExtensions, RtpPacket
from pylibsrtp import Session
from pylibsrtp._binding import ffi, lib  # type: ignore[import-not-found]

try:
    from . import _fastcopy as _built  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - an install without a C compiler
    _built = None


def _load() -> Any:
    if _built is None or os.environ.get("TELECONSULT_PURE_PYTHON") == "1":
        return None
    # libsrtp's own srtp_protect, inside pylibsrtp: the session it protects with is the one
    # aiortc made, so both paths advance the same packet index.
    _built.bind_protect(_address_of("srtp_protect"))
    _built.bind_receive(_address_of("srtp_unprotect"), RtpPacket, HeaderExtensions)
    return _built


def _address_of(function: str) -> int:
    return int(ffi.cast("uintptr_t", ffi.addressof(lib, function)))


FAST: Any = _load()


def built() -> bool:
    """Tell whether the compiled path was built into this install."""
    return _built is not None


def session_address(session: Session) -> int:
    """Return the address of the libsrtp session inside a pylibsrtp Session."""
    return int(ffi.cast("uintptr_t", session._srtp[0]))
