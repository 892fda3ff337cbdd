"""Everything that arrives from outside, fuzzed: every HTTP endpoint's paths, parameters,
headers and bodies, and every signaling message's fields. Only documented codes come back:
no 500, no traceback in the server's log, no silent close; the server goes on."""

from __future__ import annotations

import json
import re
import string
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from teleconsult.session.roles import Role
from teleconsult.signaling.messages import MODELS
from teleconsult.signaling.tokens import mint

from .conftest import ADMIN_KEY, SECRET, server_process

PROTOCOL = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
# What an HTTP answer may be: the statuses the API documents (400: a malformed Range).
STATUSES = {200, 201, 206, 304, 400, 401, 403, 404, 405, 409, 410, 413, 416, 422, 503}


def documented(code: str) -> bool:
    """Tell whether an error code is one docs/protocol.md names."""
    return f"`{code}`" in PROTOCOL or f'"code": "{code}"' in PROTOCOL


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One server process for the module; yields its address and its log."""
    folder = tmp_path_factory.mktemp("fuzz")
    with server_process(folder, "--admin-key", ADMIN_KEY) as (port, _):
        yield f"127.0.0.1:{port}", folder / "server.log"


def no_traceback(log: Path) -> None:
    text = log.read_text(errors="replace") if log.exists() else ""
    assert "Traceback" not in text, text[-3000:]


ANY_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
SEGMENT = st.one_of(
    st.sampled_from(["r1", "..", "%2e%2e", "%00", "²", "a" * 200, "", "manifest.json"]),
    st.text(alphabet=string.ascii_letters + string.digits + "._-%~", max_size=30),
    ANY_TEXT.map(lambda s: urllib.parse.quote(s, safe="")),
)
PATHS = [
    "/api/rooms",
    "/api/rooms/{a}",
    "/api/rooms/{a}/participants",
    "/api/rooms/{a}/tokens",
    "/api/tokens/revoke",
    "/api/recordings",
    "/api/recordings/{a}",
    "/api/recordings/{a}/{b}",
    "/api/recordings/{a}/{b}/{c}",
    "/room/{a}",
    "/playback/{a}",
    "/healthz",
    "/metrics",
    "/{a}",
]
TOKEN = mint(SECRET, "r1", Role.MODERATOR, "Fuzz", 3600, "fuzz")
CREDENTIALS = st.one_of(
    st.none(),
    st.sampled_from([ADMIN_KEY, TOKEN, "junk", "", TOKEN + "x", "a.b.c"]),
    ANY_TEXT,
)
BODIES = st.one_of(
    st.none(),
    st.binary(max_size=200),
    st.dictionaries(
        st.sampled_from(["id", "title", "role", "name", "identity", "ttl", "token", "lobby", "x"]),
        st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), ANY_TEXT),
        max_size=5,
    ).map(lambda d: json.dumps(d).encode()),
)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "HEAD"]),
    path=st.sampled_from(PATHS),
    parts=st.tuples(SEGMENT, SEGMENT, SEGMENT),
    query=st.dictionaries(
        st.sampled_from(["exp", "sig", "tid", "who", "token", "x"]), ANY_TEXT, max_size=4
    ),
    credential=CREDENTIALS,
    scheme=st.sampled_from(["Bearer", "bearer", "Basic", ""]),
    ranged=st.one_of(st.none(), st.sampled_from(["bytes=0-9", "bytes=9-0", "bytes=-", "x"])),
    body=BODIES,
)
def test_every_http_endpoint_answers_bad_input_with_a_documented_code(
    live: tuple[str, Path],
    method: str,
    path: str,
    parts: tuple[str, str, str],
    query: dict[str, str],
    credential: str | None,
    scheme: str,
    ranged: str | None,
    body: bytes | None,
) -> None:
    address, log = live
    a, b, c = parts
    url = f"http://{address}{path.format(a=a, b=b, c=c)}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    headers: dict[str, str] = {}
    if credential is not None:
        headers["Authorization"] = f"{scheme} {credential}".strip()
    if ranged:
        headers["Range"] = ranged
    try:
        req = urllib.request.Request(url, data=body, method=method, headers=headers)
    except ValueError:
        return  # not a request a client can even send
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except (UnicodeEncodeError, ValueError):
        return  # a header http.client refuses to send: no client could
    assert status in STATUSES, (status, method, url)
    if status >= 400 and raw.startswith(b"{"):
        code = json.loads(raw)["error"]["code"]
        assert documented(code), code
    no_traceback(log)


def fields_for(model: Any) -> dict[str, st.SearchStrategy[Any]]:
    """Values for each field of a message: well-typed sometimes, anything often."""
    junk = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False),
        ANY_TEXT,
        st.lists(st.one_of(st.integers(), st.floats(allow_nan=False), ANY_TEXT), max_size=4),
        st.lists(st.lists(st.floats(min_value=-1, max_value=2), max_size=3), max_size=5),
        st.dictionaries(ANY_TEXT, st.integers(), max_size=3),
    )
    return {name: junk for name in model.model_fields if name != "type"}


MESSAGE = st.sampled_from(sorted(MODELS)).flatmap(
    lambda kind: st.fixed_dictionaries(
        {"type": st.just(kind)},
        optional={**fields_for(MODELS[kind]), "id": st.one_of(ANY_TEXT, st.integers())},
    )
)


def join(ws: ClientConnection) -> None:
    ws.send(json.dumps({"type": "hello", "version": 1, "room": "r1", "token": TOKEN}))
    welcome = json.loads(ws.recv(timeout=10))
    assert welcome["type"] == "welcome", welcome


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(messages=st.lists(MESSAGE, min_size=1, max_size=5))
def test_every_signaling_message_answers_bad_fields_with_a_documented_code(
    live: tuple[str, Path], messages: list[dict[str, Any]]
) -> None:
    address, log = live
    with connect(f"ws://{address}/ws", open_timeout=10) as ws:
        join(ws)
        exchange(ws, messages)
    no_traceback(log)


def exchange(ws: ClientConnection, messages: list[dict[str, Any]]) -> None:
    """Send the messages, then a ping; every error on the way has a documented code."""
    try:
        for msg in messages:
            if msg["type"] in ("leave", "end_room", "hello"):
                continue  # they end this connection or room on purpose (tested elsewhere)
            ws.send(json.dumps(msg))
        # The connection is still served: a ping comes back after whatever the fuzz caused.
        ws.send(json.dumps({"type": "ping", "ts": 1}))
        for _ in range(200):
            reply = json.loads(ws.recv(timeout=10))
            if reply["type"] == "error":
                assert documented(reply["code"]), reply
                assert re.fullmatch(r"[a-z_]+", reply["code"])
            if reply["type"] == "pong" and reply.get("ts") == 1:
                break
        else:
            pytest.fail("no pong after the fuzzed messages")
    except ConnectionClosed as e:  # what the test is there to catch
        pytest.fail(f"the server closed the connection: {e}")
