"""Access tokens: HS256 JWTs naming a room, an identity, a display name, a role and an expiry."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass

import jwt

from teleconsult.session.roles import PERSON_ROLES, Role, person_role

ISSUER = "teleconsult"
AUDIENCE = "teleconsult"
ROOM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Grant:
    """What a valid token lets its holder do."""

    room: str
    identity: str
    name: str
    role: Role
    expires_at: float
    token_id: str


class TokenError(Exception):
    """A token was refused; `code` is stable and reveals nothing about the room."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_ttl(text: str) -> float:
    """Parse a duration such as 90, 90s, 30m, 2h or 1d into seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 30m, 2h, 1d)")
    return float(m.group(1)) * TTL_UNITS[m.group(2) or "s"]


def new_identity() -> str:
    """Return a random identity for a token minted without one."""
    return f"u-{secrets.token_hex(6)}"


def mint(
    secret: str,
    room: str,
    role: Role,
    name: str,
    ttl: float,
    identity: str | None = None,
    now: float | None = None,
) -> str:
    """Sign a token for one person in one room."""
    if not ROOM_ID.match(room):
        raise ValueError("room ids are 1-64 letters, digits, '.', '_' or '-'")
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    person_role(role)
    issued = time.time() if now is None else now
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": identity or new_identity(),
        "room": room,
        "name": name,
        "role": role.value,
        "iat": int(issued),
        "exp": int(issued + ttl),
        "jti": secrets.token_hex(8),
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def verify(secret: str, token: str, now: float | None = None) -> Grant:
    """Check a token's signature, expiry and claims; raise TokenError if any is wrong."""
    if not token:
        raise TokenError("token_missing", "an access token is required")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            audience=AUDIENCE,
            issuer=ISSUER,
            # Expiry is checked below against the injected clock, so tests need not sleep.
            options={
                "require": ["exp", "iat", "sub", "aud", "iss"],
                "verify_iat": False,
                "verify_exp": False,
            },
        )
        if not isinstance(claims["exp"], int | float):
            raise jwt.InvalidTokenError
        if claims["exp"] <= (time.time() if now is None else now):
            raise jwt.ExpiredSignatureError
    except jwt.ExpiredSignatureError:
        raise TokenError(
            "token_expired", "the access token has expired; ask for a new link"
        ) from None
    except jwt.PyJWTError:
        raise TokenError("token_invalid", "the access token is not valid") from None
    room, role, name = claims.get("room"), claims.get("role"), claims.get("name", "")
    if (
        not isinstance(room, str)
        or not isinstance(name, str)
        or not isinstance(role, str)
        or role not in Role._value2member_map_
        or Role(role) not in PERSON_ROLES
    ):
        raise TokenError("token_invalid", "the access token is not valid")
    return Grant(
        room, str(claims["sub"]), name, Role(role), float(claims["exp"]), str(claims.get("jti", ""))
    )
