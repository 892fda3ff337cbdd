"""The teleconsult command: serve, token, rooms."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from pydantic_settings import CliSettingsSource

from teleconsult.session.roles import PERSON_ROLES, Role
from teleconsult.signaling.config import Settings, env, load_settings, resolve_secrets
from teleconsult.signaling.logs import configure_logging
from teleconsult.signaling.tokens import mint, parse_ttl

T = TypeVar("T")

log = logging.getLogger("teleconsult.serve")

if TYPE_CHECKING:
    from teleconsult.session.store import Store

# Where client commands find a local server's generated secrets: the server's own default.
DATA_DIR = str(Settings.model_fields["data_dir"].default)
DEMO_ROOM = "demo"
# The subcommands of the one parser (a type only: argparse's class is not subscriptable).
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
DEMO_PEOPLE = [
    (Role.OPERATOR, "Sonographer", "demo-operator"),
    (Role.EXPERT, "Remote expert", "demo-expert"),
    (Role.AUDIENCE, "Trainee", "demo-audience"),
    (Role.MODERATOR, "Moderator", "demo-moderator"),
]


def _settings_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        default=env("DATA_DIR", DATA_DIR),
        help="state, secrets, audit trail and recordings [TELECONSULT_DATA_DIR]",
    )
    p.add_argument(
        "--secret",
        default=env("SECRET"),
        help="token signing secret (default: generated into the data dir) [TELECONSULT_SECRET]",
    )


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser."""
    parser = argparse.ArgumentParser(prog="teleconsult", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _server_commands(sub)
    _admin_commands(sub)
    _cluster_commands(sub)
    _media_commands(sub)
    _loadtest_command(sub)
    return parser


def _loadtest_command(sub: Commands) -> None:
    """`loadtest`: what a node carries, before going live."""
    p = sub.add_parser(
        "loadtest",
        help="load a running node with publishers and viewers that do not decode; report "
        "frames delivered, delay, loss and the node's CPU (exit 1 when a threshold fails)",
    )
    p.add_argument("--server", default=env("SERVER", "http://127.0.0.1:8080"))
    p.add_argument("--admin-key", default=env("ADMIN_KEY"), help="[TELECONSULT_ADMIN_KEY]")
    p.add_argument("--data-dir", default=env("DATA_DIR", DATA_DIR), help="for the admin key")
    p.add_argument("--rooms", type=int, default=1)
    p.add_argument("--publishers", type=int, default=1, help="per room")
    p.add_argument("--viewers", type=int, default=4, help="per room, each sees every publisher")
    p.add_argument("--duration", type=float, default=30.0, help="seconds measured")
    p.add_argument("--video", choices=["360p", "720p", "1080p"], default="720p")
    p.add_argument(
        "--annotations", type=float, default=0.0, help="pointer moves a second per viewer"
    )
    p.add_argument("--out", type=Path, default=Path("."), help="folder for the plot and raw data")
    p.add_argument("--address", help="address to send media from (default: every one)")
    p.add_argument("--ca-file", type=Path, help="CA certificate(s) to trust for an https server")
    p.add_argument("--min-delivered", type=float, metavar="SHARE", help="e.g. 0.99")
    p.add_argument("--max-delay-p95", type=float, metavar="MS")
    p.add_argument("--max-loss", type=float, metavar="SHARE", help="e.g. 0.01")
    p.add_argument("--max-cpu", type=float, metavar="PERCENT", help="of one core, mean")


def _server_commands(sub: Commands) -> None:
    """`serve` and `config`: every setting a flag."""
    for name, doc in (
        ("serve", "run the server"),
        ("config", "print the settings `serve` would run with (secrets masked), as TOML"),
    ):
        p = sub.add_parser(name, help=doc)
        p.add_argument(
            "--config",
            type=Path,
            default=env("CONFIG"),
            help="a TOML file of settings (keys as below, with underscores) [TELECONSULT_CONFIG]",
        )
        if name == "serve":
            p.add_argument(
                "--demo",
                action="store_true",
                help="create a demo room and print join links for each role",
            )
        # Every setting becomes a flag, named and documented from the one model.
        p.set_defaults(settings_source=CliSettingsSource(Settings, root_parser=p))


def _admin_commands(sub: Commands) -> None:
    """`token`, `rooms`, `revoke`: what an administrator does with links and rooms."""
    token = sub.add_parser("token", help="mint an access token")
    token.add_argument("--room", required=True)
    token.add_argument(
        "--role", required=True, choices=[r.value for r in Role if r in PERSON_ROLES]
    )
    token.add_argument("--name", required=True, help="display name")
    token.add_argument("--identity", help="stable identity (default: random)")
    token.add_argument("--ttl", default="2h", help="lifetime, e.g. 90m, 2h, 1d")
    token.add_argument("--url", help="also print a join link with this base URL")
    _settings_args(token)

    rooms = sub.add_parser("rooms", help="list the rooms of a running server (or cluster)")
    revoke = sub.add_parser("revoke", help="revoke a join link's token: cut and refused")
    revoke.add_argument("token", help="the token (the part after #token= in the link)")
    for p in (rooms, revoke):
        p.add_argument("--server", default=env("SERVER", "http://127.0.0.1:8080"))
        p.add_argument("--admin-key", default=env("ADMIN_KEY"), help="[TELECONSULT_ADMIN_KEY]")
        p.add_argument(
            "--data-dir",
            default=env("DATA_DIR", DATA_DIR),
            help="where to read the generated admin key from",
        )
        p.add_argument("--json", action="store_true", help="print JSON")


def _cluster_commands(sub: Commands) -> None:
    """`nodes` and `drain`: a cluster's nodes."""
    nodes = sub.add_parser("nodes", help="list the live nodes of a cluster with their load")
    drain = sub.add_parser("drain", help="stop placing new rooms on a node (to upgrade it)")
    drain.add_argument("node", help="the node's name, as `teleconsult nodes` lists it")
    drain.add_argument("--undo", action="store_true", help="place rooms on it again")
    drain.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="then wait up to this long for its last room to end (exit 1 if one is left)",
    )
    for p in (nodes, drain):
        p.add_argument("--redis", default=env("REDIS"), required=not env("REDIS"))
        p.add_argument("--json", action="store_true", help="print JSON")


