"""Fixtures: a real uvicorn server on a free loopback port, and clients for it."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import uvicorn

from teleconsult.app import create_app
from teleconsult.client.media import MediaClient
from teleconsult.client.signaling import SignalingClient
from teleconsult.session.roles import Role
from teleconsult.session.room import Room
from teleconsult.signaling.config import Secrets, Settings
from teleconsult.signaling.connection import Connection
from teleconsult.signaling.hub import Hub
from teleconsult.signaling.server import NodeServer
from teleconsult.signaling.tokens import mint

from .media_util import PatternTrack

if TYPE_CHECKING:
    from .redis_server import RedisServer

SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
ADMIN_KEY = "test-admin-key-0123456789"


@dataclass
class Server:
    """A running server and helpers to reach it."""

    host: str
    port: int
    hub: Hub
    clients: list[SignalingClient] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def drop(self, identity: str, code: int = 1011) -> None:
        """Close every connection of one identity from the server side, as a network drop."""
        for conn in list(self.hub.connections):
            if isinstance(conn, Connection) and conn.grant and conn.grant.identity == identity:
                await conn.ws.close(code)

    def room(self, room_id: str = "r1") -> Room:
        """The live room of that id (the test fails if there is none)."""
        room = self.hub.rooms.get(room_id)
        assert room is not None, f"no live room {room_id}"
        return room

    def token(
        self,
        room: str = "r1",
        role: Role = Role.EXPERT,
        name: str = "Dr. Test",
        identity: str | None = None,
        ttl: float = 3600,
        secret: str = SECRET,
    ) -> str:
        return mint(secret, room, role, name, ttl, identity)

    def client(
        self,
        room: str = "r1",
        role: Role = Role.EXPERT,
        name: str = "Dr. Test",
        identity: str | None = None,
        token: str | None = None,
    ) -> SignalingClient:
        c = SignalingClient(self.ws_url, token or self.token(room, role, name, identity), room)
        self.clients.append(c)
        return c

    async def join(
        self,
        room: str = "r1",
        role: Role = Role.EXPERT,
        name: str = "Dr. Test",
        identity: str | None = None,
    ) -> SignalingClient:
        c = self.client(room, role, name, identity)
        await c.connect()
        return c


async def join_and_remove(server: Server, mod: SignalingClient, token: str, identity: str) -> None:
    """Someone joins with `token` (its identity `identity`) and the moderator removes them."""
    someone = server.client(token=token)
    await someone.connect()
    target = server.room().by_identity(identity)
    assert target is not None
    await mod.send({"type": "remove", "participant": target.id})
    await someone.wait_closed()


def annotation(op: str, op_id: str, feed: str, points: list[list[float]]) -> dict[str, Any]:
    """An `annotate` message drawing one shape."""
    return {"type": "annotate", "op": op, "id": op_id, "feed": feed, "points": points}


def free_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    return s


@asynccontextmanager
async def running_server(data_dir: Path, **overrides: Any) -> AsyncIterator[Server]:
    """Run the real application under uvicorn on a free 127.0.0.1 port."""
    sock = free_socket()
    port = sock.getsockname()[1]
    # The built-in TURN server listens on a free port of its own.
    overrides.setdefault("turn_port", 0)
    # In-process servers forward in the test's own process, where tests look at the SFU;
    # media workers are tested on their own and by every server started as a process.
    overrides.setdefault("media_workers", 0)
    settings = Settings(host="127.0.0.1", port=port, data_dir=data_dir, **overrides)
    app = create_app(settings, Secrets(SECRET, ADMIN_KEY))
    config = uvicorn.Config(
        app, log_level="warning", ws_max_size=1024 * 1024, ws_ping_interval=None, lifespan="on"
    )
    server = NodeServer(config, app.state.hub)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.01)
    assert server.started, "server did not start"
    srv = Server("127.0.0.1", port, app.state.hub)
    try:
        yield srv
    finally:
        for c in srv.clients:
            await c.close()
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    # Media on loopback: the SFU gathers ICE candidates on 127.0.0.1 only.
    async with running_server(tmp_path, announce="127.0.0.1") as srv:
        yield srv


@pytest.fixture
async def room(tmp_path: Path) -> AsyncIterator[tuple[Server, SignalingClient, str]]:
    """A server whose room r1 has an operator publishing a probe feed; yields the feed id."""
    async with running_server(tmp_path, announce="127.0.0.1") as server:
        op = await server.join(role=Role.OPERATOR, identity="op", name="Sonographer")
        media = MediaClient(op)
        stream = await media.publish([(PatternTrack(), "probe", "Ultrasound")])
        try:
            yield server, op, f"{stream.id}.0"
        finally:
            await media.close()


def stop(proc: subprocess.Popen[Any], wait: float = 10) -> None:
    """Stop a child by its PID: SIGTERM, then SIGKILL if it does not end in time."""
    proc.terminate()
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@contextmanager
def server_process(
    data_dir: Path,
    *extra: str,
    preexec_fn: Callable[[], None] | None = None,
    host: str = "127.0.0.1",
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """Run `teleconsult serve` as its own process on a free port; yields (port, process).

    It listens on `host`, and its media too (`--announce`).
    """
    exe = str(Path(sys.executable).parent / "teleconsult")
    data_dir.mkdir(parents=True, exist_ok=True)
    # The server's own warnings, for whoever reads a failed test's folder.
    log_path = data_dir / "server.log"
    log = log_path.open("ab")
    # A port found free may be taken (an outgoing connection's local port) before the server
    # binds it: then the server exits at once, and another port is tried.
    for _attempt in range(5):
        sock = free_socket()
        port = sock.getsockname()[1]
        sock.close()
        proc = subprocess.Popen(
            [
                exe,
                "serve",
                "--host",
                host,
                "--port",
                str(port),
                "--announce",
                host,
                "--secret",
                SECRET,
                "--data-dir",
                str(data_dir),
                "--log-level",
                "warning",
                "--turn-port",
                "0",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            preexec_fn=preexec_fn,
        )
        if _serving(host, port, proc, "--tls-cert" in extra) or proc.poll() is None:
            break
        if "address already in use" not in log_path.read_text(errors="replace"):
            break
    try:
        assert proc.poll() is None, f"the server did not start: see {log_path}"
        yield port, proc
    finally:
        stop(proc)
        log.close()


def _serving(host: str, port: int, proc: subprocess.Popen[bytes], tls: bool = False) -> bool:
    """Wait until the server answers /healthz (True), or exits or 30 s pass (False)."""
    deadline = time.monotonic() + 30
    # Whether the server is up, not whom it claims to be: the TLS tests check that.
    scheme, context = ("https", ssl._create_unverified_context()) if tls else ("http", None)
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(
                f"{scheme}://{host}:{port}/healthz", timeout=1, context=context
            ).close()
            return proc.poll() is None
        except OSError:
            time.sleep(0.1)
    return False


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of the test's own, append-only file on, stopped by its PID."""
    from .redis_server import RedisServer  # it needs free_socket from here

    server = RedisServer(tmp_path / "redis", aof=True)
    server.folder.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()
