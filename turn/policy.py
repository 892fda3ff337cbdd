"""Which peer addresses a relay may send to: not loopback, private, link-local or multicast."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class PeerPolicy:
    """Denies relaying to internal addresses unless an allow-list names them."""

    def __init__(self, allow: Iterable[str] = (), own: Iterable[str] = ()) -> None:
        self.allow: list[Network] = [ipaddress.ip_network(a, strict=False) for a in allow]
        self.own = {ipaddress.ip_address(a) for a in own}

    def permits(self, host: str) -> bool:
        """Tell whether the relay may send to this address."""
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        if any(ip in net for net in self.allow):
            return True
        if ip in self.own:
            return False
        return not (
            ip.is_loopback
            or ip.is_private
            or ip.is_link_local
            or ip.is_multicast
            or ip.is_unspecified
            or ip.is_reserved
        )
