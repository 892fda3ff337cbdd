"""HTTPS and WSS served by the node itself: a hospital CA's certificate, media over it, HSTS, a
renewed certificate taken on SIGHUP without dropping anyone, and bad files refused clearly."""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from teleconsult.client.signaling import SignalingClient
from teleconsult.media.aioice_adapter import use_host_addresses
from teleconsult.session.roles import Role
from teleconsult.signaling.tokens import mint

from .certs import Authority, serial_of
from .conftest import SECRET, server_process
from .media_util import session_over

HOST = "127.0.0.1"
TELECONSULT = str(Path(sys.executable).parent / "teleconsult")


def token(role: Role, who: str) -> str:
    return mint(SECRET, "ward", role, who, 3600, who)


def presented(port: int, trust: ssl.SSLContext) -> int:
    """The serial of the certificate the server presents to a new connection (verified)."""
    with (
        socket.create_connection((HOST, port), timeout=5) as raw,
        trust.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return serial_of(der)


def get(url: str, trust: ssl.SSLContext) -> tuple[int, dict[str, str]]:
    with urllib.request.urlopen(url, timeout=5, context=trust) as answer:
        return answer.status, {k.lower(): v for k, v in answer.headers.items()}


async def test_pages_signaling_and_media_over_https_and_wss(tmp_path: Path) -> None:
    ca = Authority(tmp_path / "pki")
    issued = ca.issue("server", [HOST], serial=1001)
    trust = ssl.create_default_context(cafile=ca.path)
    tls = ["--tls-cert", str(issued.cert), "--tls-key", str(issued.key)]
    with server_process(tmp_path / "data", *tls) as (port, _):
        base = f"https://{HOST}:{port}"
        for path in ("/healthz", "/room/ward"):
            status, headers = await asyncio.to_thread(get, base + path, trust)
            assert status == 200
            # Browsers that came over HTTPS once will not fall back to plain HTTP.
            assert headers["strict-transport-security"] == "max-age=31536000"
        # Nothing in plain text on the same port.
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            await asyncio.to_thread(
                urllib.request.urlopen, f"http://{HOST}:{port}/healthz", timeout=5
            )
        # The operator publishes and the expert watches, both signaling over WSS.
        use_host_addresses([HOST])
        try:
            url = f"wss://{HOST}:{port}/ws"
            ops, ex = token(Role.OPERATOR, "op"), token(Role.EXPERT, "ex")
            assert await session_over(url, "ward", ops, ex, trust) < 10
        finally:
            use_host_addresses(None)


async def test_a_renewed_certificate_is_served_after_sighup_and_a_bad_one_is_not(
    tmp_path: Path,
) -> None:
    ca = Authority(tmp_path / "pki")
    first = ca.issue("server", [HOST], serial=1)
    trust = ssl.create_default_context(cafile=ca.path)
    tls = ["--tls-cert", str(first.cert), "--tls-key", str(first.key)]
    with server_process(tmp_path / "data", *tls) as (port, proc):
        assert await asyncio.to_thread(presented, port, trust) == 1
        # Someone is in the room over the old certificate while it is renewed.
        ex = SignalingClient(f"wss://{HOST}:{port}/ws", token(Role.EXPERT, "ex"), "ward", tls=trust)
        await ex.connect()
        try:
            # certbot's way: new files in place, then a signal.
            renewed = ca.issue("renewed", [HOST], serial=2)
            first.cert.write_bytes(renewed.cert.read_bytes())
            first.key.write_bytes(renewed.key.read_bytes())
            proc.send_signal(signal.SIGHUP)
            for _ in range(100):
                if await asyncio.to_thread(presented, port, trust) == 2:
                    break
                await asyncio.sleep(0.05)
            assert await asyncio.to_thread(presented, port, trust) == 2
            # A half-written renewal: the certificate of a third pair, the key still the second's.
            third = ca.issue("third", [HOST], serial=3)
            first.cert.write_bytes(third.cert.read_bytes())
            proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(1.0)
            assert proc.poll() is None
            assert await asyncio.to_thread(presented, port, trust) == 2  # the last good one
            # The connection made before any of it goes on.
            said = await ex.request({"type": "chat", "text": "still here"})
            assert said["seq"] > 0, said
        finally:
            await ex.close()
    log = (tmp_path / "data" / "server.log").read_text()
    assert "certificate not reloaded, the old one is served" in log
    assert "BEGIN" not in log  # no key material in the log


def test_bad_tls_settings_are_refused_with_a_reason(tmp_path: Path) -> None:
    ca = Authority(tmp_path / "pki")
    issued = ca.issue("server", [HOST], serial=5)
    other = ca.issue("other", [HOST], serial=6)
    cases = [
        (["--tls-cert", str(issued.cert)], "tls_cert and tls_key go together"),
        (["--tls-cert", str(tmp_path / "none.pem"), "--tls-key", str(issued.key)], "no such file"),
        (
            ["--tls-cert", str(issued.cert), "--tls-key", str(other.key)],
            "are not a certificate and its key",
        ),
    ]
    for flags, reason in cases:
        done = subprocess.run(
            [TELECONSULT, "serve", "--port", "0", "--data-dir", str(tmp_path / "d"), *flags],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, (flags, done.stderr)
        assert reason in done.stderr and "Traceback" not in done.stderr, done.stderr
