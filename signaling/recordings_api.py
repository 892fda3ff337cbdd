"""HTTP access to recorded sessions: list, manifest, and files with Range requests."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from media.sfu import MediaError
from session.roles import Role

from .hub import Hub
from .tokens import TokenError, verify

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# How long a signed file link works: a <video> element cannot send an Authorization header,
# so the manifest hands out links signed for one file each, that expire.
LINK_TTL = 6 * 3600
# Who may replay a room's recordings besides the admin: its experts and moderators.
VIEWERS = frozenset({Role.EXPERT, Role.MODERATOR})


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def sign(hub: Hub, path: str, expires: int) -> str:
    """Sign a file link (any node of a cluster shares the secret)."""
    message = f"{path}\n{expires}".encode()
    return hmac.new(hub.keys.token_secret.encode(), message, hashlib.sha256).hexdigest()


def find_session(hub: Hub, room: str, session: str) -> Path | None:
    """Return the folder of a session recorded on this node, if the names are valid and it is."""
    if not NAME.match(room) or not NAME.match(session):
        return None
    folder = hub.settings.data_dir / "recordings" / room / session
    return folder if (folder / "manifest.json").is_file() else None


def with_links(hub: Hub, folder: Path, base: str) -> dict[str, Any]:
    """Return a session's manifest with a signed link for each of its files."""
    data: dict[str, Any] = json.loads((folder / "manifest.json").read_text())
    expires = int(hub.now()) + LINK_TTL
    names = [t["file"] for t in data["tracks"]] + [data.get("channel_log", "channel.jsonl")]
    data["links"] = {
        name: f"{base}/{name}?exp={expires}&sig={sign(hub, f'{base}/{name}', expires)}"
        for name in names
    }
    return data


