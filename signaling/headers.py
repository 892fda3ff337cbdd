"""Security headers on every HTTP answer: pages load only their own scripts and styles, and no
page can be framed, sniffed or leak its address (which may carry a token) as a referrer; over
HTTPS, browsers are told to come back over HTTPS only (HSTS)."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A year: what browsers' preload lists ask for; subdomains are left alone (a hospital's other
# hosts are not this server's to decide).
HSTS = b"max-age=31536000"


def policy(host: str, peers: list[str]) -> str:
    """Return the Content-Security-Policy for a page served to `host`.

    `peers` are the other nodes of a cluster: the playback page fetches a recording's files
    from the node that holds them.
    """
    others = " ".join(peers)
    sockets = f"ws://{host} wss://{host}" if host else ""
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data: blob:",
            f"media-src 'self' blob: {others}".strip(),
            f"connect-src 'self' {sockets} {others}".strip(),
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


class SecurityHeaders:
    """ASGI middleware adding the headers to every HTTP response."""

    def __init__(self, app: ASGIApp, peers: Callable[[], list[str]]) -> None:
        self.app = app
        self.peers = peers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
        # A Host header is the client's to write: keep only what a host and port can be.
        if not all(c.isalnum() or c in ".-:[]" for c in host):
            host = ""
        added = [
            (b"content-security-policy", policy(host, self.peers()).encode()),
            (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
        ]
        # The scheme is https when this node speaks TLS, or when a trusted proxy in front of it
        # says it took the request over TLS (X-Forwarded-Proto).
        if scope.get("scheme") == "https":
            added.append((b"strict-transport-security", HSTS))

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *added]}
            await send(message)

        await self.app(scope, receive, with_headers)
