"""The teleconsult command as a user runs it: serve --demo, token and rooms."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from teleconsult.client.signaling import JoinRefused, SignalingClient

from .conftest import free_socket

TELECONSULT = str(Path(sys.executable).parent / "teleconsult")


def run(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TELECONSULT, *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_token_command(tmp_path: Path) -> None:
    out = run(
        "token",
        "--room",
        "r1",
        "--role",
        "expert",
        "--name",
        "Remote expert",
        "--ttl",
        "2h",
        "--url",
        "http://127.0.0.1:8080",
        data_dir=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    token, link = out.stdout.split()
    assert link == f"http://127.0.0.1:8080/room/r1#token={token}"
    assert (tmp_path / "secrets.json").exists()
    assert oct((tmp_path / "secrets.json").stat().st_mode & 0o777) == "0o600"
    bad = run("token", "--room", "../x", "--role", "expert", "--name", "x", data_dir=tmp_path)
    assert bad.returncode == 2 and "room ids" in bad.stderr
    bad = run(
        "token",
        "--room",
        "r1",
        "--role",
        "expert",
        "--name",
        "x",
        "--ttl",
        "soon",
        data_dir=tmp_path,
    )
    assert bad.returncode == 2 and "duration" in bad.stderr
    # The recorder is the server's own participant: no token for it.
    bad = run("token", "--room", "r1", "--role", "recorder", "--name", "x", data_dir=tmp_path)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


@pytest.fixture
def demo_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen(
        [
            TELECONSULT,
            "serve",
            "--demo",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path),
            "--turn-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    while time.monotonic() < deadline and len([x for x in lines if "#token=" in x]) < 4:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
    try:
        yield port, lines
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()


async def test_serve_demo_prints_working_links_and_rooms_lists_them(
    demo_server: tuple[int, list[str]], tmp_path: Path
) -> None:
    port, lines = demo_server
    links = dict(re.findall(r"^\s+(\w+)\s+(http://\S+)$", "".join(lines), re.M))
    assert set(links) == {"operator", "expert", "audience", "moderator"}
    tokens = {}
    for role, link in links.items():
        m = re.fullmatch(rf"http://127\.0\.0\.1:{port}/room/demo#token=(\S+)", link)
        assert m, link
        tokens[role] = m.group(1)
    op = SignalingClient(f"ws://127.0.0.1:{port}/ws", tokens["operator"], "demo")
    ex = SignalingClient(f"ws://127.0.0.1:{port}/ws", tokens["expert"], "demo")
    try:
        welcome = await op.connect()
        assert welcome["you"]["role"] == "operator"
        assert welcome["room"]["title"] == "Demo consultation"
        await ex.connect()
        assert (await op.wait_for("joined"))["participant"]["role"] == "expert"
        out = await asyncio.to_thread(
            run, "rooms", "--server", f"http://127.0.0.1:{port}", data_dir=tmp_path
        )
        assert out.returncode == 0, out.stderr
        rows = [line.split() for line in out.stdout.splitlines()[1:]]
        assert rows[0][:3] == ["demo", "2", "0"]
        wrong = await asyncio.to_thread(
            subprocess.run,
            [TELECONSULT, "rooms", "--server", f"http://127.0.0.1:{port}", "--admin-key", "wrong"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert wrong.returncode == 2 and "401" in wrong.stderr
        # The expert's link leaked: revoked, the expert is cut off.
        out = await asyncio.to_thread(
            run,
            "revoke",
            tokens["expert"],
            "--server",
            f"http://127.0.0.1:{port}",
            data_dir=tmp_path,
        )
        assert out.returncode == 0 and "revoked" in out.stdout, out.stderr
        assert await ex.wait_closed() == 4001
    finally:
        await op.close()
        await ex.close()


async def test_token_from_another_secret_is_refused(
    demo_server: tuple[int, list[str]], tmp_path: Path
) -> None:
    port, _ = demo_server
    other = tmp_path / "other"
    out = run(
        "token", "--room", "demo", "--role", "moderator", "--name", "Intruder", data_dir=other
    )
    c = SignalingClient(f"ws://127.0.0.1:{port}/ws", out.stdout.strip(), "demo")
    with pytest.raises(JoinRefused) as refused:
        await c.connect()
    assert refused.value.code == "token_invalid"


def test_cluster_commands_say_when_redis_is_out_of_reach() -> None:
    sock = free_socket()  # a port where no Redis listens
    url = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    sock.close()
    for args in (["nodes"], ["drain", "node-2"]):
        out = subprocess.run(
            [TELECONSULT, *args, "--redis", url], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 2 and "cannot reach Redis" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


def test_the_run_script_keeps_its_join_links_on_screen(tmp_path: Path) -> None:
    """`./scripts/run` prints the links and nothing after them: the server's log goes to a file."""
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    log = tmp_path / "server.log"
    env = {**os.environ, "TELECONSULT_PORT": str(port), "TELECONSULT_LOG": str(log)}
    env["TELECONSULT_DEMO_FEED"] = "0"
    script = Path(__file__).resolve().parents[1] / "scripts" / "run"
    proc = subprocess.Popen(
        [str(script), "--data-dir", str(tmp_path / "data"), "--turn-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # stopped below as a group: the script and its server
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("Ctrl+C" in x for x in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        assert any("Ctrl+C" in x for x in lines), lines
        for path in ("/healthz", "/room/demo"):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                assert r.status == 200
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
    rest = proc.stdout.read() if proc.stdout else ""
    proc.stdout.close() if proc.stdout else None
    shown = "".join(lines) + rest
    assert len(re.findall(r"#token=", shown)) == 4
    assert "GET /" not in shown and "uvicorn" not in shown, shown
    assert "GET /room/demo" in log.read_text()
