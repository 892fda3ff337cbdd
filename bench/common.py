"""What every benchmark needs: free ports, CPU time of a process, a server process to measure."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

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


def tree_pids(pid: int) -> list[int]:
    """Return a process and every live process under it (a server and its media workers)."""
    found: list[int] = []
    todo = [pid]
    for _ in range(1000):  # bounded: a tree of a server and its workers is small
        if not todo:
            break
        p = todo.pop()
        try:
            children = [
                int(c)
                for task in Path(f"/proc/{p}/task").iterdir()
                for c in (task / "children").read_text().split()
            ]
        except (FileNotFoundError, ProcessLookupError):
            continue  # ended between the two reads
        found.append(p)
        todo += children
    return found


def tree_cpu_seconds(pid: int) -> float:
    """Return the CPU time so far of a process and every live process under it."""
    total = 0.0
    for p in tree_pids(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += cpu_seconds(p)
    return total


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


def metric_sums(base: str, *names: str) -> dict[str, float]:
    """A node's counters from its /metrics, each summed over its labels."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    sums = dict.fromkeys(names, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in sums:
                sums[sample.name] += sample.value
    return sums


def start_redis(folder: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """Start a redis-server (persistence off) on a free loopback port; returns its URL."""
    import shutil

    path = shutil.which("redis-server")
    if path is None:
        raise SystemExit("redis-server is needed (./scripts/test installs it)")
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [path, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return f"redis://127.0.0.1:{port}/0", proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise TimeoutError("redis-server")


def stop(started: list[subprocess.Popen[Any]]) -> None:
    """Stop processes a benchmark started, the last first: asked, then killed after 15 s."""
    for p in reversed(started):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def serve(
    port: int,
    secret: str,
    data_dir: Path,
    *extra: str,
    log: Path | None = None,
    host: str = "127.0.0.1",
) -> subprocess.Popen[bytes]:
    """Start `teleconsult serve` on host:port and wait until it answers (its log to `log`)."""
    errors = subprocess.DEVNULL if log is None else log.open("ab")
    server = subprocess.Popen(
        [
            TELECONSULT,
            "serve",
            "--host",
            host,
            "--port",
            str(port),
            "--announce",
            host,
            "--secret",
            secret,
            "--data-dir",
            str(data_dir),
            "--log-level",
            "warning",
            "--turn-port",
            "0",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=errors,
    )
    if log is not None:
        errors.close()  # type: ignore[union-attr]
    try:
        wait_http(f"http://{host}:{port}/healthz")
    except TimeoutError:
        server.kill()
        raise
    return server
