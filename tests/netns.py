"""A network namespace of a test's own, joined to this one by a veth pair, whose path the test
can cut silently, take down, or move to another address (a handover)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from teleconsult.client.media import MediaClient
from teleconsult.client.signaling import SignalingClient
from teleconsult.media.aioice_adapter import use_host_addresses

from .media_util import StampViewer
from .need import executable

# A rate of 8 bit/s with a 10-byte bucket drops every packet, and the OS sees no change: the
# silent cut of a tunnel or a dead cell, both ways when put on both ends.
SILENT = ["tbf", "rate", "8bit", "burst", "10", "limit", "1"]
# The changes a session must ride out (docs/protocol.md, "Reconnecting").
CHANGES = ["handover", "silent_cut_30s", "link_down_5s"]


def _ip(*args: str) -> None:
    subprocess.run([executable("ip"), *args], check=True, capture_output=True, timeout=10)


class Namespace:
    """One namespace: `host` is this side's address, `address` the namespace's current one."""

    def __init__(self, tag: int) -> None:
        self.name = f"tc{os.getpid()}-{tag}"
        self.outer = f"tco{os.getpid() % 10000}{tag}"
        self.inner = f"tci{os.getpid() % 10000}{tag}"
        net = 100 + (os.getpid() + tag) % 100
        self.host = f"10.{net}.{tag}.1"
        self.address = f"10.{net}.{tag}.2"
        self._spare = 3

    def create(self) -> None:
        """Make the namespace and its link, both ends up."""
        _ip("netns", "add", self.name)
        _ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        _ip("link", "set", self.inner, "netns", self.name)
        # IPv4 only inside: an IPv6 link-local address arriving a second after the link is up
        # (duplicate address detection) is a network change to a Chromium started meanwhile,
        # which aborts the page's loads with ERR_NETWORK_CHANGED.
        for scope in ("all", "default", self.inner):
            self.inside("sysctl", "-q", "-w", f"net.ipv6.conf.{scope}.disable_ipv6=1")
        _ip("addr", "add", f"{self.host}/24", "dev", self.outer)
        _ip("link", "set", self.outer, "up")
        self.inside("ip", "addr", "add", f"{self.address}/24", "dev", self.inner)
        self.inside("ip", "link", "set", self.inner, "up")
        self.inside("ip", "link", "set", "lo", "up")

    def inside(self, *argv: str) -> None:
        """Run a command in the namespace and wait for it."""
        _ip("netns", "exec", self.name, *argv)

    def command(self, argv: list[str]) -> list[str]:
        """Return a command line that runs `argv` in the namespace."""
        return [executable("ip"), "netns", "exec", self.name, *argv]

    def cut(self) -> None:
        """Drop everything both ways without the OS seeing any change."""
        _ip("netns", "exec", self.name, "tc", "qdisc", "add", "dev", self.inner, "root", *SILENT)
        self.shape(*SILENT)

    def heal(self) -> None:
        """Let traffic through again."""
        _ip("netns", "exec", self.name, "tc", "qdisc", "del", "dev", self.inner, "root")
        self.unshape()

    def shape(self, *qdisc: str) -> None:
        """Put a qdisc (e.g. `tbf rate 1mbit …`) on what the namespace receives."""
        subprocess.run(
            [executable("tc"), "qdisc", "add", "dev", self.outer, "root", *qdisc],
            check=True,
            capture_output=True,
            timeout=10,
        )

    @contextmanager
    def shaped(self, *qdisc: str) -> Iterator[None]:
        """Shape what the namespace receives for the length of a `with` block."""
        self.shape(*qdisc)
        try:
            yield
        finally:
            self.unshape()

    def dropped(self) -> int:
        """Packets the qdisc on what the namespace receives has dropped so far."""
        out = subprocess.run(
            [executable("tc"), "-s", "qdisc", "show", "dev", self.outer],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        return sum(int(m) for m in re.findall(r"dropped (\d+)", out))

    def unshape(self) -> None:
        """Take the qdisc off what the namespace receives."""
        subprocess.run(
            [executable("tc"), "qdisc", "del", "dev", self.outer, "root"],
            check=True,
            capture_output=True,
            timeout=10,
        )

    def link(self, up: bool) -> None:
        """Take the namespace's interface down (the OS sees it) or bring it up."""
        self.inside("ip", "link", "set", self.inner, "up" if up else "down")

    def move(self) -> str:
        """Give the namespace a new address and take the old one away (a handover)."""
        old = self.address
        self.address = f"{old.rsplit('.', 1)[0]}.{self._spare}"
        self._spare += 1
        # The old one goes first: deleting a subnet's primary address takes its secondaries
        # with it, and a phone's new cell gives it one address, not two.
        self.inside("ip", "addr", "del", f"{old}/24", "dev", self.inner)
        self.inside("ip", "addr", "add", f"{self.address}/24", "dev", self.inner)
        return self.address

    def delete(self) -> None:
        """Remove the namespace (its end of the pair goes with it) and this side's end."""
        subprocess.run(
            [executable("ip"), "netns", "del", self.name], capture_output=True, timeout=10
        )
        subprocess.run(
            [executable("ip"), "link", "del", self.outer], capture_output=True, timeout=10
        )


@contextmanager
def namespace(tag: int = 1) -> Iterator[Namespace]:
    """A namespace for one test, removed after it whatever happens."""
    ns = Namespace(tag)
    ns.delete()  # a leftover of a killed run
    ns.create()
    try:
        yield ns
    finally:
        ns.delete()


def change_network(ns: Namespace, change: str) -> float:
    """Make the change; return the wall time the network is back (on its new address)."""
    if change == "handover":
        ns.move()
    elif change == "silent_cut_30s":
        ns.cut()
        time.sleep(30)
        ns.heal()
    else:
        ns.link(False)
        time.sleep(5)
        ns.link(True)
    return time.time()


async def watch_through(
    ns: Namespace, port: int, token: str, room: str, change: str, stream: str
) -> tuple[float, list[dict[str, Any]]]:
    """An expert on this side watches a stream through a change of the namespace's network;
    returns the seconds from the network's return to a picture taken after it, and the events
    the expert got meanwhile."""
    use_host_addresses([ns.host])
    sig = SignalingClient(f"ws://{ns.host}:{port}/ws", token, room)
    media = MediaClient(sig)
    viewer = StampViewer()
    try:
        await sig.connect()
        sub = await media.subscribe(stream)
        watching = asyncio.ensure_future(viewer.watch(sub.tracks[f"{stream}.0"]))
        await viewer.back_after(time.time())  # a picture before the change
        back_at = await asyncio.to_thread(change_network, ns, change)
        back = await viewer.back_after(back_at)
        watching.cancel()
        return back, sig.drain()
    finally:
        await media.close()
        await sig.close()
        use_host_addresses(None)
