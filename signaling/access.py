"""One authorization decision for every way to a room's data: the WebSocket's hello, the
recordings API, the signed file links the manifest hands out, and (through the hello it
relays) another node of a cluster. Each refusal has a stable code."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING

from teleconsult.session.errors import Code as SessionCode

from .errors import Code
from .tokens import Grant, TokenError, verify

if TYPE_CHECKING:
    from .hub import Hub


class Refused(Exception):
    """Access was refused; `code` is stable and `status` the HTTP status that says it."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


async def grant_for(hub: Hub, token: str, room: str) -> Grant:
    """Return a token's grant to a room, or raise Refused.

    Refused: a missing, invalid or expired token (401), another room's (403), a revoked one
    (401; a moderator's removal revokes the removed person's token too), or one whose identity
    a moderator removed from the room while it is live (403).
    """
    try:
        grant = verify(hub.keys.token_secret, token, hub.now())
    except TokenError as e:
        raise Refused(e.code, e.message, 401) from None
    if grant.room != room:
        raise Refused(Code.TOKEN_WRONG_ROOM, "this link is for another session", 403)
    if await hub.token_revoked(grant.token_id):
        raise Refused(Code.TOKEN_REVOKED, "this link was revoked", 401)
    live = hub.rooms.get(room)
    if live is not None and grant.identity in live.banned:
        raise Refused(SessionCode.REMOVED, "you were removed from this session", 403)
    return grant


@dataclass(frozen=True)
class Link:
    """Who a signed file link was handed to: an identity through one token, or the admin."""

    identity: str
    token_id: str  # "" for the admin


def sign(secret: str, path: str, expires: int, link: Link) -> str:
    """Sign a file link for one file, one holder and a time (every node shares the secret)."""
    message = f"{path}\n{expires}\n{link.token_id}\n{link.identity}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


async def check_link(
    hub: Hub, room: str, path: str, exp: str, sig: str, tid: str, who: str
) -> Link:
    """Return the holder of a valid signed link, or raise Refused.

    The link must be signed for this file and holder and not expired, and its holder's token
    not revoked nor its identity removed from the room since.
    """
    # isdigit() alone takes "²" and numbers too long for int(): ASCII digits, 12 at most.
    if not sig or not (exp.isascii() and exp.isdigit() and len(exp) <= 12):
        raise Refused("link_invalid", "this link is not valid", 401)
    link = Link(who, tid)
    if not hmac.compare_digest(sig, sign(hub.keys.token_secret, path, int(exp), link)):
        raise Refused("link_invalid", "this link is not valid", 401)
    if int(exp) < hub.now():
        raise Refused("link_expired", "this link has expired; open the recording again", 401)
    if tid and await hub.token_revoked(tid):
        raise Refused(Code.TOKEN_REVOKED, "this link was revoked", 401)
    live = hub.rooms.get(room)
    if tid and live is not None and who in live.banned:
        raise Refused(SessionCode.REMOVED, "you were removed from this session", 403)
    return link
