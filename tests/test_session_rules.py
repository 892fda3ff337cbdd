"""Session rules with no I/O: roles, rooms, lobby, moderation and expiry."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from teleconsult.session.errors import Code, SessionError
from teleconsult.session.participant import State
from teleconsult.session.roles import Action, Role, Source, may, may_publish
from teleconsult.session.room import Room, RoomConfig
from teleconsult.session.rooms import Rooms
from teleconsult.session.streams import Feed, Stream


class Inbox:
    """A Client that keeps what the room pushes."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.kicked: tuple[int, str] | None = None

    def push(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def kick(self, code: int, reason: str) -> None:
        self.kicked = (code, reason)

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]


ids = (f"p{i}" for i in itertools.count())


def join(room: Room, identity: str, role: Role, now: float = 0.0) -> tuple[str, Inbox]:
    inbox = Inbox()
    p = room.join(identity, identity.title(), role, inbox, now, lambda: next(ids))
    return p.id, inbox


def test_role_table() -> None:
    assert may_publish(Role.OPERATOR, Source.PROBE)
    assert may_publish(Role.OPERATOR, Source.LAPAROSCOPE)
    assert not may_publish(Role.EXPERT, Source.PROBE)
    assert may_publish(Role.EXPERT, Source.MICROPHONE)
    assert not any(may_publish(Role.AUDIENCE, s) for s in Source)
    assert not may(Role.AUDIENCE, Action.ANNOTATE)
    for action in (
        Action.ADMIT,
        Action.MUTE,
        Action.REMOVE,
        Action.SET_ROLE,
        Action.RECORD,
        Action.END_ROOM,
    ):
        assert may(Role.MODERATOR, action)
        assert not any(may(r, action) for r in (Role.OPERATOR, Role.EXPERT, Role.AUDIENCE))
    assert all(may(r, Action.SUBSCRIBE) for r in Role)


def test_join_and_leave_events() -> None:
    room = Room("r", RoomConfig(), 0.0)
    a, ia = join(room, "a", Role.OPERATOR)
    b, ib = join(room, "b", Role.EXPERT)
    assert ia.events == [{"type": "joined", "participant": room.participants[b].describe()}]
    assert ib.events == []  # the joiner gets the snapshot instead
    snap = room.snapshot(room.participants[b])
    assert [p["id"] for p in snap["participants"]] == [a, b]
    assert "waiting" not in snap
    room.leave(b, "left", now=5.0)
    assert ia.events[-1] == {"type": "left", "participant_id": b, "reason": "left"}
    assert room.empty_since is None
    room.leave(a, "left", now=6.0)
    assert room.empty_since == 6.0


def test_second_join_of_an_identity_replaces_the_first() -> None:
    room = Room("r", RoomConfig(), 0.0)
    _, iw = join(room, "w", Role.EXPERT)
    first, i1 = join(room, "x", Role.AUDIENCE)
    iw.events.clear()
    inbox2 = Inbox()
    p = room.join("x", "X", Role.EXPERT, inbox2, 1.0, lambda: "new")
    assert p.id == first and p.client is inbox2
    assert i1.kicked is not None and i1.kicked[0] == 4010
    assert iw.types() == ["role_changed"]
    # The replaced connection leaving must not remove the participant.
    assert room.leave(first, "disconnected", 2.0, client=i1) is None
    assert first in room.participants


def test_capacity_and_moderator_bypass() -> None:
    room = Room("r", RoomConfig(max_participants=1), 0.0)
    join(room, "a", Role.EXPERT)
    with pytest.raises(SessionError) as e:
        join(room, "b", Role.EXPERT)
    assert e.value.code is Code.ROOM_FULL
    join(room, "m", Role.MODERATOR)


def test_lobby() -> None:
    room = Room("r", RoomConfig(lobby=True), 0.0)
    m, im = join(room, "m", Role.MODERATOR)
    x, ix = join(room, "x", Role.EXPERT)
    assert room.participants[x].state is State.WAITING
    assert im.types() == ["knock"]
    assert room.snapshot(room.participants[m])["waiting"][0]["id"] == x
    y, iy = join(room, "y", Role.OPERATOR)
    with pytest.raises(SessionError) as e:
        room.mute(x, m)
    assert e.value.code is Code.IN_LOBBY
    with pytest.raises(SessionError) as e:
        room.admit(y, x)
    assert e.value.code is Code.IN_LOBBY
    room.admit(m, x)
    assert ix.types() == ["admitted"]
    assert room.participants[x].state is State.JOINED
    with pytest.raises(SessionError) as e:
        room.admit(m, x)
    assert e.value.code is Code.NOT_WAITING
    with pytest.raises(SessionError) as e:
        room.admit(x, y)
    assert e.value.code is Code.FORBIDDEN
    room.deny(m, y, 1.0)
    assert iy.types() == ["denied"] and iy.kicked is not None and iy.kicked[0] == 4012
    # The admitted expert never heard of the lobby.
    assert "knock" not in ix.types() and "left" not in ix.types()


