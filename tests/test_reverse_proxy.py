"""Debian's nginx in front with the configuration docs/deploy.md gives: pages, the API and WSS
go through it, join links and HSTS are right, and a session works (media direct to the node)."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from teleconsult.media.aioice_adapter import use_host_addresses
from teleconsult.session.roles import Role
from teleconsult.signaling.tokens import mint

from .certs import Authority
from .conftest import SECRET, free_socket, server_process, stop
from .media_util import session_over
from .need import executable

HOST = "127.0.0.1"
SITE = Path(__file__).resolve().parent.parent / "docs" / "deploy" / "nginx.conf"


def token(role: Role, who: str) -> str:
    return mint(SECRET, "ward", role, who, 3600, who)


def site(port: int, upstream: int, cert: Path, key: Path) -> str:
    """The documented site with this test's port, certificate and node put in."""
    text = SITE.read_text()
    for documented, ours in (
        ("listen 443 ssl;", f"listen {HOST}:{port} ssl;"),
        ("/etc/ssl/teleconsult/fullchain.pem", str(cert)),
        ("/etc/ssl/teleconsult/privkey.pem", str(key)),
        ("http://127.0.0.1:8080", f"http://{HOST}:{upstream}"),
    ):
        assert documented in text, documented  # the docs and this test name the same things
        text = text.replace(documented, ours)
    return text


@contextmanager
def nginx(folder: Path, site_text: str) -> Iterator[None]:
    """nginx as this user, in the foreground, with every file it writes under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "site.conf").write_text(site_text)
    temp = {n: folder / n for n in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    main = f"""
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {folder}/access.log;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {folder}/site.conf;
}}
"""
    (folder / "nginx.conf").write_text(main)
    binary = executable("nginx", "/usr/sbin/nginx")
    check = subprocess.run(
        [binary, "-t", "-p", str(folder), "-c", str(folder / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen(
        [binary, "-p", str(folder), "-c", str(folder / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        stop(proc)


def get(
    url: str, trust: ssl.SSLContext | None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5, context=trust) as answer:
        return answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read()


async def test_a_session_through_nginx(tmp_path: Path) -> None:
    ca = Authority(tmp_path / "pki")
    issued = ca.issue("proxy", [HOST], serial=7)
    trust = ssl.create_default_context(cafile=ca.path)
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    public = f"https://{HOST}:{port}"
    with (
        server_process(tmp_path / "data", "--public-url", public) as (upstream, _),
        nginx(tmp_path / "nginx", site(port, upstream, issued.cert, issued.key)),
    ):
        for _ in range(100):  # nginx up
            try:
                await asyncio.to_thread(get, f"{public}/healthz", trust)
                break
            except OSError:
                await asyncio.sleep(0.1)
        status, headers, _ = await asyncio.to_thread(get, f"{public}/room/ward", trust)
        assert status == 200
        # The node knows the request came over TLS (X-Forwarded-Proto from the proxy).
        assert headers["strict-transport-security"] == "max-age=31536000"
        # The page's policy lets it open its WebSocket at the address the browser used.
        assert f"wss://{HOST}:{port}" in headers["content-security-policy"]
        # The metrics are the node's, not the public address's.
        with pytest.raises(urllib.error.HTTPError) as refused:
            await asyncio.to_thread(get, f"{public}/metrics", trust)
        assert refused.value.code == 404
        status, _, body = await asyncio.to_thread(get, f"http://{HOST}:{upstream}/metrics", None)
        assert status == 200 and b"teleconsult_rooms" in body
        # Join links made by the admin API point at the proxy.
        key = json.loads((tmp_path / "data" / "secrets.json").read_text())["admin_key"]
        request = urllib.request.Request(
            f"{public}/api/rooms/ward/tokens",
            data=json.dumps({"role": "expert", "name": "Dr Li"}).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        answer = await asyncio.to_thread(
            lambda: json.load(urllib.request.urlopen(request, timeout=5, context=trust))
        )
        assert answer["join_url"].startswith(f"{public}/room/ward#token="), answer
        # A session: the operator publishes, the expert watches, both over WSS via nginx;
        # the upgrade and the node's pings pass, and the connections stay.
        use_host_addresses([HOST])
        try:
            url = f"wss://{HOST}:{port}/ws"
            ops, ex = token(Role.OPERATOR, "op"), token(Role.EXPERT, "ex")
            assert await session_over(url, "ward", ops, ex, trust, hold=3) < 10
        finally:
            use_host_addresses(None)
    # The audit trail has the participants; the proxy's access log the upgrade.
    access = (tmp_path / "nginx" / "access.log").read_text()
    assert '"GET /ws HTTP/1.1" 101' in access
