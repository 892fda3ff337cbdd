"""HTTP access to recorded sessions: list, manifest, and files with Range requests."""

from __future__ import annotations

import hmac
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from teleconsult.media.sfu import MediaError
from teleconsult.session.roles import Role

from .access import Link, Refused, check_link, grant_for, sign
from .hub import Hub

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# A <video> element cannot send an Authorization header, so the manifest hands out links
# signed for one file and one holder each, that expire soon (`recording_link_ttl`, 15 min;
# the playback page asks for fresh ones before) and stop when the holder's token is revoked or
# the holder removed from the room.
# Who may replay a room's recordings besides the admin: its experts and moderators.
VIEWERS = frozenset({Role.EXPERT, Role.MODERATOR})
ADMIN = Link("", "")


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def find_session(hub: Hub, room: str, session: str) -> Path | None:
    """Return the folder of a session recorded on this node, if the names are valid and it is."""
    if not NAME.match(room) or not NAME.match(session):
        return None
    folder = hub.settings.data_dir / "recordings" / room / session
    return folder if (folder / "manifest.json").is_file() else None


def with_links(hub: Hub, folder: Path, base: str, holder: Link) -> dict[str, Any]:
    """Return a session's manifest with a link for each of its files, signed for a holder."""
    data: dict[str, Any] = json.loads((folder / "manifest.json").read_text())
    ttl = int(hub.settings.recording_link_ttl)
    expires = int(hub.now()) + ttl
    names = [t["file"] for t in data["tracks"]] + [data.get("channel_log", "channel.jsonl")]
    names += [h["file"] for h in data.get("held_frames", [])]
    query = urlencode({"tid": holder.token_id, "who": holder.identity})
    data["links"] = {
        name: f"{base}/{name}?exp={expires}&{query}"
        f"&sig={sign(hub.keys.token_secret, f'{base}/{name}', expires, holder)}"
        for name in names
    }
    data["links_valid_for"] = ttl  # seconds: a client asks for fresh links before
    return data


