"""Protocol error codes and the close codes signaling uses."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Code(StrEnum):
    """Stable codes of protocol errors (session rule codes live in session.errors)."""

    BAD_JSON = "bad_json"
    BAD_MESSAGE = "bad_message"
    BINARY_NOT_SUPPORTED = "binary_not_supported"
    MESSAGE_TOO_LARGE = "message_too_large"
    RATE_LIMITED = "rate_limited"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_FIELD = "invalid_field"
    INVALID_IMAGE = "invalid_image"
    HANDSHAKE_REQUIRED = "handshake_required"
    ALREADY_JOINED = "already_joined"
    UNSUPPORTED_VERSION = "unsupported_version"
    TOKEN_MISSING = "token_missing"
    TOKEN_INVALID = "token_invalid"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_WRONG_ROOM = "token_wrong_room"
    TOKEN_REVOKED = "token_revoked"
    SERVER_SHUTDOWN = "server_shutdown"
    INTERNAL = "internal"


class Close(IntEnum):
    """WebSocket close codes set by signaling (session.errors.Close has the room's own)."""

    GOING_AWAY = 1001
    # The node hosting the room is gone; reconnecting reaches the room on another node.
    MOVED = 1012
    UNSUPPORTED_VERSION = 4000
    UNAUTHORIZED = 4001
    HANDSHAKE_TIMEOUT = 4002
    TIMEOUT = 4003
    TOO_SLOW = 4004
    LEFT = 4005
    ROOM_FULL = 4013


class ProtocolError(Exception):
    """A message was refused before reaching a handler."""

    def __init__(self, code: Code, message: str, ref: str | None = None, **details: object) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref
        self.details = details
