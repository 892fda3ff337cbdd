"""A hospital network: Chromium in a namespace of its own, on an address that is not loopback,
opens the operator page over HTTPS (a certificate of the hospital's CA) and publishes through a
firewall (nftables) that lets out only the HTTPS port and the node's media ports: its UDP ones,
or, where no UDP may pass, its TCP ones (ICE over TCP)."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import expect

from teleconsult.client.media import MediaClient
from teleconsult.client.signaling import SignalingClient
from teleconsult.media.aioice_adapter import use_host_addresses
from teleconsult.session.roles import Role
from teleconsult.signaling.http_api import join_url

from ..certs import Authority
from ..conftest import server_process
from ..media_util import StampViewer
from ..need import executable
from ..netns import Namespace, namespace
from ..test_media_port import free_port
from .conftest import browser_in
from .test_network_browser import JOIN_WITHIN, STAMPS, token

# Every peer connection the page makes, for reading its chosen path from getStats.
KEEP_CONNECTIONS = """
(() => {
  const Original = window.RTCPeerConnection;
  window.__pcs = [];
  window.RTCPeerConnection = function (...args) {
    const pc = new Original(...args);
    window.__pcs.push(pc);
    return pc;
  };
  window.RTCPeerConnection.prototype = Original.prototype;
  Object.setPrototypeOf(window.RTCPeerConnection, Original);
})();
"""
# The chosen path of each connected one: [local protocol, remote protocol, remote port, local
# candidate type, and how a relayed one reaches its TURN server].
PATHS = """async () => {
  const out = [];
  for (const pc of window.__pcs) {
    const stats = await pc.getStats();
    stats.forEach((s) => {
      if (s.type !== "transport" || !s.selectedCandidatePairId) return;
      const pair = stats.get(s.selectedCandidatePairId);
      const local = stats.get(pair.localCandidateId), remote = stats.get(pair.remoteCandidateId);
      out.push([local.protocol, remote.protocol, remote.port, local.candidateType,
                local.relayProtocol || null]);
    });
  }
  return out;
}"""


# What each connection's ICE has: its state and every candidate, for a failure's message.
CANDIDATES = """async () => {
  const out = [];
  for (const pc of window.__pcs) {
    out.push(`${pc.connectionState} ${pc.iceConnectionState}`);
    (await pc.getStats()).forEach((s) => {
      if (s.type !== "local-candidate" && s.type !== "remote-candidate") return;
      out.push([s.type, s.candidateType, s.protocol, s.address, s.port, s.relayProtocol]);
    });
  }
  return out;
}"""


def firewall(ns: Namespace, https: int, udp: list[int], tcp: list[int]) -> None:
    """What leaves the namespace for the node: its HTTPS port and these, nothing else (not even
    answers to what the node sent from elsewhere: a firewall that blocks UDP blocks it all)."""
    allowed = [f"ip daddr {ns.host} tcp dport {https} accept"]
    for proto, ports in (("udp", udp), ("tcp", tcp)):
        if ports:
            listed = ", ".join(str(p) for p in ports)
            allowed.append(f"ip daddr {ns.host} {proto} dport {{ {listed} }} accept")
    rules = f"""
table inet hospital {{
    counter refused {{ }}
    chain out {{
        type filter hook output priority 0; policy accept;
        oif "lo" accept
        {chr(10).join(allowed)}
        counter name refused drop
    }}
}}
"""
    subprocess.run(
        ns.command([executable("nft", "/usr/sbin/nft"), "-f", "-"]),
        input=rules,
        text=True,
        check=True,
        capture_output=True,
        timeout=10,
    )


def refused(ns: Namespace) -> int:
    """Packets the namespace's firewall has refused to let out."""
    out = subprocess.run(
        ns.command([executable("nft", "/usr/sbin/nft"), "-j", "list", "counter", "inet",
                    "hospital", "refused"]),
        text=True, check=True, capture_output=True, timeout=10,
    ).stdout  # fmt: skip
    items = json.loads(out)["nftables"]
    return sum(i["counter"]["packets"] for i in items if "counter" in i)


