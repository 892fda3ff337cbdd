"""Who may send what, through the live server, generated from docs/protocol.md's role table:
each role sends every message that needs a permission, and is refused (`forbidden`) exactly
where the table says it may not; every class of bad token is refused at the door."""

from __future__ import annotations

from typing import Any

import pytest

from teleconsult.client.signaling import JoinRefused, RequestFailed, SignalingClient
from teleconsult.session.roles import Action, Role

from .conftest import SECRET, Server
from .test_session_rules import allowed_by_table

# For each action, a message that needs it, aimed at nothing that exists: a role that may gets
# past the permission to the next refusal (or success); one that may not gets `forbidden`.
MESSAGES: dict[Action, list[dict[str, Any]]] = {
    Action.SUBSCRIBE: [{"type": "subscribe", "stream": "s-000000000000"}],
    Action.ANNOTATE: [
        {"type": "annotate", "op": "arrow", "feed": "s-0.0", "points": [[0, 0], [1, 1]]}
    ],
    Action.CHAT: [{"type": "chat", "text": "hello"}, {"type": "raise_hand", "raised": True}],
    Action.ADMIT: [
        {"type": "admit", "participant": "p-000000000000"},
        {"type": "deny", "participant": "p-000000000000"},
    ],
    Action.MUTE: [{"type": "mute", "participant": "p-000000000000"}, {"type": "mute_all"}],
    Action.REMOVE: [{"type": "remove", "participant": "p-000000000000"}],
    Action.SET_ROLE: [
        {"type": "set_role", "participant": "p-000000000000", "role": "expert"},
        {"type": "grant", "participant": "p-000000000000", "annotate": True},
    ],
    Action.RECORD: [{"type": "record", "action": "stop"}],
    Action.VIEW_STATS: [{"type": "get_stats"}],
    Action.CONSENT: [{"type": "consent", "confirmed": False}],
    Action.END_ROOM: [{"type": "end_room"}],  # sent last: it ends the room when allowed
}


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.EXPERT, Role.AUDIENCE, Role.MODERATOR])
async def test_each_role_is_refused_exactly_what_the_table_refuses(
    server: Server, role: Role
) -> None:
    table = allowed_by_table()
    client = await server.join(role=role, identity=f"who-{role.value}")
    n = 0
    for action, messages in MESSAGES.items():
        for message in messages:
            n += 1
            try:
                # A refusal comes at once; some accepted messages have no answer of their own.
                await client.request({**message, "id": f"m{n}"}, timeout=1)
                refused = None
            except RequestFailed as e:
                refused = e.code
            except TimeoutError:
                refused = None
            except ConnectionError:
                assert action is Action.END_ROOM  # the room ended: nothing more to ask
                refused = None
            allowed = table[(role, action)]
            assert (refused == "forbidden") is (not allowed), (role, message, refused)


@pytest.mark.parametrize(
    ("token", "code"),
    [
        ("", "token_missing"),
        ("not-a-token", "token_invalid"),
        ("forged", "token_invalid"),
        ("expired", "token_expired"),
        ("other-room", "token_wrong_room"),
        ("revoked", "token_revoked"),
    ],
)
async def test_every_bad_token_is_refused_at_the_door(
    server: Server, token: str, code: str
) -> None:
    import time

    from teleconsult.signaling.tokens import mint, verify

    forms = {
        "forged": mint("another-secret-long-enough-0123456789abc", "r1", Role.EXPERT, "x", 60),
        "expired": mint(SECRET, "r1", Role.EXPERT, "x", 60, now=time.time() - 3600),
        "other-room": server.token(room="r2"),
        "revoked": server.token(identity="leaked"),
    }
    if token == "revoked":
        grant = verify(SECRET, forms["revoked"])
        await server.hub.revoke("r1", grant.token_id, grant.expires_at)
    client = SignalingClient(server.ws_url, forms.get(token, token), "r1")
    with pytest.raises(JoinRefused) as e:
        await client.connect()
    assert e.value.code == code
    assert await server.hub.token_revoked(verify(SECRET, server.token()).token_id) is False


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.EXPERT, Role.AUDIENCE, Role.MODERATOR])
async def test_each_role_over_http_gets_what_the_table_says(server: Server, role: Role) -> None:
    """A room's token opens its recordings to experts and moderators only, and the admin API
    to no token at all, whatever its role."""
    import asyncio
    import json
    import urllib.error
    import urllib.request

    token = server.token(role=role, identity=f"http-{role.value}")

    def get(path: str) -> tuple[int, str]:
        req = urllib.request.Request(
            server.http + path, headers={"Authorization": f"Bearer {token}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, ""
        except urllib.error.HTTPError as e:
            return e.code, str(json.loads(e.read())["error"]["code"])

    replays = role in (Role.EXPERT, Role.MODERATOR)
    assert await asyncio.to_thread(get, "/api/recordings/r1") == (
        (200, "") if replays else (403, "forbidden")
    )
    for path in ("/api/recordings", "/api/rooms", "/api/rooms/r1", "/api/rooms/r1/participants"):
        assert await asyncio.to_thread(get, path) == (401, "unauthorized"), path
