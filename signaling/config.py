"""Server settings (flags, environment, a TOML file, defaults) and the development secrets file."""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

ENV_PREFIX = "TELECONSULT_"
# Loopback and private networks (RFC 1918, RFC 4193): where a hospital's monitoring is.
PRIVATE_NETWORKS = (
    "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7",
)  # fmt: skip
# The TOML file `load_settings` reads, for the one construction it makes.
_CONFIG_FILE: ContextVar[Path | None] = ContextVar("config_file", default=None)
# Shown in place of a secret by `teleconsult config`.
MASK = "***"


class Settings(BaseSettings):
    """Everything a server needs to start: the one place defaults are written.

    Each setting is, from strongest to weakest: a `serve` flag (`--node-ttl`), an environment
    variable (`TELECONSULT_NODE_TTL`), a key of the `--config` TOML file (`node_ttl`), this
    default: the embedded single-node setup.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        populate_by_name=True,
        cli_kebab_case=True,
        cli_avoid_json=True,
        cli_hide_none_type=True,
        cli_show_env_vars=True,
    )

    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8080, description="HTTP and WebSocket port")
    announce: str | None = Field(
        default=None,
        description="address put in ICE candidates: needed behind NAT, and on loopback "
        "(aioice omits 127.0.0.1)",
    )
    media_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="UDP port all media comes in on (ICE host candidates), one for the node "
        "and its media workers; a port per connection from the ephemeral range when not set",
    )
    media_tcp_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="TCP port offered for ICE over TCP (RFC 6544), for networks that let no "
        "UDP through, one for the node and its media workers; none when not set",
    )
    public_url: str | None = Field(
        default=None,
        description="base URL printed in join links; http(s)://host:port when not set",
    )
    tls_cert: Path | None = Field(
        default=None,
        description="certificate chain (PEM): serve HTTPS and WSS on the port; re-read on SIGHUP",
    )
    tls_key: Path | None = Field(default=None, description="its private key (PEM)")
    data_dir: Path = Field(
        default=Path("data"), description="state, secrets, audit trail and recordings"
    )
    secret: str | None = Field(
        default=None, description="token signing secret; generated into the data dir when not set"
    )
    admin_key: str | None = Field(
        default=None, description="admin API key; generated into the data dir when not set"
    )
    redis: str | None = Field(
        default=None,
        description="Redis URL: this node joins the cluster sharing it; rooms, roles and the "
        "annotation channel are kept there and survive a node's loss (in memory when absent)",
    )
    node: str | None = Field(
        default=None, description="this node's name in the cluster; hostname:port when not set"
    )
    node_ttl: float = Field(
        default=3.0, description="seconds without a heartbeat after which a node is taken for dead"
    )
    # Both ends notice a dead connection within ping_timeout: a ping every 2 s costs nothing.
    ping_interval: float = Field(default=2.0, description="seconds between signaling pings")
    ping_timeout: float = Field(
        default=5.0, description="seconds of silence after which a connection is taken for dead"
    )
    reconnect_grace: float = Field(
        default=60.0,
        description="seconds a dropped participant, and a stream whose media path was lost, "
        "are kept for them to come back (a handover, a tunnel, a mountain road)",
    )
    handshake_timeout: float = Field(
        default=10.0, description="seconds a connection has to say hello"
    )
    max_message: int = Field(default=64 * 1024, description="largest signaling message, in bytes")
    max_held_frame: int = Field(
        default=768 * 1024,
        description="largest hold_frame message, in bytes (a JPEG of the held frame in base64)",
    )
    loudest_voices: int = Field(
        default=3,
        ge=0,
        le=50,
        description="voices each listener hears at once, the loudest speaking (0: every voice)",
    )
    held_frame_rate: float = Field(
        default=1.0, description="frames a second one connection may hold up for everyone"
    )
    rate: float = Field(default=100.0, description="signaling messages a second per connection")
    burst: float = Field(default=200.0, description="burst of signaling messages per connection")
    queue_size: int = Field(
        default=2048, description="events queued for one connection before it is cut as too slow"
    )
    pointer_rate: float = Field(default=60.0, description="pointer moves a second per connection")
    op_rate: float = Field(
        default=20.0, description="annotation operations a second per connection"
    )
    op_burst: float = Field(
        default=40.0, description="burst of annotation operations per connection"
    )
    max_participants: int = Field(default=50, description="participants a room holds")
    idle_timeout: float = Field(
        default=600.0, description="seconds an empty room lives before it ends"
    )
    sweep_interval: float = Field(default=5.0, description="seconds between sweeps of idle rooms")
    max_token_ttl: float = Field(default=7 * 86400.0, description="longest token lifetime accepted")
    recording_link_ttl: float = Field(
        default=900.0,
        description="seconds a recording's signed file links work (the playback page renews them)",
    )
    retention_days: float | None = Field(
        default=None,
        description="delete recorded sessions older than this many days; kept when not set or 0",
    )
    turn_port: int | None = Field(
        default=3478,
        description="UDP and TCP port of the built-in TURN server; -1 to run none. It does "
        "not run when external TURN URLs are given",
    )
    turn_urls: list[str] = Field(
        default_factory=list,
        alias="turn_url",
        description="an external TURN server (e.g. turn:turn.example.org:3478?transport=udp); "
        "repeatable",
    )
    turn_secret: str | None = Field(
        default=None, description="shared secret for TURN credentials (coturn's static-auth-secret)"
    )
    turn_allow: list[str] = Field(
        default_factory=list,
        description="a peer network the built-in relay may reach although internal "
        "(e.g. 10.20.0.0/16 for a hospital's own media servers); repeatable",
    )
    metrics_allow: list[str] = Field(
        default_factory=lambda: list(PRIVATE_NETWORKS),
        description="a network that may read /metrics (the client's address, or the one a "
        "proxy on this machine forwarded); repeatable; loopback and private networks by default",
    )
    turn_ttl: float = Field(
        default=12 * 3600.0, description="lifetime of TURN credentials, seconds"
    )
    turn_tls_cert: Path | None = Field(
        default=None, description="certificate (PEM) for TURN over TLS, turns:"
    )
    turn_tls_key: Path | None = Field(default=None, description="its private key (PEM)")
    turn_tls_port: int = Field(default=5349, description="TCP port of TURN over TLS")
    media_workers: int | None = Field(
        default=None,
        ge=0,
        description="processes that forward media, publishers placed on the least loaded: one "
        "per core when not set; 0 forwards in the server's own process (as a cluster node does)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="least severe log level written"
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="log lines as readable text, or as JSON lines for a collector"
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        return self

    @field_validator("metrics_allow")
    @classmethod
    def _networks(cls, networks: list[str]) -> list[str]:
        for network in networks:
            ipaddress.ip_network(network, strict=False)  # a ValueError names the bad one
        return networks

    @field_validator("turn_port")
    @classmethod
    def _no_turn(cls, port: int | None) -> int | None:
        return None if port is not None and port < 0 else port

    @field_validator("retention_days")
    @classmethod
    def _keep(cls, days: float | None) -> float | None:
        return days or None

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, level: Any) -> Any:
        return level.lower() if isinstance(level, str) else level

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment, then the TOML file (no .env, no secrets dir)."""
        toml = TomlConfigSettingsSource(settings_cls, toml_file=_CONFIG_FILE.get())
        return init_settings, env_settings, toml

    def base_url(self) -> str:
        """Return the URL that people open, without a trailing slash."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls_cert else 'http'}://{host}:{self.port}"

    def shown(self) -> dict[str, Any]:
        """Return the effective settings with secrets masked, as TOML keys and values."""
        values = self.model_dump(mode="json", by_alias=True)
        if values["turn_port"] is None:
            values["turn_port"] = -1  # what says "none" in a flag, a variable or the file
        for key in ("secret", "admin_key", "turn_secret"):
            if values[key] is not None:
                values[key] = MASK
        if values["redis"]:
            url = urlsplit(values["redis"])
            if url.password:
                host = url.netloc.rsplit("@", 1)[1]
                values["redis"] = urlunsplit(
                    url._replace(netloc=f"{url.username or ''}:{MASK}@{host}")
                )
        return values


def load_settings(config: Path | None = None, **given: Any) -> Settings:
    """Return the settings from `given` (flags), the environment, a TOML file, the defaults."""
    if config is not None and not config.is_file():
        raise ValueError(f"no such configuration file: {config}")
    token = _CONFIG_FILE.set(config)
    try:
        return Settings(**given)
    except ValidationError as e:
        # One line a problem, naming the setting, rather than pydantic's report.
        problems = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors())
        raise ValueError(f"bad settings: {problems}") from None
    finally:
        _CONFIG_FILE.reset(token)


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
