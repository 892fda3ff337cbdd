"""What every benchmark needs: free ports, CPU time of a process, a server process to measure."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

TELECONSULT = str(Path(sys.executable).parent / "teleconsult")
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """Return a process's user+system CPU time so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wait_http(url: str, seconds: float = 20) -> None:
    """Wait until a URL answers, or raise TimeoutError."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


def serve(port: int, secret: str, data_dir: Path) -> subprocess.Popen[bytes]:
    """Start `teleconsult serve` on 127.0.0.1:port and wait until it answers."""
    server = subprocess.Popen(
        [
            TELECONSULT,
            "serve",
            "--port",
            str(port),
            "--announce",
            "127.0.0.1",
            "--secret",
            secret,
            "--data-dir",
            str(data_dir),
            "--log-level",
            "warning",
            "--turn-port",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
    except TimeoutError:
        server.kill()
        raise
    return server
