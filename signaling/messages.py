"""Typed models of the messages a client sends, and their parsing from JSON text."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from teleconsult.session.roles import Role, Source, person_role

from .errors import Code, ProtocolError

PROTOCOL_VERSIONS = (1,)

ParticipantId = Annotated[str, Field(min_length=1, max_length=64)]
StreamId = Annotated[str, Field(min_length=1, max_length=64)]
# SDP rides inside a 64 KiB message; real offers with a few tracks are 3-10 KiB.
Sdp = Annotated[str, Field(min_length=1, max_length=60000)]


class Message(BaseModel):
    """Fields every client message may carry."""

    # Strict so that "1" is not taken for 1; unknown fields are ignored so newer clients work.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    type: str
    id: Annotated[str, Field(max_length=64)] | None = None


class Hello(Message):
    """The handshake: protocol version, access token and room."""

    type: Literal["hello"]
    version: int
    token: Annotated[str, Field(max_length=4096)]
    room: Annotated[str, Field(min_length=1, max_length=64)]
    # The last channel sequence number this client saw, when it reconnects.
    resume: Annotated[int, Field(ge=0)] | None = None


class Ping(Message):
    """A keepalive probe; answered with pong."""

    type: Literal["ping"]
    ts: float | None = None


class Pong(Message):
    """The answer to the server's ping."""

    type: Literal["pong"]
    ts: float | None = None


class Leave(Message):
    """Leave the room and close the connection."""

    type: Literal["leave"]


# A role a person may be given: the recorder's is refused like an unknown one.
PersonRole = Annotated[Role, Field(strict=False), AfterValidator(person_role)]


class SetRole(Message):
    """Moderator: change a participant's role."""

    type: Literal["set_role"]
    participant: ParticipantId
    role: PersonRole


class Mute(Message):
    """Moderator: mute a participant's microphone."""

    type: Literal["mute"]
    participant: ParticipantId


class MuteAll(Message):
    """Moderator: mute every microphone but one participant's (and one's own)."""

    type: Literal["mute_all"]
    keep: ParticipantId | None = None


class SetMuted(Message):
    """Mute or unmute one's own microphone."""

    type: Literal["set_muted"]
    muted: bool


class SetScale(Message):
    """Set the millimetres per pixel of one's own video feed (null: not known)."""

    type: Literal["set_scale"]
    feed: Annotated[str, Field(min_length=1, max_length=64)]
    pixel_spacing_mm: Annotated[float, Field(strict=False, gt=0, le=100)] | None


class Remove(Message):
    """Moderator: remove a participant for the rest of the session."""

    type: Literal["remove"]
    participant: ParticipantId


class Admit(Message):
    """Moderator: let a participant in from the lobby."""

    type: Literal["admit"]
    participant: ParticipantId


class Deny(Message):
    """Moderator: turn a participant in the lobby away."""

    type: Literal["deny"]
    participant: ParticipantId


class EndRoom(Message):
    """Moderator: end the session for everyone."""

    type: Literal["end_room"]


class Style(BaseModel):
    """How a shape is drawn."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    color: Annotated[str, Field(max_length=32)] | None = None
    width: Annotated[float, Field(strict=False, ge=0, le=50)] | None = None


class Annotate(Message):
    """One annotation: pointer, arrow, stroke, ruler, ellipse, text, delete, undo or clear."""

    type: Literal["annotate"]
    op: Annotated[str, Field(max_length=20)]
    feed: Annotated[str, Field(max_length=100)] | None = None
    # Checked by the session (count, range) so that each problem gets its own code.
    points: Annotated[list[Any], Field(max_length=5000)] = []
    media_ts: Annotated[int, Field(ge=0, lt=2**32)] | None = None
    target: Annotated[str, Field(max_length=64)] | None = None
    scope: Literal["own", "all"] | None = None
    text: Annotated[str, Field(max_length=5000)] | None = None
    style: Style | None = None


class HoldFrame(Message):
    """Show everyone a still frame of a video feed (a JPEG), in place of any frame held before."""

    type: Literal["hold_frame"]
    feed: Annotated[str, Field(min_length=1, max_length=100)]
    # The frame's RTP timestamp: drawings made on it carry the same one.
    media_ts: Annotated[int, Field(ge=0, lt=2**32)] | None = None
    # Base64; its size is bounded by the connection (settings.max_held_frame).
    image: Annotated[str, Field(min_length=1)]


class ReleaseFrame(Message):
    """Stop showing the held frame (its author, or a moderator)."""

    type: Literal["release_frame"]


class Chat(Message):
    """A chat message to the room."""

    type: Literal["chat"]
    text: Annotated[str, Field(max_length=5000)]


class RaiseHand(Message):
    """Raise or lower one's hand."""

    type: Literal["raise_hand"]
    raised: bool = True


class Grant(Message):
    """Moderator: let a participant annotate, or give it the floor, beyond its role."""

    type: Literal["grant"]
    participant: ParticipantId
    annotate: bool | None = None
    floor: bool | None = None


class Record(Message):
    """Moderator: start or stop recording the session."""

    type: Literal["record"]
    action: Literal["start", "stop"]