def test_moderation_needs_the_role() -> None:
    room = Room("r", RoomConfig(), 0.0)
    m, _ = join(room, "m", Role.MODERATOR)
    e_, _ = join(room, "e", Role.EXPERT)
    a, ia = join(room, "a", Role.AUDIENCE)
    for call in (
        lambda: room.set_role(e_, a, Role.MODERATOR),
        lambda: room.mute(e_, a),
        lambda: room.remove(e_, a, 0.0),
        lambda: room.end("x", e_),
    ):
        with pytest.raises(SessionError) as err:
            call()
        assert err.value.code is Code.FORBIDDEN
    assert room.participants[a].role is Role.AUDIENCE and not room.ended
    room.set_role(m, a, Role.EXPERT)
    assert ia.events[-1] == {"type": "role_changed", "participant_id": a, "role": "expert", "by": m}
    room.remove(m, a, 1.0)
    assert ia.kicked is not None and ia.kicked[0] == 4009
    with pytest.raises(SessionError) as err:
        join(room, "a", Role.AUDIENCE)
    assert err.value.code is Code.REMOVED
    with pytest.raises(SessionError) as err:
        room.mute(m, "p-none")
    assert err.value.code is Code.NO_SUCH_PARTICIPANT


def test_rooms_registry_idle_and_tombstones() -> None:
    rooms = Rooms(RoomConfig(idle_timeout=10.0), tombstone_ttl=100.0)
    r = rooms.open("a", now=0.0)
    assert rooms.open("a", now=1.0) is r
    pid, _ = join(r, "x", Role.EXPERT, now=1.0)
    assert rooms.sweep(now=50.0) == []  # occupied rooms never expire
    r.leave(pid, "left", now=50.0)
    assert rooms.sweep(now=59.0) == []
    assert rooms.sweep(now=60.0) == [r]
    assert rooms.get("a") is None and not rooms.was_ended("a")
    rooms.open("a", now=61.0)  # an idle-ended room opens again

    b = rooms.create("b", now=0.0)
    _, ib = join(b, "y", Role.EXPERT)
    rooms.end("b", "ended_by_admin", now=70.0)
    assert ib.events[-1] == {"type": "room_ended", "reason": "ended_by_admin"}
    assert rooms.was_ended("b")
    with pytest.raises(SessionError) as err:
        rooms.open("b", now=71.0)
    assert err.value.code is Code.ROOM_ENDED
    rooms.sweep(now=170.0)
    assert not rooms.was_ended("b")
    with pytest.raises(SessionError) as err:
        rooms.end("zzz", "x", now=0.0)
    assert err.value.code is Code.NO_SUCH_ROOM
    rooms.create("c", now=171.0)
    with pytest.raises(SessionError) as err:
        rooms.create("c", now=171.0)
    assert err.value.code is Code.ROOM_EXISTS


def test_a_room_carried_to_another_node_keeps_its_rules_and_people() -> None:
    config = RoomConfig(title="Tumour board", max_participants=8, lobby=True, idle_timeout=900)
    room = Room("board", config, 10.0)
    mod, _ = join(room, "chair", Role.MODERATOR)
    aud, _ = join(room, "student", Role.AUDIENCE)
    room.admit(mod, aud)
    room.grant(mod, aud, 11.0, annotate=True)
    room.set_role(mod, aud, Role.EXPERT)
    room.mute(mod, aud)
    bad, _ = join(room, "intruder", Role.AUDIENCE)
    room.admit(mod, bad)
    room.remove(mod, bad, 12.0)
    state = room.export()
    # A chat line is the channel's, not the membership's: nothing new to write.
    revision = room.revision
    room.chat(mod, "c1", "Next case", 12.5)
    assert room.revision == revision and room.export() == state
    room.grant(mod, aud, 12.6, floor=True)
    assert room.revision > revision and room.export() != state
    room.grant(mod, aud, 12.7, floor=False)

    moved = Room("board", RoomConfig(), 50.0)  # opened with defaults on the other node
    assert moved.restore(state) is False
    assert moved.config == config and moved.created_at == 10.0
    back, _ = join(moved, "student", Role.AUDIENCE, 51.0)  # the token still says audience
    p = moved.participants[back]
    assert (p.id, p.role, p.may_annotate, p.muted) == (aud, Role.EXPERT, True, True)
    assert p.state is State.JOINED  # admitted before the move: not sent to the lobby again
    with pytest.raises(SessionError) as e:
        join(moved, "intruder", Role.AUDIENCE, 52.0)
    assert e.value.code == Code.REMOVED
    newcomer, _ = join(moved, "late", Role.AUDIENCE, 53.0)
    assert moved.participants[newcomer].state is State.WAITING  # the lobby still holds