async def watch_from_outside(ns: Namespace, port: int, trust: ssl.SSLContext, stream: str) -> float:
    """An expert on the node's side subscribes over WSS; seconds until the page's picture."""
    use_host_addresses([ns.host])
    sig = SignalingClient(f"wss://{ns.host}:{port}/ws", token(Role.EXPERT, "ex"), "van", tls=trust)
    watcher = MediaClient(sig)
    viewer = StampViewer()
    try:
        await sig.connect()
        sub = await watcher.subscribe(stream)
        video = next(t for t in sub.tracks.values() if t.kind == "video")
        watching = asyncio.ensure_future(viewer.watch(video))
        try:
            return await viewer.back_after(time.time(), timeout=20)
        finally:
            watching.cancel()
    finally:
        await watcher.close()
        await sig.close()
        use_host_addresses(None)


@pytest.mark.parametrize("path", ["udp", "tcp", "turns"])
async def test_the_operator_page_publishes_over_https_through_a_firewall(
    tmp_path: Path, path: str
) -> None:
    udp, tcp, turn, turns = free_port(), free_port(), free_port(), free_port()
    with namespace(8) as ns:
        ca = Authority(tmp_path / "pki")
        issued = ca.issue("node", [ns.host], serial=8)
        flags = [
            "--tls-cert", str(issued.cert), "--tls-key", str(issued.key), "--media-workers", "2",
            "--media-port", str(udp), "--turn-port", str(turn),
            "--turn-tls-cert", str(issued.cert), "--turn-tls-key", str(issued.key),
            "--turn-tls-port", str(turns),
        ]  # fmt: skip
        if path != "turns":  # with only TLS let through, ICE over TCP would be no use either
            flags += ["--media-tcp-port", str(tcp)]
        with server_process(tmp_path / "data", *flags, host=ns.host) as (port, _):
            media_ports = {"udp": [udp], "tcp": [tcp], "turns": [turns]}[path]
            udp_open = media_ports if path == "udp" else []
            tcp_open = media_ports if path != "udp" else []
            firewall(ns, port, udp_open, tcp_open)
            # Anything else is refused: here a datagram to another port of the node.
            # (The local stack tells the sender: EPERM.)
            probe = (
                "import socket\ntry:\n"
                f"    socket.socket(2, 2).sendto(b'x', ('{ns.host}', 9))\n"
                "except PermissionError:\n    pass"
            )
            ns.inside(sys.executable, "-c", probe)
            assert refused(ns) >= 1
            origin = f"https://{ns.host}:{port}"
            async with browser_in(ns, origin, tmp_path, trusted_spki=issued.spki_sha256) as ctx:
                await ctx.add_init_script(KEEP_CONNECTIONS)
                await ctx.add_init_script(STAMPS)
                page = await ctx.new_page()
                said: list[str] = []
                page.on("console", lambda m: said.append(f"console {m.type}: {m.text}"))
                page.on("pageerror", lambda e: said.append(f"page error: {e}"))
                await page.goto(join_url(origin, "van", token(Role.OPERATOR, "op")))
                await expect(page.locator("#state")).to_have_attribute(
                    "data-state", "joined", timeout=JOIN_WITHIN * 1000
                )
                # Secure on its own merit: no flag declares this origin secure.
                assert await page.evaluate("window.isSecureContext") is True
                await page.locator('.device[data-row="source"] button.toggle').click()
                # TURN is offered but blocked: the page waits for a relayed candidate 2 s.
                try:
                    await expect(page.locator("figure.local video")).to_have_count(1, timeout=10000)
                except AssertionError as e:
                    raise AssertionError(f"{e}\nwhat the page said: {said}") from None
                feed = await page.locator("figure.local").get_attribute("data-feed")
                assert feed is not None
                trust = ssl.create_default_context(cafile=ca.path)
                try:
                    back = await watch_from_outside(ns, port, trust, feed.rsplit(".", 1)[0])
                except TimeoutError:
                    found = await page.evaluate(CANDIDATES)
                    raise AssertionError(f"no picture; the page's ICE: {found}") from None
                paths: Any = await page.evaluate(PATHS)
        print(f"{path}: picture at the expert {back:.2f} s after asking; paths {paths}")
        # The page's media went the one way the firewall left open.
        if path == "turns":
            # Relayed by the node's TURN server, reached over TLS, on to the media port.
            assert paths and all(p[3] == "relay" and p[4] == "tls" for p in paths), paths
            assert all(p[2] == udp for p in paths), paths
        else:
            assert paths and all(p[0] == path and p[2] in media_ports for p in paths), paths
