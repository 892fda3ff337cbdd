"""TURN REST API credentials: usernames "<expiry>:<identity>", passwords HMAC-SHA1 of them.

The same scheme as coturn's `use-auth-secret`, so credentials minted here work there too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac


def password(secret: str, username: str) -> str:
    """Return the password of a username under a shared secret."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def mint(secret: str, identity: str, ttl: float, now: float) -> tuple[str, str]:
    """Return (username, password) valid until now + ttl."""
    username = f"{int(now + ttl)}:{identity}"
    return username, password(secret, username)


def check(secret: str, username: str, now: float) -> str | None:
    """Return the password for a username that has not expired, else None."""
    expiry, sep, _identity = username.partition(":")
    # isdigit() alone takes "²" and numbers too long for int(): ASCII digits, 12 at most.
    if not sep or not (expiry.isascii() and expiry.isdigit() and len(expiry) <= 12):
        return None
    if int(expiry) < now:
        return None
    return password(secret, username)


def identity(username: str) -> str:
    """Return the identity part of a username (for quotas)."""
    return username.partition(":")[2]