class Consent(Message):
    """Operator: confirm (or decline) that the patient consented to recording."""

    type: Literal["consent"]
    confirmed: bool


class FeedSpec(BaseModel):
    """What one media section of a publish offer carries."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    mid: Annotated[str, Field(min_length=1, max_length=32)]
    source: Source = Field(strict=False)
    label: Annotated[str, Field(max_length=80)] = ""
    # The picture's size and scale, so that rulers drawn on it can say millimetres.
    width: Annotated[int, Field(gt=0, le=16384)] | None = None
    height: Annotated[int, Field(gt=0, le=16384)] | None = None
    pixel_spacing_mm: Annotated[float, Field(strict=False, gt=0, le=100)] | None = None


class Publish(Message):
    """Offer a new stream of feeds, or new media for one's own stream; the server answers."""

    type: Literal["publish"]
    sdp: Sdp
    feeds: Annotated[list[FeedSpec], Field(min_length=1, max_length=16)]
    # A stream this participant publishes whose media path was lost: the same id goes on.
    stream: StreamId | None = None


class Unpublish(Message):
    """Stop publishing a stream."""

    type: Literal["unpublish"]
    stream: StreamId


class Subscribe(Message):
    """Ask to receive a published stream (or some of its feeds); the server makes an offer."""

    type: Literal["subscribe"]
    stream: StreamId
    feeds: Annotated[list[Annotated[str, Field(max_length=100)]], Field(max_length=16)] | None = (
        None
    )


class Answer(Message):
    """Answer the server's offer for a subscription."""

    type: Literal["answer"]
    stream: StreamId
    sdp: Sdp


class Unsubscribe(Message):
    """Stop receiving a subscription."""

    type: Literal["unsubscribe"]
    stream: StreamId


class Pause(Message):
    """Stop (or start again) receiving some feeds of a subscription that are not shown."""

    type: Literal["pause"]
    stream: StreamId
    feeds: Annotated[list[Annotated[str, Field(max_length=100)]], Field(max_length=16)] | None = (
        None
    )
    paused: bool


class GetStats(Message):
    """Moderator: ask for the room's media statistics."""

    type: Literal["get_stats"]


MODELS: dict[str, type[Message]] = {
    "hello": Hello,
    "ping": Ping,
    "pong": Pong,
    "leave": Leave,
    "set_role": SetRole,
    "mute": Mute,
    "mute_all": MuteAll,
    "set_muted": SetMuted,
    "set_scale": SetScale,
    "remove": Remove,
    "admit": Admit,
    "deny": Deny,
    "end_room": EndRoom,
    "publish": Publish,
    "unpublish": Unpublish,
    "subscribe": Subscribe,
    "answer": Answer,
    "unsubscribe": Unsubscribe,
    "pause": Pause,
    "get_stats": GetStats,
    "annotate": Annotate,
    "chat": Chat,
    "raise_hand": RaiseHand,
    "hold_frame": HoldFrame,
    "release_frame": ReleaseFrame,
    "grant": Grant,
    "record": Record,
    "consent": Consent,
}


def parse(text: str, size: int = 0, limit: Callable[[str], int] | None = None) -> Message:
    """Turn one JSON text frame into a typed message or raise ProtocolError; `limit` gives
    the largest `size` (in bytes) of a message of a type ("" for one of no known type)."""
    # Over the limit of a message of no known type: only a larger kind's own limit can admit it.
    oversized = limit is not None and size > limit("")
    try:
        raw: Any = json.loads(text)
    except (ValueError, RecursionError):  # ValueError: also an integer of over 4,300 digits
        if oversized:
            raise ProtocolError(Code.MESSAGE_TOO_LARGE, _too_large(limit, "")) from None
        raise ProtocolError(Code.BAD_JSON, "the message is not valid JSON") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        if oversized:
            raise ProtocolError(Code.MESSAGE_TOO_LARGE, _too_large(limit, ""))
        raise ProtocolError(
            Code.BAD_MESSAGE, "a message must be a JSON object with a string 'type'"
        )
    ref = raw.get("id") if isinstance(raw.get("id"), str) and len(raw["id"]) <= 64 else None
    model = MODELS.get(raw["type"])
    kind = raw["type"] if model is not None else ""
    if limit is not None and size > limit(kind):
        raise ProtocolError(Code.MESSAGE_TOO_LARGE, _too_large(limit, kind), ref=ref)
    if model is None:
        raise ProtocolError(
            Code.UNKNOWN_TYPE, f"unknown message type {raw['type'][:40]!r}", ref=ref
        )
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        fields = [
            {"field": ".".join(str(x) for x in err["loc"]), "problem": err["msg"]}
            for err in e.errors(include_url=False, include_input=False)
        ]
        raise ProtocolError(
            Code.INVALID_FIELD, "a field is missing or has the wrong type", fields=fields, ref=ref
        ) from None


def _too_large(limit: Callable[[str], int] | None, kind: str) -> str:
    assert limit is not None
    return f"{kind or 'these'} messages are limited to {limit(kind)} bytes"