def test_a_dropped_participant_is_kept_for_the_grace_with_its_streams() -> None:
    room = Room("r", RoomConfig(), 0.0)
    op, op_inbox = join(room, "op", Role.OPERATOR)
    ex, ex_inbox = join(room, "ex", Role.EXPERT)
    feed = Feed("s1.0", "0", "video", Source.PROBE, "", "VP8")
    room.add_stream(Stream("s1", op, [feed]))
    room.raise_hand(op, "h1", True, 1.0)
    assert room.away(op, "lost", 10.0, op_inbox) is not None
    assert ex_inbox.events[-1] == {"type": "presence", "participant_id": op, "connected": False}
    # Its media path is lost too: the stream waits, everyone is told.
    room.stream_state("s1", False, 12.0)
    assert ex_inbox.events[-1]["type"] == "stream_state"
    assert room.expire(69.0, grace=60.0) == ([], [])  # within the grace: nothing goes
    back, back_inbox = join(room, "op", Role.OPERATOR, now=30.0)
    assert back == op and room.participants[op].away_since is None
    assert ex_inbox.events[-1] == {"type": "presence", "participant_id": op, "connected": True}
    assert "s1" in room.streams and op in room.channel.hands  # nothing was lost
    # New media brings the stream back; an away participant that never returns is let go.
    room.stream_state("s1", True, 31.0)
    assert room.streams["s1"].describe()["state"] == "live"
    assert room.away(ex, "timeout", 40.0, ex_inbox) is not None
    left, removed = room.expire(100.0, grace=60.0)
    assert [p.id for p in left] == [ex] and removed == []
    assert back_inbox.events[-1] == {"type": "left", "participant_id": ex, "reason": "timeout"}


def test_a_stream_not_published_again_within_the_grace_is_removed() -> None:
    room = Room("r", RoomConfig(), 0.0)
    op, _ = join(room, "op", Role.OPERATOR)
    _, ex_inbox = join(room, "ex", Role.EXPERT)
    publish(room, op, "s1")
    room.stream_state("s1", False, 5.0)
    assert room.interrupted_stream(op, [Source.PROBE]) is room.streams["s1"]
    assert room.interrupted_stream(op, [Source.CAMERA]) is None
    left, removed = room.expire(65.0, grace=60.0)
    assert left == [] and [s.id for s in removed] == ["s1"]
    assert ex_inbox.events[-1] == {
        "type": "stream_removed",
        "stream_id": "s1",
        "reason": "interrupted",
    }
    # A stale connection's drop (already replaced) changes nothing.
    stale = Inbox()
    assert room.away(op, "lost", 70.0, stale) is None


def publish(room: Room, who: str, stream: str, source: Source = Source.PROBE) -> None:
    """Add a stream of one feed of this source, as the media edge would."""
    kind, codec = ("audio", "opus") if source is Source.MICROPHONE else ("video", "VP8")
    room.add_stream(Stream(stream, who, [Feed(f"{stream}.0", "0", kind, source, "", codec)]))


def test_only_the_operator_answers_on_consent() -> None:
    room = Room("r", RoomConfig(), 0.0)
    op, op_inbox = join(room, "op", Role.OPERATOR)
    mod, _ = join(room, "mod", Role.MODERATOR)
    others = [
        join(room, who, role)[0] for who, role in (("ex", Role.EXPERT), ("aud", Role.AUDIENCE))
    ]
    publish(room, op, "s1")
    assert room.start_recording(mod, 1.0) is False  # waits for the operator
    assert op_inbox.types()[-1] == "consent_requested"
    for someone in [mod, *others]:
        for answer in (room.decline_consent, lambda p: room.give_consent(p, 2.0)):
            with pytest.raises(SessionError) as e:
                answer(someone)
            assert e.value.code is Code.FORBIDDEN
    # Nobody else's answer touched the moderator's request: the operator's starts it.
    assert room.recording.pending_by == mod
    assert room.give_consent(op, 3.0) is True
    # And the operator's refusal drops a waiting request, naming who asked.
    room.recording.consent = None
    assert room.start_recording(mod, 4.0) is False
    assert room.decline_consent(op) == mod and room.recording.pending_by == ""
    assert op_inbox.events[-1] == {"type": "recording", **room.recording.describe(), "by": op}


