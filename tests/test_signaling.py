"""Signaling through the real server: handshake, presence and moderation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from teleconsult.client.signaling import JoinRefused
from teleconsult.session.roles import Role

from .conftest import Server, running_server


async def test_join_gets_welcome_with_participants(server: Server) -> None:
    op = await server.join(role=Role.OPERATOR, name="Sonographer", identity="op")
    ex = await server.join(role=Role.EXPERT, name="Expert", identity="ex")
    welcome = ex.welcome
    assert welcome["version"] == 1
    assert welcome["state"] == "joined"
    assert welcome["you"]["role"] == "expert"
    assert welcome["room"]["id"] == "r1"
    names = {p["name"] for p in welcome["participants"]}
    assert names == {"Sonographer", "Expert"}
    joined = await op.wait_for("joined")
    assert joined["participant"]["id"] == ex.participant_id
    assert joined["participant"]["role"] == "expert"


async def test_leave_is_seen_by_others(server: Server) -> None:
    a = await server.join(identity="a")
    b = await server.join(identity="b")
    await b.send({"type": "leave"})
    assert await b.wait_closed() == 4005
    left = await a.wait_for("left")
    assert left == {"type": "left", "participant_id": b.participant_id, "reason": "left"}


async def test_dropped_socket_is_seen_as_disconnected(server: Server) -> None:
    a = await server.join(identity="a")
    b = await server.join(identity="b")
    await b.close()
    left = await a.wait_for("left")
    assert left["reason"] == "disconnected"


async def test_moderator_changes_role_and_everyone_sees_it(server: Server) -> None:
    mod = await server.join(role=Role.MODERATOR, identity="mod")
    aud = await server.join(role=Role.AUDIENCE, identity="aud")
    await mod.send({"type": "set_role", "participant": aud.participant_id, "role": "expert"})
    for c in (mod, aud):
        ev = await c.wait_for("role_changed")
        assert ev["participant_id"] == aud.participant_id
        assert ev["role"] == "expert"
        assert ev["by"] == mod.participant_id
    assert server.room().participants[aud.participant_id].role is Role.EXPERT


async def test_expert_may_not_change_roles(server: Server) -> None:
    ex = await server.join(role=Role.EXPERT, identity="ex")
    aud = await server.join(role=Role.AUDIENCE, identity="aud")
    await ex.send(
        {"type": "set_role", "id": "r9", "participant": aud.participant_id, "role": "moderator"}
    )
    err = await ex.wait_for("error")
    assert err["code"] == "forbidden" and err["ref"] == "r9"
    assert server.room().participants[aud.participant_id].role is Role.AUDIENCE
    # The refused connection goes on.
    await ex.send({"type": "ping", "ts": 1})
    assert (await ex.wait_for("pong"))["ts"] == 1


async def test_mute_and_self_unmute(server: Server) -> None:
    mod = await server.join(role=Role.MODERATOR, identity="mod")
    ex = await server.join(role=Role.EXPERT, identity="ex")
    await mod.send({"type": "mute", "participant": ex.participant_id})
    ev = await ex.wait_for("muted")
    assert ev == {
        "type": "muted",
        "participant_id": ex.participant_id,
        "muted": True,
        "by": mod.participant_id,
    }
    await ex.send({"type": "set_muted", "muted": False})
    ev = await mod.wait_for("muted", where=lambda e: e["muted"] is False)
    assert ev["by"] == ex.participant_id


async def test_removed_participant_cannot_rejoin(server: Server) -> None:
    mod = await server.join(role=Role.MODERATOR, identity="mod")
    aud = await server.join(role=Role.AUDIENCE, identity="aud")
    await mod.send({"type": "remove", "participant": aud.participant_id})
    assert (await aud.wait_for("removed"))["by"] == mod.participant_id
    assert await aud.wait_closed() == 4009
    left = await mod.wait_for("left")
    assert left["reason"] == "removed"
    again = server.client(role=Role.AUDIENCE, identity="aud")
    with pytest.raises(JoinRefused) as refused:
        await again.connect()
    assert refused.value.code == "removed"
    assert refused.value.close_code == 4009


async def test_moderator_ends_room_for_everyone(server: Server) -> None:
    mod = await server.join(role=Role.MODERATOR, identity="mod")
    ex = await server.join(role=Role.EXPERT, identity="ex")
    await mod.send({"type": "end_room"})
    for c in (mod, ex):
        assert (await c.wait_for("room_ended"))["reason"] == "ended_by_moderator"
        assert await c.wait_closed() == 4011
    late = server.client(identity="late")
    with pytest.raises(JoinRefused) as refused:
        await late.connect()
    assert refused.value.code == "room_ended"


async def test_lobby_admit_and_deny(tmp_path: Path) -> None:
    async with running_server(tmp_path) as server:
        from teleconsult.session.room import RoomConfig

        server.hub.rooms.create("r1", server.hub.now(), RoomConfig(lobby=True))
        mod = await server.join(role=Role.MODERATOR, identity="mod")
        ex = server.client(role=Role.EXPERT, identity="ex", name="Waiting expert")
        welcome = await ex.connect()
        assert welcome["state"] == "waiting"
        assert "participants" not in welcome
        knock = await mod.wait_for("knock")
        assert knock["participant"]["name"] == "Waiting expert"
        # A waiting participant can do nothing but wait.
        await ex.send({"type": "set_muted", "muted": True})
        assert (await ex.wait_for("error"))["code"] == "in_lobby"
        await mod.send({"type": "admit", "participant": ex.participant_id})
        admitted = await ex.wait_for("admitted")
        assert {p["identity"] for p in admitted["participants"]} == {"mod", "ex"}
        assert (await mod.wait_for("joined"))["participant"]["id"] == ex.participant_id

        aud = server.client(role=Role.AUDIENCE, identity="aud")
        await aud.connect()
        await mod.wait_for("knock")
        await mod.send({"type": "deny", "participant": aud.participant_id})
        await aud.wait_for("denied")
        assert await aud.wait_closed() == 4012
        # The expert in the room never heard of the audience member in the lobby.
        await ex.send({"type": "ping", "ts": 7})
        await ex.wait_for("pong", where=lambda e: e["ts"] == 7)
        await mod.send({"type": "ping", "ts": 8})
        await mod.wait_for("pong", where=lambda e: e["ts"] == 8)
        assert not [e for e in ex.drain() if e["type"] in ("joined", "knock")]


async def test_reconnect_replaces_old_connection_and_keeps_id(server: Server) -> None:
    watcher = await server.join(identity="w")
    first = await server.join(identity="ex")
    second = await server.join(identity="ex")
    assert second.participant_id == first.participant_id
    assert await first.wait_closed() == 4010
    # The old socket closing must not make the participant leave.
    await watcher.send({"type": "ping"})
    await watcher.wait_for("pong")
    room = server.room()
    assert first.participant_id in room.participants
    assert len(room.participants) == 2


async def test_room_full(tmp_path: Path) -> None:
    async with running_server(tmp_path, max_participants=2) as server:
        await server.join(identity="a")
        await server.join(identity="b")
        c = server.client(identity="c")
        with pytest.raises(JoinRefused) as refused:
            await c.connect()
        assert refused.value.code == "room_full"
        assert refused.value.close_code == 4013
        # A moderator still gets in to manage a full room.
        await server.join(role=Role.MODERATOR, identity="m")


async def test_dead_client_is_detected_by_keepalive(tmp_path: Path) -> None:
    async with running_server(
        tmp_path, ping_interval=0.2, ping_timeout=0.6, reconnect_grace=1.0, sweep_interval=0.1
    ) as server:
        alive = await server.join(identity="alive")
        dead = await server.join(identity="dead")
        dead.answer_pings = False
        away = await alive.wait_for("presence", timeout=5)
        assert away == {
            "type": "presence",
            "participant_id": dead.participant_id,
            "connected": False,
        }
        assert await dead.wait_closed() == 4003
        # It may come back for the reconnect grace; then it has left.
        left = await alive.wait_for("left", timeout=5)
        assert left == {"type": "left", "participant_id": dead.participant_id, "reason": "timeout"}
        # The one that answers pings stays: it outlived several timeouts.
        assert alive.participant_id in server.room().participants


async def test_a_dropped_participant_comes_back_as_itself_within_the_grace(
    tmp_path: Path,
) -> None:
    async with running_server(
        tmp_path, ping_interval=0.2, ping_timeout=0.6, reconnect_grace=30.0, sweep_interval=0.1
    ) as server:
        alive = await server.join(identity="alive")
        dropped = await server.join(identity="dropped")
        await alive.request({"type": "raise_hand", "raised": True})
        dropped.answer_pings = False  # its network went silent
        assert (await alive.wait_for("presence", timeout=5))["connected"] is False
        back = await server.join(identity="dropped")
        assert back.participant_id == dropped.participant_id
        came = await alive.wait_for("presence", timeout=5)
        assert came == {
            "type": "presence",
            "participant_id": back.participant_id,
            "connected": True,
        }
        with pytest.raises(TimeoutError):
            await alive.wait_for("left", timeout=1.0)  # never gone
        people = {p["id"]: p for p in back.welcome["participants"]}
        assert people[back.participant_id]["connected"] is True


async def test_handshake_timeout(tmp_path: Path) -> None:
    async with running_server(tmp_path, handshake_timeout=0.3) as server:
        c = server.client()
        await c.open()
        err = await c.wait_for("error", timeout=5)
        assert err["code"] == "handshake_required"
        assert await c.wait_closed() == 4002


async def test_audit_trail_records_without_secrets(server: Server) -> None:
    mod = await server.join(role=Role.MODERATOR, identity="mod", name="Dr. Secret Name")
    aud = await server.join(role=Role.AUDIENCE, identity="aud")
    await aud.send({"type": "end_room"})
    await aud.wait_for("error")
    await mod.send({"type": "set_role", "participant": aud.participant_id, "role": "expert"})
    await aud.wait_for("role_changed")
    await aud.close()
    await mod.wait_for("left")
    bad = server.client(token="x.y.z")
    with pytest.raises(JoinRefused):
        await bad.connect()
    text = (server.hub.settings.data_dir / "audit.jsonl").read_text()
    entries = [json.loads(line) for line in text.splitlines()]
    seen = [(e["action"], e["outcome"], e["identity"], e.get("code")) for e in entries]
    assert ("join", "ok", "mod", None) in seen
    assert ("join", "ok", "aud", None) in seen
    assert ("end_room", "denied", "aud", "forbidden") in seen
    assert ("set_role", "ok", "mod", "expert") in seen
    assert ("leave", "ok", "aud", "disconnected") in seen
    assert ("join", "denied", None, "token_invalid") in seen
    assert all(e["time"] and e["room"] == "r1" for e in entries)
    assert "Dr. Secret Name" not in text
    assert mod.token not in text and "token" not in {k for e in entries for k in e}
