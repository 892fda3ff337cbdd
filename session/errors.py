"""Refusals raised by session rules, each with a stable code."""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    """Stable error codes of session rules (docs/protocol.md lists them all)."""

    FORBIDDEN = "forbidden"
    ROOM_FULL = "room_full"
    ROOM_ENDED = "room_ended"
    ROOM_EXISTS = "room_exists"
    NO_SUCH_ROOM = "no_such_room"
    REMOVED = "removed"
    NO_SUCH_PARTICIPANT = "no_such_participant"
    NOT_WAITING = "not_waiting"
    IN_LOBBY = "in_lobby"
    STREAM_EXISTS = "stream_exists"
    NO_SUCH_STREAM = "no_such_stream"
    UNKNOWN_OP = "unknown_op"
    INVALID_OP = "invalid_op"
    OUT_OF_RANGE = "out_of_range"
    TOO_LARGE = "too_large"
    NO_SUCH_FEED = "no_such_feed"
    NO_SUCH_ANNOTATION = "no_such_annotation"
    DUPLICATE_ID = "duplicate_id"
    CONSENT_REQUIRED = "consent_required"
    NOT_RECORDING = "not_recording"
    ALREADY_RECORDING = "already_recording"
    NOTHING_HELD = "nothing_held"


class SessionError(Exception):
    """A session rule refused a request; `code` is stable, `message` is for people."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Close:
    """WebSocket close codes the session asks for when it ends a connection."""

    REMOVED = 4009
    REPLACED = 4010
    ROOM_ENDED = 4011
    DENIED = 4012