def test_a_start_waiting_for_consent_is_taken_back_by_the_moderator() -> None:
    room = Room("r", RoomConfig(), 0.0)
    op, op_inbox = join(room, "op", Role.OPERATOR)
    mod, mod_inbox = join(room, "mod", Role.MODERATOR)
    ex, ex_inbox = join(room, "ex", Role.EXPERT)
    publish(room, op, "s1")
    assert room.cancel_recording(mod) is False  # nothing waits
    assert room.start_recording(mod, 1.0) is False
    assert mod_inbox.events[-1]["pending"] is True
    with pytest.raises(SessionError) as e:
        room.cancel_recording(ex)
    assert e.value.code is Code.FORBIDDEN
    assert room.cancel_recording(mod) is True
    assert room.recording.pending_by == "" and not room.recording.active
    # The moderators and the operators (whose question is over) are told; nobody else.
    for inbox in (mod_inbox, op_inbox):
        assert inbox.events[-1]["type"] == "recording" and inbox.events[-1]["pending"] is False
    assert "recording" not in ex_inbox.types()
    # The operator's late yes then starts nothing.
    assert room.give_consent(op, 2.0) is False


ROW_ACTIONS = {
    "subscribe": [Action.SUBSCRIBE],
    "annotate": [Action.ANNOTATE],
    "chat, raise hand": [Action.CHAT],
    "admit, mute, remove, set role, grant, record, stats, end": [
        Action.ADMIT,
        Action.MUTE,
        Action.REMOVE,
        Action.SET_ROLE,
        Action.RECORD,
        Action.VIEW_STATS,
        Action.END_ROOM,
    ],
    "answer `consent`": [Action.CONSENT],
}
ROW_SOURCES = {
    "publish probe / laparoscope": [Source.PROBE, Source.LAPAROSCOPE],
    "publish camera / screen / microphone": [Source.CAMERA, Source.SCREEN, Source.MICROPHONE],
}


def role_table() -> dict[tuple[str, Role], str]:
    """docs/protocol.md's role table: (row, role) → cell."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    table = doc.split("## Roles", 1)[1].split("\n\n", 2)[1]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()]
    roles = [Role(r) for r in rows[0][1:]]
    return {
        (name, role): cell
        for name, *cells in rows[2:]
        for role, cell in zip(roles, cells, strict=True)
    }


def allowed_by_table() -> dict[tuple[Role, Action], bool]:
    """Whether each role may each action, by the table ("yes"; anything else is a grant)."""
    return {
        (role, action): cell == "yes"
        for (name, role), cell in role_table().items()
        for action in ROW_ACTIONS.get(name, [])
    }


def test_the_role_table_of_the_protocol_is_what_the_server_enforces() -> None:
    """docs/protocol.md's role table is the one source of who may do what: read it."""
    table = role_table()
    for name, _ in table:
        assert name in ROW_ACTIONS or name in ROW_SOURCES, f"a row the server does not know: {name}"
    for (role, action), allowed in allowed_by_table().items():
        assert may(role, action) is allowed, (role, action)
    for (name, role), cell in table.items():
        for source in ROW_SOURCES.get(name, []):
            # "yes": the role may; empty: it may not; anything else ("with the floor") is a
            # moderator's grant on top of a role that may not by itself.
            assert may_publish(role, source) is (cell == "yes"), (name, role, source)
    assert {a for _, a in allowed_by_table()} == set(Action), "every action has its row"
    assert {r for _, r in table} == {r for r in Role if r is not Role.RECORDER}


def test_what_a_new_role_may_not_publish_is_withdrawn() -> None:
    room = Room("r", RoomConfig(), 0.0)
    op, _ = join(room, "op", Role.OPERATOR)
    mod, _ = join(room, "mod", Role.MODERATOR)
    aud, aud_inbox = join(room, "aud", Role.AUDIENCE)
    publish(room, op, "s1")
    publish(room, op, "s2", Source.MICROPHONE)
    assert room.withdraw_forbidden(op) == []  # the operator may publish both
    room.set_role(mod, op, Role.EXPERT)
    # An expert may talk, not send the patient's image.
    assert [s.id for s in room.withdraw_forbidden(op)] == ["s1"]
    assert list(room.streams) == ["s2"]
    assert aud_inbox.events[-1] == {
        "type": "stream_removed",
        "stream_id": "s1",
        "reason": "role_changed",
    }
    # The audience speaks only with the floor: taken back, the microphone is withdrawn.
    room.grant(mod, aud, 1.0, floor=True)
    publish(room, aud, "s3", Source.MICROPHONE)
    assert room.withdraw_forbidden(aud) == []
    room.grant(mod, aud, 2.0, floor=False)
    assert [s.id for s in room.withdraw_forbidden(aud)] == ["s3"]
