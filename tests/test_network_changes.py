"""Network changes on the publisher's or the viewer's side, in a namespace the test makes: a
handover to a new address, a 30 s silent cut, a 5 s link down. `teleconsult publish` and
`teleconsult subscribe` heal by themselves; the picture is back within 2 s of the network."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from teleconsult.client.media import MediaClient
from teleconsult.client.signaling import SignalingClient
from teleconsult.client.tools import PAUSE
from teleconsult.media.aioice_adapter import use_host_addresses
from teleconsult.media.synthetic import UltrasoundTrack
from teleconsult.session.roles import Role
from teleconsult.signaling.tokens import mint

from .conftest import SECRET, server_process, stop
from .netns import CHANGES, Namespace, change_network, namespace, watch_through
from .test_media_port import free_port

TELECONSULT = str(Path(sys.executable).parent / "teleconsult")
BACK_WITHIN = 2.0


class Lines:
    """A child's JSON lines, read as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.items: list[dict[str, Any]] = []
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("{"):
                self.items.append(json.loads(line))

    async def first(self, key: str, timeout: float, where: Any = None) -> dict[str, Any]:
        for _ in range(int(timeout * 20)):
            for item in self.items:
                if key in item and (where is None or where(item[key])):
                    return item
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no {key} line in {timeout} s: {self.items[-5:]}")


def _counts(line: dict[str, Any]) -> tuple[int, int]:
    """Frames and pauses over every feed of a stats line."""
    return (
        sum(f.get("frames", 0) for f in line.values()),
        sum(f.get("pauses", 0) for f in line.values()),
    )


async def picture_back(seen: Lines, back_at: float, counted: int, timeout: float = 20) -> float:
    """Seconds from `back_at` until the tool's picture came back: when its `resumed` line says,
    or at most its pause threshold when frames never stopped that long (the change was healed
    before a pause, as a fast handover can be). `counted`: the lines read before the change."""
    for _ in range(int(timeout * 20)):
        for item in seen.items:
            if "resumed" in item and item["resumed"]["at"] > back_at:
                return float(item["resumed"]["at"]) - back_at
        stats = [_counts(i) for i in seen.items if "resumed" not in i and i]
        later = [_counts(i) for i in seen.items[counted:] if "resumed" not in i and i]
        if stats[: len(stats) - len(later)] and len(later) >= 3:
            before = stats[len(stats) - len(later) - 1]
            # Frames still coming at the end, and no pause counted since the change.
            if later[-1][0] > later[-2][0] and later[-1][1] == before[1]:
                return PAUSE
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the picture did not come back in {timeout} s: {seen.items[-5:]}")


@contextmanager
def tool(ns: Namespace, *argv: str) -> Iterator[tuple[subprocess.Popen[str], Lines]]:
    """Run a teleconsult command in the namespace; stop it by its PID afterwards."""
    proc = subprocess.Popen(
        ns.command([TELECONSULT, *argv]),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield proc, Lines(proc)
    finally:
        stop(proc, 15)
        if proc.stdout is not None:
            proc.stdout.close()


def token(role: Role, who: str) -> str:
    return mint(SECRET, "van", role, who, 3600, who)


@pytest.mark.parametrize(("change", "shared"), [(c, False) for c in CHANGES] + [("handover", True)])
async def test_the_publish_tool_heals_a_network_change(
    tmp_path: Path, change: str, shared: bool
) -> None:
    # Shared: every connection on the node's one media port, where the phone's new address
    # must be tied to its connection by its checks (media/demux.py).
    extra = ["--media-port", str(free_port()), "--media-workers", "2"] if shared else []
    with namespace() as ns, server_process(tmp_path, *extra, host=ns.host) as (port, _):
        url = f"http://{ns.host}:{port}"
        with tool(
            ns, "publish", "--server", url, "--room", "van", "--token", token(Role.OPERATOR, "op"),
            "--synthetic", "--size", "320x240", "--fps", "15", "--duration", "150",
        ) as (_, published):  # fmt: skip
            stream = (await published.first("published", 30))["published"]
            back, events = await watch_through(
                ns, port, token(Role.EXPERT, "ex"), "van", change, stream
            )
            print(f"publish {change}: picture back {back:.2f} s after the network")
            assert back <= BACK_WITHIN, f"picture back {back:.2f} s after the network"
            # The viewer kept its subscription to the same stream: a pause, not a new stream.
            assert not [e for e in events if e["type"] in ("stream_removed", "stream_added")]
            assert {item["published"] for item in published.items if "published" in item} == {
                stream
            }


@pytest.mark.parametrize("change", CHANGES)
async def test_the_subscribe_tool_heals_a_network_change(tmp_path: Path, change: str) -> None:
    with namespace(2) as ns, server_process(tmp_path, host=ns.host) as (port, _):
        url = f"http://{ns.host}:{port}"
        use_host_addresses([ns.host])
        sig = SignalingClient(f"ws://{ns.host}:{port}/ws", token(Role.OPERATOR, "op"), "van")
        media = MediaClient(sig)
        try:
            await sig.connect()
            await media.publish([(UltrasoundTrack(320, 240, 15), "probe", "")])
            with tool(
                ns, "subscribe", "--server", url, "--room", "van",
                "--token", token(Role.EXPERT, "ex"), "--duration", "150", "--stats",
            ) as (proc, seen):  # fmt: skip
                for _ in range(300):  # frames arriving before the change
                    stats = [i for i in seen.items if "resumed" not in i and i]
                    if stats and any(f.get("frames", 0) > 10 for f in stats[-1].values()):
                        break
                    await asyncio.sleep(0.1)
                counted = len(seen.items)
                back_at = await asyncio.to_thread(change_network, ns, change)
                back = await picture_back(seen, back_at, counted)
                assert proc.poll() is None  # it rode the change out
        finally:
            await media.close()
            await sig.close()
            use_host_addresses(None)
        print(f"subscribe {change}: picture back {back:.2f} s after the network")
        assert back <= BACK_WITHIN, f"picture back {back:.2f} s after the network"