def _media_commands(sub: Commands) -> None:
    """`publish`, `subscribe` and `export`: media from the command line."""
    for name, doc in (
        ("publish", "publish a video source to a room"),
        ("subscribe", "receive a room's streams and report frame rate and latency"),
    ):
        p = sub.add_parser(name, help=doc)
        p.add_argument("--server", default=env("SERVER", "http://127.0.0.1:8080"))
        p.add_argument("--room", required=True)
        p.add_argument(
            "--token",
            default=env("TOKEN"),
            help="access token (default: minted from the data dir's secret)",
        )
        p.add_argument("--name", default="Publisher" if name == "publish" else "Viewer")
        p.add_argument(
            "--role",
            choices=[r.value for r in Role if r in PERSON_ROLES],
            default="operator" if name == "publish" else "audience",
        )
        p.add_argument("--duration", type=float, help="seconds to run (default: until stopped)")
        _settings_args(p)
    exp = sub.add_parser("export", help="export a recorded session as an MP4 for teaching")
    exp.add_argument("session", help="the recorded session's id")
    exp.add_argument("--out", required=True, help="the MP4 to write (or the PNG, with --preview)")
    exp.add_argument(
        "--mask",
        action="append",
        default=[],
        help="x,y,w,h to black out (patient details): fractions of the picture (0,0,1,0.2) "
        "or pixels of its largest size (0,0,640,100); repeatable",
    )
    exp.add_argument(
        "--preview",
        action="store_true",
        help="write one PNG of the export at --at seconds, masks outlined, and stop",
    )
    exp.add_argument("--at", type=float, default=0.0, help="seconds into the feed, for --preview")
    exp.add_argument("--feed", help="feed id to export (default: the first patient image)")
    exp.add_argument("--data-dir", default=env("DATA_DIR", DATA_DIR))
    pub = sub.choices["publish"]
    src = pub.add_mutually_exclusive_group(required=True)
    src.add_argument("--synthetic", action="store_true", help="built-in ultrasound-like source")
    src.add_argument("--file", help="a video file, looped")
    src.add_argument("--device", help="a capture device, e.g. /dev/video0")
    pub.add_argument("--source", default="probe", help="probe, laparoscope, camera or screen")
    pub.add_argument("--label", default="")
    pub.add_argument("--codec", choices=["VP8", "H264"], help="video codec (default: VP8)")
    pub.add_argument("--size", default="1280x720")
    pub.add_argument("--fps", type=float, default=30.0)
    pub.add_argument(
        "--patient-consented",
        action="store_true",
        help="the patient consented to recording: answer a moderator's request to record yes "
        "(without it, the request is declined: nobody is at this station to answer)",
    )
    sub.choices["subscribe"].add_argument(
        "--stats", action="store_true", help="print statistics every second"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the command line."""
    args = build_parser().parse_args(argv)
    command = {
        "serve": _serve,
        "config": _config,
        "token": _token,
        "rooms": _rooms,
        "publish": _publish,
        "subscribe": _subscribe,
        "export": _export,
        "nodes": _nodes,
        "revoke": _revoke,
        "drain": _drain,
        "loadtest": _loadtest,
    }[args.command]
    try:
        return command(args)
    except ValueError as e:
        print(f"teleconsult: {e}", file=sys.stderr)
        return 2


def _serve(args: argparse.Namespace) -> int:
    # The server's modules (aiortc, uvicorn) load here only: `teleconsult token` stays quick.
    import uvicorn

    from teleconsult.app import create_app
    from teleconsult.media.aiortc_codecs import count_codecs
    from teleconsult.signaling.server import NodeServer
    from teleconsult.signaling.tls import server_context

    settings = _settings(args)
    configure_logging(settings.log_level, settings.log_format)
    keys = resolve_secrets(settings)
    count_codecs()
    app = create_app(settings, keys)
    if args.demo:
        _open_demo_room(app.state.hub, settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # logging is configured once, above
        ws_max_size=max(1024 * 1024, 2 * settings.max_held_frame),  # the app says what is too large
        ws_ping_interval=None,
        lifespan="on",
    )
    cert, key = settings.tls_cert, settings.tls_key
    tls = None
    if cert is not None and key is not None:
        tls = server_context(cert, key)  # a bad file stops here
        config.load()
        config.ssl = tls
    server = NodeServer(config, app.state.hub)

    async def run() -> None:
        if tls is not None and cert is not None and key is not None:
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, _reload_tls, tls, cert, key
            )
        task = asyncio.create_task(server.serve())
        # uvicorn offers no startup event; poll for at most a minute.
        for _ in range(1200):
            if server.started or task.done():
                break
            await asyncio.sleep(0.05)
        if server.started:
            _say_how_to_join(settings, keys.token_secret, args.demo)
        await task

    asyncio.run(run())
    return 0


def _reload_tls(context: Any, cert: Path, key: Path) -> None:
    """Serve the certificate files as they are now (SIGHUP): a renewed certificate, no restart."""
    from teleconsult.signaling.tls import reload

    try:
        reload(context, cert, key)
    except ValueError as e:
        log.error("certificate not reloaded, the old one is served: %s", e)
    else:
        log.info("certificate reloaded from %s", cert)


def _open_demo_room(hub: Any, settings: Settings) -> None:
    from teleconsult.session.room import RoomConfig

    config = RoomConfig(
        title="Demo consultation",
        max_participants=settings.max_participants,
        # A demo room should outlive a coffee break with nobody in it.
        idle_timeout=max(settings.idle_timeout, 12 * 3600),
    )
    hub.rooms.create(DEMO_ROOM, hub.now(), config)


def _say_how_to_join(settings: Settings, secret: str, demo: bool) -> None:
    from teleconsult.signaling.http_api import join_url

    print(f"teleconsult listening on {settings.base_url()}", flush=True)
    print(f"data directory: {settings.data_dir.resolve()}", flush=True)
    if demo:
        print(f"\nJoin the demo room '{DEMO_ROOM}':", flush=True)
        for role, name, identity in DEMO_PEOPLE:
            token = mint(secret, DEMO_ROOM, role, name, 12 * 3600, identity)
            link = join_url(settings.base_url(), DEMO_ROOM, token)
            print(f"  {role.value:<10} {link}", flush=True)
        print("\nAdmin API key: in secrets.json of the data directory.", flush=True)


def _settings(args: argparse.Namespace) -> Settings:
    """Return the settings of `serve` or `config`: flags, environment, file, defaults."""
    return load_settings(args.config, _cli_settings_source=args.settings_source(parsed_args=args))


def _config(args: argparse.Namespace) -> int:
    for key, value in _settings(args).shown().items():
        if value is None:
            print(f"# {key} = (not set)")
        else:
            print(f"{key} = {json.dumps(value, ensure_ascii=False)}")
    return 0


def _token(args: argparse.Namespace) -> int:
    secret = args.secret or resolve_secrets(Settings(data_dir=Path(args.data_dir))).token_secret
    ttl = parse_ttl(args.ttl)
    token = mint(secret, args.room, Role(args.role), args.name, ttl, args.identity)
    print(token)
    if args.url:
        from teleconsult.signaling.http_api import join_url

        print(join_url(args.url.rstrip("/"), args.room, token))
    return 0


def _admin(args: argparse.Namespace, path: str, body: Any = None) -> dict[str, Any]:
    key = args.admin_key or resolve_secrets(Settings(data_dir=Path(args.data_dir))).admin_key
    request = urllib.request.Request(
        args.server.rstrip("/") + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            data: dict[str, Any] = json.load(response)
            return data
    except urllib.error.HTTPError as e:
        raise ValueError(f"server answered {e.code}: {e.read().decode(errors='replace')}") from None
    except urllib.error.URLError as e:
        raise ValueError(f"cannot reach {args.server}: {e.reason}") from None


def _loadtest(args: argparse.Namespace) -> int:
    import ssl

    from teleconsult.client.loadtest import Plan, run

    key = args.admin_key or resolve_secrets(Settings(data_dir=Path(args.data_dir))).admin_key
    tls = None if args.ca_file is None else ssl.create_default_context(cafile=args.ca_file)
    plan = Plan(
        server=args.server.rstrip("/"),
        admin_key=key,
        rooms=args.rooms,
        publishers=args.publishers,
        viewers=args.viewers,
        duration=args.duration,
        video=args.video,
        annotations=args.annotations,
        out=args.out,
        # The clip, encoded once per size: where the user's programs keep caches.
        cache=Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "teleconsult",
        tls=tls,
        address=args.address,
        min_delivered=args.min_delivered,
        max_p95_ms=args.max_delay_p95,
        max_loss=args.max_loss,
        max_cpu=args.max_cpu,
    )
    text, passed = asyncio.run(run(plan))
    print(text, flush=True)
    return 0 if passed else 1


def _revoke(args: argparse.Namespace) -> int:
    data = _admin(args, "/api/tokens/revoke", {"token": args.token})
    if args.json:
        print(json.dumps(data, indent=2))
    elif data.get("revoked"):
        print(f"revoked: {data['identity']} in {data['room']} (refused on every node from now)")
    else:
        print("not revoked: the token has expired already")
    return 0


def _rooms(args: argparse.Namespace) -> int:
    data = _admin(args, "/api/rooms")
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    # On a cluster each room says which node hosts it.
    cluster = any("node" in room for room in data["rooms"])
    node = f" {'NODE':<20}" if cluster else ""
    print(f"{'ROOM':<24} {'PARTICIPANTS':>12} {'WAITING':>8}{node}  TITLE")
    for room in data["rooms"]:
        node = f" {room.get('node', ''):<20}" if cluster else ""
        line = f"{room['id']:<24} {room['participants']:>12} {room['waiting']:>8}{node}"
        print(f"{line}  {room['title']}")
    return 0


def _on_store(url: str, work: Callable[[Store], Awaitable[T]]) -> T:
    """Run `work` with the cluster's store; a Redis out of reach is a clear error."""
    from redis.exceptions import RedisError

    from teleconsult.cluster.redis_store import RedisStore

    async def run() -> T:
        store = RedisStore(url)
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except (OSError, RedisError) as e:
        raise ValueError(f"cannot reach Redis: {e}") from None


def _nodes(args: argparse.Namespace) -> int:
    async def live(store: Any) -> dict[str, Any]:
        return {
            name: {**load.describe(), **info}
            for name, (load, info) in (await store.nodes()).items()
        }

    nodes = _on_store(args.redis, live)
    if args.json:
        print(json.dumps(nodes, indent=2))
        return 0
    print(f"{'NODE':<28} {'ROOMS':>5} {'UP':>4} {'DOWN':>5} {'CPU%':>5}  STATE")
    for name, n in nodes.items():
        state = "draining" if n["draining"] else "open"
        print(
            f"{name:<28} {n['rooms']:>5} {n['up_tracks']:>4} {n['down_tracks']:>5} "
            f"{n['cpu']:>5}  {state}"
        )
    return 0


def _drain(args: argparse.Namespace) -> int:
    async def drain(store: Store) -> dict[str, Any] | None:
        await store.drain(args.node, not args.undo)
        deadline = time.monotonic() + (args.wait or 0.0)
        while True:
            found = (await store.nodes()).get(args.node)
            load: dict[str, Any] | None = None if found is None else found[0].describe()
            if load is None or load["rooms"] == 0 or time.monotonic() >= deadline:
                return load
            await asyncio.sleep(1.0)

    load = _on_store(args.redis, drain)
    if args.json:
        print(json.dumps({"node": args.node, "draining": not args.undo, "load": load}))
        return 0
    what = "open to new rooms again" if args.undo else "draining: no new rooms go to it"
    print(f"{args.node}: {what}")
    if load is None:
        print("(no live node of this name at the moment)")
    elif not args.undo:
        print(f"rooms still on it: {load['rooms']} (they end on their own; then upgrade it)")
        if args.wait is not None and load["rooms"]:
            return 1
    return 0


def _export(args: argparse.Namespace) -> int:
    from teleconsult.recording.export import bar, export, find_session, preview

    folder = find_session(Path(args.data_dir), args.session)
    if args.preview:
        result = preview(folder, Path(args.out), args.mask, args.at, args.feed)
    else:
        result = export(folder, Path(args.out), args.mask, args.feed, bar())
    print(json.dumps(result))
    return 0


def _signaling(args: argparse.Namespace) -> Any:
    from teleconsult.client.signaling import SignalingClient

    token = args.token
    if not token:
        secret = args.secret or resolve_secrets(Settings(data_dir=Path(args.data_dir))).token_secret
        token = mint(secret, args.room, Role(args.role), args.name, 12 * 3600)
    base = args.server.rstrip("/")
    url = base.replace("https://", "wss://").replace("http://", "ws://") + "/ws"
    return SignalingClient(url, token, args.room)


def _publish(args: argparse.Namespace) -> int:
    from teleconsult.client.signaling import JoinRefused
    from teleconsult.client.tools import open_source, publish

    width, _, height = args.size.partition("x")
    source = "synthetic" if args.synthetic else (args.file or args.device)
    first = _signaling(args)  # one token: a reconnect is the same participant

    # A bad source fails here, before anything is sent; later connections open it again.
    opened = [open_source(source, (int(width), int(height)), args.fps)]

    def open_tracks() -> list[Any]:
        return opened.pop() if opened else open_source(source, (int(width), int(height)), args.fps)

    try:
        asyncio.run(
            publish(
                lambda: type(first)(first.url, first.token, first.room),
                open_tracks,
                args.source,
                args.label,
                args.codec,
                args.duration,
                args.patient_consented,
            )
        )
    except JoinRefused as e:
        raise ValueError(f"refused: {e}") from None
    return 0


def _subscribe(args: argparse.Namespace) -> int:
    from teleconsult.client.tools import subscribe

    first = _signaling(args)  # one token: a reconnect is the same participant

    async def run() -> dict[str, Any]:
        return await subscribe(
            lambda: type(first)(first.url, first.token, first.room), args.duration, args.stats
        )

    print(json.dumps({"summary": asyncio.run(run())}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
