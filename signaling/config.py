"""Server settings from options and environment, and the development secrets file."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

ENV_PREFIX = "TELECONSULT_"


@dataclass
class Settings:
    """Everything a server needs to start; defaults are the embedded single-node setup."""

    host: str = "127.0.0.1"
    port: int = 8080
    # Address put in ICE candidates: needed behind NAT, and on loopback (aioice omits 127.0.0.1).
    announce: str | None = None
    # Base URL printed in join links; defaults to http://host:port.
    public_url: str | None = None
    data_dir: Path = field(default_factory=lambda: Path("data"))
    secret: str | None = None
    admin_key: str | None = None
    redis: str | None = None
    # This node's name in a cluster (placement, `teleconsult drain`); default host:port.
    node: str | None = None
    # A node whose heartbeat is older than this is taken for dead and its rooms move.
    node_ttl: float = 3.0
    # Both ends notice a dead connection within ping_timeout: a ping every 2 s costs nothing.
    ping_interval: float = 2.0
    ping_timeout: float = 5.0
    # How long a participant whose connection dropped, and a stream whose media path was lost,
    # are kept for them to come back (a handover, a tunnel, a mountain road).
    reconnect_grace: float = 60.0
    handshake_timeout: float = 10.0
    max_message: int = 64 * 1024
    rate: float = 100.0
    burst: float = 200.0
    queue_size: int = 2048
    pointer_rate: float = 60.0
    op_rate: float = 20.0
    op_burst: float = 40.0
    max_participants: int = 50
    idle_timeout: float = 600.0
    sweep_interval: float = 5.0
    max_token_ttl: float = 7 * 86400.0
    # How long a recording's signed file links work (the playback page renews them).
    recording_link_ttl: float = 900.0
    # Recorded sessions older than this many days are deleted (None keeps them for ever).
    retention_days: float | None = None
    # The built-in TURN server runs unless external TURN URLs are given (or turn_port is None).
    turn_port: int | None = 3478
    turn_urls: list[str] = field(default_factory=list)
    turn_secret: str | None = None
    # Peer networks the built-in relay may send to although they are internal (tests: loopback).
    turn_allow: list[str] = field(default_factory=list)
    turn_ttl: float = 12 * 3600.0
    # TURN over TLS ("turns:"), when a certificate is given.
    turn_tls_cert: Path | None = None
    turn_tls_key: Path | None = None
    turn_tls_port: int = 5349

    def base_url(self) -> str:
        """Return the URL that people open, without a trailing slash."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def default_node_name(settings: Settings) -> str:
    """Return the name a node goes by when none is given: its host name and port."""
    import socket

    return f"{socket.gethostname()}:{settings.port}"


def env(name: str, default: str | None = None) -> str | None:
    """Read TELECONSULT_<NAME> from the environment."""
    return os.environ.get(ENV_PREFIX + name.upper(), default)


@dataclass(frozen=True)
class Secrets:
    """The token signing secret and the admin API key."""

    token_secret: str
    admin_key: str


def load_secrets(data_dir: Path) -> Secrets:
    """Read the development secrets under data_dir, creating them on first start."""
    path = data_dir / "secrets.json"
    if path.exists():
        raw = json.loads(path.read_text())
        return Secrets(raw["token_secret"], raw["admin_key"])
    data_dir.mkdir(parents=True, exist_ok=True)
    made = Secrets(secrets.token_urlsafe(32), secrets.token_urlsafe(24))
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"token_secret": made.token_secret, "admin_key": made.admin_key}, f)
    os.replace(tmp, path)
    return made


def resolve_secrets(settings: Settings) -> Secrets:
    """Return the secrets from settings, filling what is missing from the data directory."""
    if settings.secret and settings.admin_key:
        return Secrets(settings.secret, settings.admin_key)
    stored = load_secrets(settings.data_dir)
    return Secrets(settings.secret or stored.token_secret, settings.admin_key or stored.admin_key)


def turn_secret(settings: Settings, keys: Secrets) -> str:
    """Return the TURN shared secret: the one given, else one derived from the token secret."""
    if settings.turn_secret:
        return settings.turn_secret
    import hashlib
    import hmac

    return hmac.new(keys.token_secret.encode(), b"turn", hashlib.sha256).hexdigest()