def routes(hub: Hub) -> list[Route]:
    """Build the recording routes bound to a hub."""
    root = hub.settings.data_dir / "recordings"

    def signed(request: Request) -> bool:
        sig, exp = request.query_params.get("sig", ""), request.query_params.get("exp", "")
        # isdigit() alone takes "²" and numbers too long for int(): ASCII digits, 12 at most.
        if not sig or not (exp.isascii() and exp.isdigit() and len(exp) <= 12):
            return False
        if int(exp) < hub.now():
            return False
        return hmac.compare_digest(sig, sign(hub, request.url.path, int(exp)))

    def who(request: Request, room: str | None) -> tuple[str, str] | None:
        """Return (actor, identity) if the request may read this room's recordings."""
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credential:
            return None
        if hmac.compare_digest(credential.encode(), hub.keys.admin_key.encode()):
            return "admin", ""
        try:
            grant = verify(hub.keys.token_secret, credential, hub.now())
        except TokenError:
            return None
        if room is None or grant.room != room or grant.role not in VIEWERS:
            return None
        return "participant", grant.identity

    async def registered(room: str | None) -> list[dict[str, Any]]:
        # Sessions recorded on other nodes of the cluster (their files stay there).
        if hub.cluster is None:
            return []
        try:
            found = await hub.store.recordings(room)
        except Exception:
            return []
        return [e for e in found if e.get("node") != hub.node]

    async def sessions_of(room: str) -> list[dict[str, Any]]:
        out = local_sessions(room)
        here = {s["session_id"] for s in out}
        out += [e for e in await registered(room) if e["session_id"] not in here]
        return out

    def local_sessions(room: str) -> list[dict[str, Any]]:
        out = []
        for manifest in sorted((root / room).glob("*/manifest.json")):
            try:
                data = json.loads(manifest.read_text())
            except (OSError, ValueError):
                continue
            out.append(
                {
                    # The folder: a later segment of a session has its own.
                    "session_id": manifest.parent.name,
                    "segment_of": data["session_id"] if data.get("segment", 1) > 1 else None,
                    "room": data["room"],
                    "title": data.get("title", ""),
                    "started_at": data["started_at"],
                    "stopped_at": data.get("stopped_at"),
                    "tracks": len(data["tracks"]),
                }
            )
        return out

    async def list_all(request: Request) -> Response:
        if who(request, None) is None:
            return _error(401, "unauthorized", "the admin API key is required")
        rooms = {p.name for p in root.iterdir()} if root.is_dir() else set()
        rooms |= {e["room"] for e in await registered(None)}
        return JSONResponse({"sessions": [s for r in sorted(rooms) for s in await sessions_of(r)]})

    async def list_room(request: Request) -> Response:
        room = request.path_params["room"]
        if not NAME.match(room):
            return _error(404, "no_such_recording", "no such recording")
        if who(request, room) is None:
            return _error(
                401,
                "unauthorized",
                "an admin key or an expert/moderator token is needed for this room's recordings",
            )
        return JSONResponse({"sessions": await sessions_of(room)})

    def session_dir(request: Request) -> Path | Response:
        room, session = request.path_params["room"], request.path_params["session"]
        if not NAME.match(room) or not NAME.match(session):
            return _error(404, "no_such_recording", "no such recording")
        actor = ("link", "") if "file" in request.path_params and signed(request) else None
        actor = actor or who(request, room)
        if actor is None:
            return _error(
                401,
                "unauthorized",
                "an admin key or an expert/moderator token is needed for this room's recordings",
            )
        folder = find_session(hub, room, session)
        if folder is None:
            return _error(404, "no_such_recording", "no such recording")
        audit(request, actor)
        return folder

    def audit(request: Request, actor: tuple[str, str]) -> None:
        room, session = request.path_params["room"], request.path_params["session"]
        hub.audit.record(
            "recording_access",
            room=room,
            identity=actor[1] or None,
            actor=actor[0],
            target=session,
            code=request.path_params.get("file", "manifest"),
        )

    async def manifest(request: Request) -> Response:
        folder = session_dir(request)
        if isinstance(folder, Response):
            remote = await elsewhere(request) if folder.status_code == 404 else None
            return remote or folder
        return JSONResponse(with_links(hub, folder, request.url.path))

    async def elsewhere(request: Request) -> Response | None:
        # Recorded on another node: that node signs the links, which point at it directly.
        room, session = request.path_params["room"], request.path_params["session"]
        entry = next((e for e in await registered(room) if e["session_id"] == session), None)
        if entry is None or hub.cluster is None:
            return None
        actor = who(request, room)
        if actor is None:
            return None
        url = (await hub.store.nodes()).get(entry["node"], (None, {}))[1].get("url")
        if url is None:
            return _error(503, "node_unreachable", "the node holding this recording is down")
        try:
            data = await hub.cluster.call(entry["node"], "recording", room=room, session=session)
        except MediaError:
            return _error(503, "node_unreachable", "the node holding this recording is down")
        if data is None:
            return None
        audit(request, actor)
        data["links"] = {name: url + link for name, link in data["links"].items()}
        return JSONResponse(data)

    async def file(request: Request) -> Response:
        folder = session_dir(request)
        if isinstance(folder, Response):
            return folder
        name = request.path_params["file"]
        path = folder / name
        if not NAME.match(name) or not path.is_file():
            return _error(404, "no_such_file", "no such file in this recording")
        media = {
            ".webm": "video/webm",
            ".mkv": "video/x-matroska",
            ".jsonl": "application/x-ndjson",
            ".json": "application/json",
        }
        response = FileResponse(path, media_type=media.get(path.suffix, "application/octet-stream"))
        if signed(request):
            # The link is the credential; the playback page may be served by another node.
            response.headers["Access-Control-Allow-Origin"] = "*"
        return response

    return [
        Route("/api/recordings", list_all),
        Route("/api/recordings/{room}", list_room),
        Route("/api/recordings/{room}/{session}", manifest),
        Route("/api/recordings/{room}/{session}/{file}", file),
    ]
