"""Every class of bad input gets an error with a stable code, and nothing else breaks."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest

from teleconsult.client.signaling import JoinRefused, SignalingClient
from teleconsult.session.roles import Role

from .conftest import SECRET, Server, running_server


async def still_fine(c: SignalingClient, ts: float) -> None:
    """The connection answers a ping after the bad input."""
    await c.send({"type": "ping", "ts": ts})
    await c.wait_for("pong", where=lambda e: e["ts"] == ts)


async def errors_counted(server: Server, code: str) -> float:
    def fetch() -> str:
        with urllib.request.urlopen(server.http + "/metrics", timeout=5) as r:
            return str(r.read().decode())

    text = await asyncio.to_thread(fetch)
    for line in text.splitlines():
        if line.startswith(f'teleconsult_errors_total{{code="{code}"}}'):
            return float(line.split()[-1])
    return 0.0


BAD_FRAMES = [
    ("{not json", "bad_json"),
    ('{"type": "ping", "ts": ' + "9" * 5000 + "}", "bad_json"),  # over Python's 4,300 digits
    ("[1, 2, 3]", "bad_message"),
    ('{"no_type": 1}', "bad_message"),
    ('{"type": 42}', "bad_message"),
    ('{"type": "teleport"}', "unknown_type"),
    ('{"type": "set_role", "role": "expert"}', "invalid_field"),
    ('{"type": "set_role", "participant": 5, "role": "expert"}', "invalid_field"),
    ('{"type": "set_role", "participant": "p-1", "role": "king"}', "invalid_field"),
    ('{"type": "set_role", "participant": "p-1", "role": "recorder"}', "invalid_field"),
    ('{"type": "set_muted", "muted": "yes"}', "invalid_field"),
    ('{"type": "hello", "version": 1, "token": "x", "room": "r1"}', "already_joined"),
    ('{"type": "mute", "participant": "p-nobody"}', "no_such_participant"),
    ('{"type": "end_room"}', "forbidden"),
    ('{"type": "consent", "confirmed": false}', "forbidden"),  # only the operator answers
    ("[" * 100000 + "]" * 100000, "message_too_large"),
    (json.dumps({"type": "no_such_type", "pad": "x" * 70000}), "message_too_large"),
    (json.dumps({"type": "chat", "text": "x" * 70000}), "message_too_large"),
    ('"' + "x" * 70000 + '"', "message_too_large"),
]


@pytest.mark.parametrize(("frame", "code"), BAD_FRAMES, ids=[c for _, c in BAD_FRAMES])
async def test_bad_frame_gets_error_and_nothing_else_breaks(
    server: Server, frame: str, code: str
) -> None:
    other = await server.join(identity="other")
    # A moderator, so that refusals below are about the input, not the role (but for end_room).
    role = Role.EXPERT if code == "forbidden" else Role.MODERATOR
    c = await server.join(role=role, identity="sender")
    before = await errors_counted(server, code)
    await c.send_raw(frame)
    err = await c.wait_for("error")
    assert err["code"] == code, err
    assert err["message"]
    await still_fine(c, 1)
    await still_fine(other, 2)
    assert not [e for e in other.drain() if e["type"] in ("error", "left")]
    assert await errors_counted(server, code) == before + 1
    assert len(server.room().participants) == 2


async def test_invalid_field_names_the_fields(server: Server) -> None:
    c = await server.join()
    await c.send({"type": "set_role", "id": "q1", "participant": 5})
    err = await c.wait_for("error")
    assert err["ref"] == "q1"
    assert {f["field"] for f in err["fields"]} == {"participant", "role"}


async def test_binary_frame(server: Server) -> None:
    c = await server.join()
    await c.send_raw(b"\x00\x01binary")
    assert (await c.wait_for("error"))["code"] == "binary_not_supported"
    await still_fine(c, 3)


async def test_messages_before_handshake(server: Server) -> None:
    c = server.client()
    await c.open()
    await c.send({"type": "set_muted", "muted": True})
    assert (await c.wait_for("error"))["code"] == "handshake_required"
    await c.send({"type": "ping", "ts": 4})
    await c.wait_for("pong")
    # The connection may still complete the handshake afterwards.
    await c.send({"type": "hello", "version": 1, "token": c.token, "room": "r1"})
    assert (await c.wait_for("welcome"))["state"] == "joined"


async def test_flood_is_rate_limited_and_connection_survives(tmp_path: Path) -> None:
    async with running_server(tmp_path, rate=20, burst=20) as server:
        other = await server.join(identity="other")
        c = await server.join(identity="flooder")
        for i in range(200):
            await c.send({"type": "ping", "ts": i})
        events = []
        while True:
            try:
                events.append(await c.recv(timeout=1.0))
            except TimeoutError:
                break
        pongs = [e for e in events if e["type"] == "pong"]
        limited = [e for e in events if e["type"] == "error" and e["code"] == "rate_limited"]
        assert limited, "a flood must be told it is rate limited"
        assert len(limited) <= 3, "rate-limit errors are themselves throttled"
        assert 15 <= len(pongs) < 100
        await still_fine(c, 1e6)
        await still_fine(other, 2e6)


@pytest.mark.parametrize(
    ("make_token", "code"),
    [
        (lambda s: "", "token_missing"),
        (lambda s: "not-a-jwt", "token_invalid"),
        (lambda s: s.token(secret="another-secret-that-is-also-long-enough-0123"), "token_invalid"),
        (lambda s: s.token(ttl=-10) if False else _expired(), "token_expired"),
        (lambda s: s.token(room="r2"), "token_wrong_room"),
        (lambda s: _alg_none(), "token_invalid"),
    ],
    ids=["missing", "garbage", "forged", "expired", "wrong_room", "alg_none"],
)
async def test_bad_tokens_are_refused_without_revealing_the_room(
    server: Server, make_token: object, code: str
) -> None:
    member = await server.join(identity="member")
    c = SignalingClient(server.ws_url, make_token(server), "r1")  # type: ignore[operator]
    with pytest.raises(JoinRefused) as refused:
        await c.connect()
    assert refused.value.code == code
    assert refused.value.close_code == 4001
    # Nothing about the room (its members, title, existence) is in the refusal.
    assert "member" not in refused.value.message and "r1" not in refused.value.message
    assert not [e for e in member.drain() if e["type"] != "ping"]


def _expired() -> str:
    import time

    from teleconsult.signaling.tokens import mint

    return mint(SECRET, "r1", Role.EXPERT, "Late", 60, "late", now=time.time() - 120)


def _alg_none() -> str:
    import base64

    def b64(d: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")

    claims = {
        "iss": "teleconsult",
        "aud": "teleconsult",
        "sub": "x",
        "room": "r1",
        "role": "moderator",
        "name": "x",
        "iat": 0,
        "exp": 4102444800,
    }
    return b64({"alg": "none", "typ": "JWT"}) + "." + b64(claims) + "."


async def test_unsupported_version(server: Server) -> None:
    c = SignalingClient(server.ws_url, server.token(), "r1", version=99)
    with pytest.raises(JoinRefused) as refused:
        await c.connect()
    assert refused.value.code == "unsupported_version"
    assert refused.value.close_code == 4000


async def test_joining_an_ended_room(server: Server) -> None:
    mod = await server.join(role=Role.MODERATOR, identity="mod")
    await mod.send({"type": "end_room"})
    await mod.wait_closed()
    c = server.client(identity="late")
    with pytest.raises(JoinRefused) as refused:
        await c.connect()
    assert (refused.value.code, refused.value.close_code) == ("room_ended", 4011)


def test_slow_reader_is_disconnected_alone(tmp_path: Path) -> None:
    from teleconsult.signaling.config import Secrets, Settings
    from teleconsult.signaling.connection import Connection
    from teleconsult.signaling.hub import Hub

    hub = Hub(Settings(data_dir=tmp_path, queue_size=5), Secrets(SECRET, "k"))
    conn = Connection(None, hub)  # type: ignore[arg-type]  # push() never touches the socket
    for i in range(5):
        conn.push({"type": "muted", "n": i})
    assert conn.closing is None
    conn.push({"type": "muted", "n": 5})
    assert conn.closing is not None and conn.closing.code == 4004
    for i in range(100):
        conn.push({"type": "muted", "n": i})
    # Five events, then the close request: memory stays bounded however much the room says.
    assert conn.out.qsize() == 6
