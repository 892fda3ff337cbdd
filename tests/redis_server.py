"""A real redis-server for tests: a free loopback port, stopped (or killed) by its PID."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from .conftest import free_socket
from .need import executable


class RedisServer:
    """One redis-server process; restartable on the same port and data folder."""

    def __init__(self, folder: Path, aof: bool = False) -> None:
        self.folder = folder
        self.aof = aof
        sock = free_socket()
        self.port = sock.getsockname()[1]
        sock.close()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start and wait until it accepts connections (10 s at most)."""
        self.proc = subprocess.Popen(
            [
                executable("redis-server"),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.aof else "no",
                # Every write on disk before the reply: a restart loses nothing acknowledged.
                "--appendfsync",
                "always",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        """Stop it by its PID."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
