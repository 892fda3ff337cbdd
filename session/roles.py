"""Roles, the actions each may perform, and which feed sources each may publish."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """A participant's role in a room."""

    OPERATOR = "operator"
    EXPERT = "expert"
    AUDIENCE = "audience"
    MODERATOR = "moderator"
    # The recorder: a system participant that receives everything and says nothing.
    RECORDER = "recorder"


# The roles a person may hold: in a token, or given by a moderator. The recorder is the
# server's own participant (recording/recorder.py); no token or moderator can grant it.
PERSON_ROLES = frozenset({Role.OPERATOR, Role.EXPERT, Role.AUDIENCE, Role.MODERATOR})


def person_role(role: Role) -> Role:
    """Return a role a person may hold, or raise ValueError."""
    if role not in PERSON_ROLES:
        raise ValueError(f"the {role.value} role belongs to the server")
    return role


class Action(StrEnum):
    """Something a participant may ask the server to do."""

    SUBSCRIBE = "subscribe"
    ANNOTATE = "annotate"
    CHAT = "chat"
    ADMIT = "admit"
    MUTE = "mute"
    REMOVE = "remove"
    SET_ROLE = "set_role"
    RECORD = "record"
    END_ROOM = "end_room"
    VIEW_STATS = "view_stats"
    CONSENT = "consent"  # answer on the patient's consent to recording


class Source(StrEnum):
    """What a published feed shows or carries."""

    PROBE = "probe"
    LAPAROSCOPE = "laparoscope"
    CAMERA = "camera"
    SCREEN = "screen"
    MICROPHONE = "microphone"


# Patient feeds (probe, laparoscope) come only from the operator at the bedside.
PATIENT_SOURCES = frozenset({Source.PROBE, Source.LAPAROSCOPE})

_MODERATION = frozenset(
    {
        Action.ADMIT,
        Action.MUTE,
        Action.REMOVE,
        Action.SET_ROLE,
        Action.RECORD,
        Action.END_ROOM,
        Action.VIEW_STATS,
    }
)

ACTIONS: dict[Role, frozenset[Action]] = {
    Role.OPERATOR: frozenset({Action.SUBSCRIBE, Action.ANNOTATE, Action.CHAT, Action.CONSENT}),
    Role.EXPERT: frozenset({Action.SUBSCRIBE, Action.ANNOTATE, Action.CHAT}),
    Role.AUDIENCE: frozenset({Action.SUBSCRIBE, Action.CHAT}),
    Role.MODERATOR: frozenset({Action.SUBSCRIBE, Action.ANNOTATE, Action.CHAT}) | _MODERATION,
    Role.RECORDER: frozenset({Action.SUBSCRIBE}),
}

SOURCES: dict[Role, frozenset[Source]] = {
    Role.OPERATOR: frozenset(Source),
    Role.EXPERT: frozenset({Source.CAMERA, Source.SCREEN, Source.MICROPHONE}),
    Role.AUDIENCE: frozenset(),
    Role.MODERATOR: frozenset({Source.CAMERA, Source.SCREEN, Source.MICROPHONE}),
    Role.RECORDER: frozenset(),
}


def may(role: Role, action: Action) -> bool:
    """Tell whether a role may perform an action."""
    return action in ACTIONS[role]


def may_publish(role: Role, source: Source) -> bool:
    """Tell whether a role may publish a feed from a source."""
    return source in SOURCES[role]