class RecordingsApi:
    """A node's recordings over HTTP: list, manifest with signed file links, files with Range."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.root = hub.settings.data_dir / "recordings"

    def routes(self) -> list[Route]:
        """Return the routes, bound to this node."""
        return [
            Route("/api/recordings", self.list_all),
            Route("/api/recordings/{room}", self.list_room),
            Route("/api/recordings/{room}/{session}", self.manifest),
            Route("/api/recordings/{room}/{session}/{file}", self.file),
        ]

    async def by_link(self, request: Request) -> Link:
        q = request.query_params
        room = request.path_params["room"]
        return await check_link(
            self.hub,
            room,
            request.url.path,
            q.get("exp", ""),
            q.get("sig", ""),
            q.get("tid", ""),
            q.get("who", ""),
        )

    async def admit(self, request: Request, room: str | None) -> Link:
        """Return who may read this room's recordings (the admin: any room), or raise Refused."""
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credential:
            raise Refused("unauthorized", "an admin key or a token is needed", 401)
        if hmac.compare_digest(credential.encode(), self.hub.keys.admin_key.encode()):
            return ADMIN
        if room is None:
            raise Refused("unauthorized", "the admin API key is required", 401)
        grant = await grant_for(self.hub, credential, room)
        if grant.role not in VIEWERS:
            raise Refused(
                "forbidden", "only the room's experts and moderators replay its recordings", 403
            )
        return Link(grant.identity, grant.token_id)

    def refused(self, request: Request, e: Refused) -> JSONResponse:
        # Every refusal is audited too, with its code: never the token.
        self.hub.audit.record(
            "recording_access",
            "denied",
            room=request.path_params.get("room"),
            target=request.path_params.get("session"),
            code=e.code,
        )
        return _error(e.status, e.code, e.message)

    async def registered(self, room: str | None) -> list[dict[str, Any]]:
        # Sessions recorded on other nodes of the cluster (their files stay there).
        if self.hub.cluster is None:
            return []
        try:
            found = await self.hub.store.recordings(room)
        except Exception:
            return []
        return [e for e in found if e.get("node") != self.hub.node]

    async def sessions_of(self, room: str) -> list[dict[str, Any]]:
        out = self.local_sessions(room)
        here = {s["session_id"] for s in out}
        out += [e for e in await self.registered(room) if e["session_id"] not in here]
        return out

    def local_sessions(self, room: str) -> list[dict[str, Any]]:
        out = []
        for manifest in sorted((self.root / room).glob("*/manifest.json")):
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

    async def list_all(self, request: Request) -> Response:
        try:
            await self.admit(request, None)
        except Refused as e:
            return self.refused(request, e)
        rooms = {p.name for p in self.root.iterdir()} if self.root.is_dir() else set()
        rooms |= {e["room"] for e in await self.registered(None)}
        return JSONResponse(
            {"sessions": [s for r in sorted(rooms) for s in await self.sessions_of(r)]}
        )

    async def list_room(self, request: Request) -> Response:
        room = request.path_params["room"]
        if not NAME.match(room):
            return _error(404, "no_such_recording", "no such recording")
        try:
            holder = await self.admit(request, room)
        except Refused as e:
            return self.refused(request, e)
        self.audit(request, holder, "list")
        return JSONResponse({"sessions": await self.sessions_of(room)})

    async def session_dir(self, request: Request) -> tuple[Path, Link] | Response:
        room, session = request.path_params["room"], request.path_params["session"]
        if not NAME.match(room) or not NAME.match(session):
            return _error(404, "no_such_recording", "no such recording")
        try:
            if "file" in request.path_params and "sig" in request.query_params:
                holder = await self.by_link(request)
            else:
                holder = await self.admit(request, room)
        except Refused as e:
            return self.refused(request, e)
        folder = find_session(self.hub, room, session)
        if folder is None:
            return _error(404, "no_such_recording", "no such recording")
        self.audit(request, holder, request.path_params.get("file", "manifest"))
        return folder, holder

    def audit(self, request: Request, holder: Link, what: str) -> None:
        self.hub.audit.record(
            "recording_access",
            room=request.path_params["room"],
            identity=holder.identity or None,
            actor="admin" if holder is ADMIN or not holder.token_id else "participant",
            target=request.path_params.get("session"),
            code=what,
        )

    async def manifest(self, request: Request) -> Response:
        found = await self.session_dir(request)
        if isinstance(found, Response):
            remote = await self.elsewhere(request) if found.status_code == 404 else None
            return remote or found
        folder, holder = found
        return JSONResponse(with_links(self.hub, folder, request.url.path, holder))

    async def elsewhere(self, request: Request) -> Response | None:
        # Recorded on another node: that node signs the links, which point at it directly.
        room, session = request.path_params["room"], request.path_params["session"]
        entry = next((e for e in await self.registered(room) if e["session_id"] == session), None)
        if entry is None or self.hub.cluster is None:
            return None
        try:
            holder = await self.admit(request, room)
        except Refused as e:
            return self.refused(request, e)
        url = (await self.hub.store.nodes()).get(entry["node"], (None, {}))[1].get("url")
        if url is None:
            return _error(503, "node_unreachable", "the node holding this recording is down")
        try:
            data = await self.hub.cluster.call(
                entry["node"],
                "recording",
                room=room,
                session=session,
                identity=holder.identity,
                token_id=holder.token_id,
            )
        except MediaError:
            return _error(503, "node_unreachable", "the node holding this recording is down")
        if data is None:
            return None
        self.audit(request, holder, "manifest")
        data["links"] = {name: url + link for name, link in data["links"].items()}
        return JSONResponse(data)

    async def file(self, request: Request) -> Response:
        found = await self.session_dir(request)
        if isinstance(found, Response):
            return found
        folder, _ = found
        name = request.path_params["file"]
        path = folder / name
        if not NAME.match(name) or not path.is_file():
            return _error(404, "no_such_file", "no such file in this recording")
        media = {
            ".webm": "video/webm",
            ".mkv": "video/x-matroska",
            ".jsonl": "application/x-ndjson",
            ".json": "application/json",
            ".jpg": "image/jpeg",
        }
        response = FileResponse(path, media_type=media.get(path.suffix, "application/octet-stream"))
        if "sig" in request.query_params:
            # The link is the credential; the playback page may be served by another node.
            response.headers["Access-Control-Allow-Origin"] = "*"
        return response


def routes(hub: Hub) -> list[Route]:
    """Build the HTTP routes bound to a hub."""
    return RecordingsApi(hub).routes()
