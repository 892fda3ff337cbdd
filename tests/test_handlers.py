"""Message handlers with a fake connection and the hub's clock in the test's hand: no socket,
no server, no sleeping for time to pass."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from teleconsult.session.participant import Event, Participant
from teleconsult.session.roles import Role
from teleconsult.session.room import Room
from teleconsult.signaling import messages as m
from teleconsult.signaling.config import Secrets, Settings
from teleconsult.signaling.conn import Conn
from teleconsult.signaling.handlers import HANDLERS
from teleconsult.signaling.hub import Hub
from teleconsult.signaling.tokens import Grant, mint

SECRET = "handler-test-secret-handler-test-secret-0123"


class FakeMedia:
    """Records what the handlers ask of a participant's media."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    async def lost(self, participant_id: str) -> None:
        self.asked.append(("lost", participant_id))

    async def close_participant(self, participant_id: str, reason: str) -> None:
        self.asked.append(("close_participant", participant_id))


class FakeConn:
    """A connection as the handlers see it (`handlers.Conn`), keeping what they send."""

    def __init__(self, hub: Hub, peer: str = "192.0.2.10") -> None:
        self.hub = hub
        self.room: Room | None = None
        self.participant: Participant | None = None
        self.grant: Grant | None = None
        self.media: Any = FakeMedia()
        self.media_node = hub.node
        self.peer: str | None = peer
        self.ice_urls: list[str] | None = None
        self.leave_reason = "disconnected"
        self.sent: list[Event] = []
        self.kicked: list[tuple[int, str]] = []

    def push(self, event: Event) -> None:
        self.sent.append(event)

    def kick(self, code: int, reason: str) -> None:
        self.kicked.append((code, reason))

    def error(self, code: str, message: str, ref: str | None = None, **details: Any) -> None:
        self.sent.append({"type": "error", "code": code, "ref": ref, **details})

    def allow_op(self, kind: str) -> bool:
        return True

    def audit(self, action: str, outcome: str = "ok", **fields: Any) -> None:
        self.hub.audit.record(action, outcome, **fields)


@pytest.fixture
def clock() -> list[float]:
    return [1_800_000_000.0]


@pytest.fixture
def hub(tmp_path: Path, clock: list[float]) -> Hub:
    settings = Settings(data_dir=tmp_path, turn_port=-1)
    return Hub(settings, Secrets(SECRET, "admin-key"), clock=lambda: clock[0])


async def say(conn: Conn, message: dict[str, Any]) -> None:
    """Hand a client message to its handler, as the connection's reader does (and mypy checks
    that the fake is a `Conn` at every call)."""
    parsed = m.parse(json.dumps(message))
    await HANDLERS[parsed.type](conn, parsed)


def hello(
    hub: Hub, identity: str, role: Role = Role.EXPERT, ttl: float = 600, **more: Any
) -> Event:
    token = mint(SECRET, "r1", role, identity.title(), ttl, identity, hub.now())
    return {"type": "hello", "version": 1, "token": token, "room": "r1", **more}


async def test_a_hello_joins_and_the_welcome_says_what_the_room_is(hub: Hub) -> None:
    conn = FakeConn(hub)
    await say(conn, hello(hub, "wu", id="h1"))
    (welcome,) = conn.sent
    assert welcome["type"] == "welcome" and welcome["ref"] == "h1"
    assert welcome["you"]["role"] == "expert" and welcome["state"] == "joined"
    assert welcome["ice_servers"] == []  # no TURN on this node
    assert welcome["channel"]["mode"] == "snapshot" and welcome["subscriptions"] == []
    assert conn.participant is not None and conn.room is hub.rooms.get("r1")
    await say(conn, hello(hub, "wu", id="h2"))  # once is enough
    assert conn.sent[-1] == {"type": "error", "code": "already_joined", "ref": "h2"}


async def test_refusals_say_why_and_close(hub: Hub, clock: list[float]) -> None:
    old = FakeConn(hub)
    await say(old, {**hello(hub, "li"), "version": 9})
    assert old.sent[0]["code"] == "unsupported_version" and old.sent[0]["supported"] == [1]
    assert old.kicked == [(4000, "unsupported_version")]
    late = FakeConn(hub)
    token = hello(hub, "zhao", ttl=60)
    clock[0] += 61  # the link's minute is over: no sleeping, the hub's clock moved
    await say(late, token)
    assert late.sent[0]["code"] == "token_expired" and late.kicked[0][0] == 4001
    hub.draining = True
    stopping = FakeConn(hub)
    await say(stopping, hello(hub, "qian"))
    assert stopping.sent[0]["code"] == "server_shutdown" and stopping.kicked[0][0] == 1001


async def test_back_from_another_address_its_media_is_taken_for_lost(hub: Hub) -> None:
    first = FakeConn(hub, peer="10.0.0.5")
    await say(first, hello(hub, "sun", Role.OPERATOR))
    assert first.participant is not None
    pid = first.participant.id
    # The van changed cells: the same operator again, from another address.
    second = FakeConn(hub, peer="100.64.7.9")
    await say(second, hello(hub, "sun", Role.OPERATOR, resume=0))
    assert second.media.asked == [("lost", pid)]  # before the welcome was built
    assert second.participant is not None and second.participant.id == pid
    assert first.kicked == [(4010, "replaced by a newer connection")]
    # From the same address (a page reload) nothing is lost: what flows goes on.
    third = FakeConn(hub, peer="100.64.7.9")
    await say(third, hello(hub, "sun", Role.OPERATOR))
    assert third.media.asked == []
