"""The admin API, health and metrics over real HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from teleconsult.client.signaling import SignalingClient
from teleconsult.session.roles import Role
from teleconsult.signaling.config import Settings

from .conftest import ADMIN_KEY, SECRET, Server, running_server


async def api(
    server: Server, method: str, path: str, body: Any = None, key: str | None = ADMIN_KEY
) -> tuple[int, Any]:
    def call() -> tuple[int, Any]:
        data = (
            None
            if body is None
            else (body if isinstance(body, bytes) else json.dumps(body).encode())
        )
        req = urllib.request.Request(server.http + path, data=data, method=method)
        if key is not None:
            req.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                raw = r.read()
                ctype = r.headers.get("content-type", "")
                return r.status, json.loads(raw) if "json" in ctype else raw.decode()
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    return await asyncio.to_thread(call)


async def test_admin_api_needs_the_key(server: Server) -> None:
    for key in (None, "wrong", ""):
        status, body = await api(server, "GET", "/api/rooms", key=key)
        assert status == 401 and body["error"]["code"] == "unauthorized"
    status, _ = await api(server, "GET", "/api/rooms")
    assert status == 200


async def test_create_room_mint_token_join_list_end(server: Server) -> None:
    status, room = await api(
        server,
        "POST",
        "/api/rooms",
        {"id": "ward-7", "title": "Thyroid case", "max_participants": 5},
    )
    assert status == 201 and room["id"] == "ward-7" and room["max_participants"] == 5
    status, body = await api(server, "POST", "/api/rooms", {"id": "ward-7"})
    assert status == 409 and body["error"]["code"] == "room_exists"

    status, tok = await api(
        server,
        "POST",
        "/api/rooms/ward-7/tokens",
        {"role": "expert", "name": "Dr. Chen", "ttl": 600},
    )
    assert status == 201
    assert tok["join_url"].startswith(server.http + "/room/ward-7#token=")
    client = SignalingClient(server.ws_url, tok["token"], "ward-7")
    server.clients.append(client)
    welcome = await client.connect()
    assert welcome["room"]["title"] == "Thyroid case"
    assert welcome["you"]["identity"] == tok["identity"]

    status, listing = await api(server, "GET", "/api/rooms")
    assert [(r["id"], r["participants"]) for r in listing["rooms"]] == [("ward-7", 1)]
    status, detail = await api(server, "GET", "/api/rooms/ward-7/participants")
    assert [p["name"] for p in detail["participants"]] == ["Dr. Chen"]

    status, _ = await api(server, "DELETE", "/api/rooms/ward-7")
    assert status == 200
    assert (await client.wait_for("room_ended"))["reason"] == "ended_by_admin"
    status, body = await api(server, "GET", "/api/rooms/ward-7")
    assert status == 404 and body["error"]["code"] == "no_such_room"
    status, body = await api(
        server, "POST", "/api/rooms/ward-7/tokens", {"role": "expert", "name": "Dr. Late"}
    )
    assert status == 410 and body["error"]["code"] == "room_ended"


async def test_bad_bodies_get_field_errors(server: Server) -> None:
    cases = [
        ("/api/rooms", {"id": "../../etc"}),
        ("/api/rooms", {"max_participants": 0}),
        ("/api/rooms", {"surprise": True}),
        ("/api/rooms", b"{not json"),
        ("/api/rooms/r1/tokens", {"role": "king", "name": "x"}),
        ("/api/rooms/r1/tokens", {"role": "recorder", "name": "x"}),
        ("/api/rooms/r1/tokens", {"role": "expert"}),
    ]
    for path, body in cases:
        status, answer = await api(server, "POST", path, body)
        assert status == 422, (path, body, answer)
        assert answer["error"]["code"] == "invalid_field"
    status, answer = await api(
        server, "POST", "/api/rooms/bad%20id/tokens", {"role": "expert", "name": "x"}
    )
    assert status == 422


async def test_healthz_and_metrics(server: Server) -> None:
    await server.join(role=Role.EXPERT, identity="a")
    c = await server.join(role=Role.EXPERT, identity="b")
    await c.send_raw("{nope")
    await c.wait_for("error")
    status, health = await api(server, "GET", "/healthz", key=None)
    assert status == 200 and health == {"status": "ok", "rooms": 1}
    status, text = await api(server, "GET", "/metrics", key=None)
    assert status == 200
    lines = set(text.splitlines())
    assert "teleconsult_rooms 1.0" in lines
    assert "teleconsult_participants 2.0" in lines
    assert 'teleconsult_messages_total{type="hello"} 2.0' in lines
    assert 'teleconsult_errors_total{code="bad_json"} 1.0' in lines
    # The loop's lag is measured from the start, a look every 0.1 s.
    looks = 0.0
    for _ in range(30):
        _, text = await api(server, "GET", "/metrics", key=None)
        count = re.search(r"^teleconsult_event_loop_lag_seconds_count (\S+)$", text, re.M)
        looks = float(count.group(1)) if count else 0.0
        if looks >= 2:
            break
        await asyncio.sleep(0.1)
    assert looks >= 2
    # Metrics never carry room ids or names.
    assert "r1" not in text


async def test_a_revoked_link_is_cut_and_refused(server: Server) -> None:
    leaked = server.token(role=Role.EXPERT, identity="dr-wu")
    other = await server.join(role=Role.EXPERT, identity="dr-li")
    c = server.client(token=leaked)
    await c.connect()
    status, body = await api(server, "POST", "/api/tokens/revoke", {"token": leaked})
    assert status == 200 and body["revoked"] is True and body["disconnected"] == 1
    assert (await c.wait_for("error"))["code"] == "token_revoked"
    assert await c.wait_closed() == 4001
    again = server.client(token=leaked)
    try:
        await again.connect()
        raise AssertionError("a revoked token joined")
    except Exception as e:
        assert getattr(e, "code", None) == "token_revoked", e
    # A new link for the same person works; the others were not touched.
    fresh = await server.join(role=Role.EXPERT, identity="dr-wu")
    assert fresh.participant_id
    assert (await other.request({"type": "chat", "text": "still here"}))["seq"] >= 1
    status, body = await api(server, "POST", "/api/tokens/revoke", {"token": "not-a-token"})
    assert status == 422 and body["error"]["code"] == "token_invalid"
    import time

    from teleconsult.signaling.tokens import mint

    expired = mint(SECRET, "r1", Role.EXPERT, "x", 60, "x", time.time() - 3600)
    status, body = await api(server, "POST", "/api/tokens/revoke", {"token": expired})
    assert status == 200 and body == {"revoked": False, "expired": True}
    text = (server.hub.settings.data_dir / "audit.jsonl").read_text()
    audit = [json.loads(line) for line in text.splitlines()]
    assert any(a["action"] == "token_revoke" for a in audit)
    assert leaked not in (server.hub.settings.data_dir / "audit.jsonl").read_text()


SECURITY_HEADERS = {
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


async def test_every_answer_carries_the_security_headers(server: Server) -> None:
    def head(path: str, key: str | None) -> tuple[int, dict[str, str]]:
        req = urllib.request.Request(server.http + path)
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}

    answers = [
        ("/room/r1", None, 200),
        ("/playback/r1", None, 200),
        ("/example.html", None, 200),
        ("/room.js", None, 200),
        ("/locales/en.json", None, 200),
        ("/healthz", None, 200),
        ("/metrics", None, 200),
        ("/api/rooms", ADMIN_KEY, 200),
        ("/api/rooms", None, 401),
        ("/api/recordings/r1", None, 401),
        ("/nowhere", None, 404),
    ]
    for path, key, expected in answers:
        status, headers = await asyncio.to_thread(head, path, key)
        assert status == expected, path
        for name, value in SECURITY_HEADERS.items():
            assert headers.get(name) == value, (path, name)
        csp = dict(d.strip().split(" ", 1) for d in headers["content-security-policy"].split(";"))
        assert csp["frame-ancestors"] == "'none'" and csp["script-src"] == "'self'", path
        assert "unsafe" not in headers["content-security-policy"], path
        # Plain HTTP (a local test, or TLS ended elsewhere without saying so): no HSTS.
        assert "strict-transport-security" not in headers, path


async def test_admin_bodies_are_bounded(server: Server) -> None:
    big = json.dumps({"title": "x" * 100_000}).encode()
    status, body = await api(server, "POST", "/api/rooms", big)
    assert status == 413 and body["error"]["code"] == "too_large"

    def chunked() -> tuple[int, Any]:
        # No Content-Length: the body is read up to the bound and no further. 70 KB are sent
        # and the rest withheld: the answer must come without it.
        import http.client

        host, port = server.http.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            conn.putrequest("POST", "/api/rooms")
            conn.putheader("Authorization", f"Bearer {ADMIN_KEY}")
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for _ in range(7):
                conn.send(b"%x\r\n%s\r\n" % (10_000, b"x" * 10_000))
            r = conn.getresponse()
            return r.status, json.loads(r.read())
        finally:
            conn.close()

    status, body = await asyncio.to_thread(chunked)
    assert status == 413 and body["error"]["code"] == "too_large"
    status, _ = await api(server, "POST", "/api/rooms", {"title": "Ward 7"})
    assert status == 201


async def test_metrics_are_for_the_hospitals_own_networks(server: Server) -> None:
    # Loopback is in the default; an address a proxy on this machine forwarded is what counts.
    status, _ = await api(server, "GET", "/metrics", key=None)
    assert status == 200

    def through_proxy(client: str) -> int:
        req = urllib.request.Request(server.http + "/metrics", headers={"X-Forwarded-For": client})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            assert json.loads(e.read())["error"]["code"] == "metrics_not_allowed"
            return int(e.code)

    assert await asyncio.to_thread(through_proxy, "10.20.30.40") == 200
    assert await asyncio.to_thread(through_proxy, "203.0.113.9") == 403
    assert await asyncio.to_thread(through_proxy, "nonsense") == 403


async def test_metrics_narrowed_to_one_network(tmp_path: Path) -> None:
    async with running_server(tmp_path, metrics_allow=["10.99.0.0/16"]) as server:
        status, answer = await api(server, "GET", "/metrics", key=None)
        assert status == 403 and answer["error"]["code"] == "metrics_not_allowed"
        status, _ = await api(server, "GET", "/healthz", key=None)
        assert status == 200
    with pytest.raises(ValidationError, match="not-a-network"):
        Settings(metrics_allow=["not-a-network"])
