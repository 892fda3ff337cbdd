"""The ICE servers a node gives its participants: the built-in TURN server (or external ones),
and credentials minted for each participant under the TURN shared secret."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from teleconsult.turn import credentials
from teleconsult.turn.policy import PeerPolicy
from teleconsult.turn.server import TurnServer

from .config import Settings


def ephemeral_ports() -> tuple[int, int]:
    """The range the system gives ports from when a socket asks for any (Linux's, or its
    default)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def builtin_turn(settings: Settings, secret: str, clock: Callable[[], float]) -> TurnServer | None:
    """Return the built-in TURN server the settings ask for (None with external ones, or none).

    It may relay to the node's own addresses on their media ports only: `--media-port`, or
    (without) the ephemeral range that aiortc's ports come from (the relay keeps out of its
    own ports itself).
    """
    if settings.turn_urls or settings.turn_port is None:
        return None
    # Clients whose networks block direct UDP reach the SFU through it.
    own = [a for a in (settings.host, settings.announce) if a and a != "0.0.0.0"]
    low, high = ephemeral_ports()
    if settings.media_port is not None:
        low = high = settings.media_port

    def media(port: int) -> bool:
        return low <= port <= high

    tls = None
    if settings.turn_tls_cert is not None:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(settings.turn_tls_cert, settings.turn_tls_key)
    return TurnServer(
        secret,
        host=settings.host,
        port=settings.turn_port,
        relay_host=settings.host if settings.host != "0.0.0.0" else None,
        policy=PeerPolicy(allow=settings.turn_allow, own=own, media=media),
        clock=clock,
        tls=tls,
        tls_port=settings.turn_tls_port,
    )


def turn_urls(settings: Settings, turn: TurnServer | None) -> list[str]:
    """Return the TURN servers of a node: external ones, or its built-in one (once started)."""
    if settings.turn_urls:
        return list(settings.turn_urls)
    if turn is None:
        return []
    host = settings.announce or settings.host
    host = f"[{host}]" if ":" in host else host
    udp, tcp = turn.udp_address[1], turn.tcp_address[1]
    urls = [f"turn:{host}:{udp}?transport=udp", f"turn:{host}:{tcp}?transport=tcp"]
    if turn.tls_address is not None:
        # turns: needs the name on the certificate, which public_url carries.
        name = urlsplit(settings.base_url()).hostname or host
        urls.append(f"turns:{name}:{turn.tls_address[1]}?transport=tcp")
    return urls


def ice_servers(
    urls: list[str], secret: str, identity: str, ttl: float, now: float
) -> list[dict[str, Any]]:
    """Return the ICE servers of a welcome: the URLs with credentials for one identity."""
    if not urls:
        return []
    user, password = credentials.mint(secret, identity, ttl, now)
    return [{"urls": urls, "username": user, "credential": password}]
