"""Which peer addresses a relay may send to: globally routable unicast ones only."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# Special-purpose ranges (IANA registries, "Globally Reachable: False") that Python 3.11's
# is_global does not cover.
SPECIAL: list[Network] = [
    ipaddress.ip_network(n) for n in ("100.64.0.0/10", "192.0.0.0/24", "2001::/23", "2002::/16")
]


class PeerPolicy:
    """Denies relaying to internal addresses unless an allow-list names them, and to the node's
    own addresses except its media ports."""

    def __init__(
        self,
        allow: Iterable[str] = (),
        own: Iterable[str] = (),
        media: Callable[[int], bool] | None = None,
    ) -> None:
        self.allow: list[Network] = [ipaddress.ip_network(a, strict=False) for a in allow]
        self.own = {ipaddress.ip_address(a) for a in own}
        # The node's own addresses as peers give them: each relayed datagram is checked
        # against them by string, not parsed.
        self.own_hosts = {str(a) for a in self.own}
        # Which ports of its own addresses the relay may reach: the node's media (the reason a
        # built-in relay exists), never its other services (the server keeps out of its own
        # ports). None: none at all.
        self.media = media

    def permits_port(self, host: str, port: int) -> bool:
        """Tell whether the relay may send to this port of an address it may send to."""
        return host not in self.own_hosts or (self.media is not None and self.media(port))

    def permits(self, host: str) -> bool:
        """Tell whether the relay may send to this address."""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        if ip in self.own:
            # Whatever the allow-list says: its ports are checked datagram by datagram.
            return self.media is not None
        if any(ip in net for net in self.allow):
            return True
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        # is_global leaves out the special-purpose ranges of RFC 6890 (loopback, private,
        # carrier-grade NAT, link-local, documentation, benchmarking, reserved...) as the
        # running Python knows them; SPECIAL adds those older Pythons miss. Multicast is
        # "global" to Python but never a TURN peer.
        return ip.is_global and not ip.is_multicast and not any(ip in n for n in SPECIAL)
