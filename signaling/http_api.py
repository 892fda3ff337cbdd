"""The HTTP side: health, metrics, and the admin API guarded by an API key."""

from __future__ import annotations

import asyncio
import hmac
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from teleconsult.media.sfu import MediaError
from teleconsult.session.errors import Code as SessionCode
from teleconsult.session.errors import SessionError
from teleconsult.session.room import Room, RoomConfig

from .hub import Hub
from .messages import PersonRole
from .tokens import ROOM_ID, TokenError, mint, new_identity, verify

# Admin bodies are a few hundred bytes of JSON; anything far larger is refused unread.
MAX_BODY = 64 * 1024


class NewRoom(BaseModel):
    """Body of POST /api/rooms."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(pattern=ROOM_ID.pattern)] | None = None
    title: Annotated[str, Field(max_length=200)] = ""
    max_participants: Annotated[int, Field(ge=1, le=1000)] | None = None
    lobby: bool = False
    idle_timeout: Annotated[float, Field(gt=0, le=7 * 86400)] | None = None
    loudest_voices: Annotated[int, Field(ge=0, le=32)] | None = None


class Revocation(BaseModel):
    """Body of POST /api/tokens/revoke."""

    model_config = ConfigDict(extra="forbid")

    token: Annotated[str, Field(min_length=1, max_length=4096)]


class NewToken(BaseModel):
    """Body of POST /api/rooms/{room}/tokens."""

    model_config = ConfigDict(extra="forbid")

    role: PersonRole
    name: Annotated[str, Field(min_length=1, max_length=100)]
    identity: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    ttl: Annotated[float, Field(gt=0)] = 7200.0


async def bounded(request: Request) -> bytes | None:
    """Return a request's body, or None if it is longer than MAX_BODY (read no further)."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared[:12]) > MAX_BODY:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


_STATUS = {
    SessionCode.NO_SUCH_ROOM: 404,
    SessionCode.ROOM_EXISTS: 409,
    SessionCode.ROOM_ENDED: 410,
}


def _room_view(room: Room, detail: bool = False) -> dict[str, Any]:
    view = room.describe()
    view["participants"] = len(room.joined())
    view["waiting"] = len(room.waiting())
    if detail:
        view["participant_list"] = [p.describe() for p in room.joined()]
        view["waiting_list"] = [p.describe() for p in room.waiting()]
    return view


def admin_op(hub: Hub, op: str, room_id: str, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Do one admin operation on this node's rooms; returns an HTTP status and body."""
    try:
        if op == "list":
            where = {"node": hub.node} if hub.cluster is not None else {}
            return 200, {"rooms": [{**_room_view(r), **where} for r in hub.rooms.live()]}
        if op == "create":
            default = hub.rooms.default_config
            config = RoomConfig(
                title=data["title"],
                max_participants=data["max_participants"] or default.max_participants,
                lobby=data["lobby"],
                idle_timeout=data["idle_timeout"] or default.idle_timeout,
                loudest_voices=data.get("loudest_voices"),
            )
            room = hub.rooms.create(room_id, hub.now(), config)
            hub.persist(room)  # its rules outlive this node
            hub.audit.record("room_create", room=room.id, actor="admin")
            hub.refresh_gauges()
            return 201, _room_view(room)
        if op == "end":
            room = hub.end_room(room_id, "ended_by_admin")
            hub.audit.record("room_end", room=room.id, actor="admin", code="ended_by_admin")
            return 200, {"id": room.id, "ended": True}
        live = hub.rooms.get(room_id)
        if live is None:
            raise SessionError(SessionCode.NO_SUCH_ROOM, "no such room")
        if op == "get":
            return 200, _room_view(live, detail=True)
        return 200, {
            "participants": [p.describe() for p in live.joined()],
            "waiting": [p.describe() for p in live.waiting()],
        }
    except SessionError as e:
        return _STATUS.get(e.code, 400), {"error": {"code": e.code, "message": e.message}}


def allowed(address: str | None, networks: list[IPv4Network | IPv6Network]) -> bool:
    """Whether a client's address is in one of the networks."""
    try:
        ip = ip_address(address or "")
    except ValueError:
        return False
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # an IPv4 client of a node listening on ::
    return any(ip in network for network in networks)


class AdminApi:
    """The admin API, /healthz and /metrics of one node."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.metrics_allow = [ip_network(n, strict=False) for n in hub.settings.metrics_allow]

    def routes(self) -> list[Route]:
        """Return the routes, bound to this node."""
        return [
            Route("/healthz", self.healthz),
            Route("/api/tokens/revoke", self.guard(self.revoke_token), methods=["POST"]),
            Route("/metrics", self.metrics),
            Route("/api/rooms", self.guard(self.list_rooms), methods=["GET"]),
            Route("/api/rooms", self.guard(self.create_room), methods=["POST"]),
            Route("/api/rooms/{room}", self.guard(self.get_room), methods=["GET"]),
            Route("/api/rooms/{room}", self.guard(self.end_room), methods=["DELETE"]),
            Route(
                "/api/rooms/{room}/participants",
                self.guard(self.list_participants),
                methods=["GET"],
            ),
            Route("/api/rooms/{room}/tokens", self.guard(self.create_token), methods=["POST"]),
        ]

    async def on_host(self, op: str, room_id: str, data: dict[str, Any] | None = None) -> Response:
        # In a cluster the room's host does it; a new room is placed first.
        node = self.hub.node
        if self.hub.cluster is not None and self.hub.rooms.get(room_id) is None:
            if op == "create":
                node = await self.hub.cluster.host_for(room_id)
            else:
                node = await self.hub.store.host(room_id) or self.hub.node
        if node == self.hub.node:
            status, payload = admin_op(self.hub, op, room_id, data or {})
        else:
            assert self.hub.cluster is not None
            try:
                status, payload = await self.hub.cluster.call(
                    node, "admin", op=op, room=room_id, data=data or {}
                )
            except MediaError as e:
                return _error(503, e.code, "the node hosting this room did not answer")
        return JSONResponse(payload, status_code=status)

    def authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            key.encode(), self.hub.keys.admin_key.encode()
        )

    async def body(self, request: Request, model: type[BaseModel]) -> BaseModel | JSONResponse:
        raw = await bounded(request)
        if raw is None:
            return _error(413, "too_large", f"request bodies are limited to {MAX_BODY} bytes")
        try:
            return model.model_validate_json(raw or b"{}")
        except ValidationError as e:
            fields = [
                {"field": ".".join(str(x) for x in err["loc"]), "problem": err["msg"]}
                for err in e.errors(include_url=False, include_input=False)
            ]
            return _error(422, "invalid_field", "the request body is invalid", fields=fields)

    def guard(self, handler: Any) -> Any:
        async def guarded(request: Request) -> Response:
            if not self.authorized(request):
                self.hub.audit.record("admin_api", "denied", actor="admin", code="unauthorized")
                return _error(401, "unauthorized", "a valid admin API key is required")
            try:
                response: Response = await handler(request)
                return response
            except SessionError as e:
                return _error(_STATUS.get(e.code, 400), e.code, e.message)

        return guarded

    async def healthz(self, request: Request) -> Response:
        health: dict[str, Any] = {
            "status": "stopping" if self.hub.draining else "ok",
            "rooms": len(self.hub.rooms),
        }
        if self.hub.cluster is not None:
            health.update(node=self.hub.node, cluster_nodes=len(self.hub.cluster.live))
        # A load balancer's health check stops sending newcomers to a stopping node.
        return JSONResponse(health, status_code=503 if self.hub.draining else 200)

    async def metrics(self, request: Request) -> Response:
        # What the node carries and how much is for its operators, not the internet. Behind a
        # proxy on this machine the address is the one it forwarded (uvicorn's proxy headers).
        if not allowed(request.client.host if request.client else None, self.metrics_allow):
            return _error(403, "metrics_not_allowed", "/metrics is not open to this address")
        self.hub.refresh_gauges()
        await self.hub.plane.stats()  # the media workers' counters, read now
        return Response(self.hub.metrics.render(), media_type="text/plain; version=0.0.4")

    async def list_rooms(self, request: Request) -> Response:
        if self.hub.cluster is None:
            return JSONResponse(admin_op(self.hub, "list", "", {})[1])
        # Every live node's rooms (a node that does not answer in time is left out).
        live = list(self.hub.cluster.live) or [self.hub.node]
        answers = await asyncio.gather(
            *(self.hub.cluster.call(n, "admin", op="list", room="", data={}) for n in live),
            return_exceptions=True,
        )
        rooms = [r for a in answers if not isinstance(a, BaseException) for r in a[1]["rooms"]]
        return JSONResponse({"rooms": sorted(rooms, key=lambda r: r["created_at"])})

    async def create_room(self, request: Request) -> Response:
        parsed = await self.body(request, NewRoom)
        if isinstance(parsed, JSONResponse):
            return parsed
        assert isinstance(parsed, NewRoom)
        room_id = parsed.id or "r-" + self.hub.new_participant_id()[2:]
        if await self.hub.room_was_ended(room_id):
            raise SessionError(SessionCode.ROOM_ENDED, "this session has ended")
        return await self.on_host("create", room_id, parsed.model_dump(exclude={"id"}))

    async def get_room(self, request: Request) -> Response:
        return await self.on_host("get", request.path_params["room"])

    async def end_room(self, request: Request) -> Response:
        return await self.on_host("end", request.path_params["room"])

    async def list_participants(self, request: Request) -> Response:
        return await self.on_host("participants", request.path_params["room"])

    async def create_token(self, request: Request) -> Response:
        room_id = request.path_params["room"]
        if not ROOM_ID.match(room_id):
            return _error(
                422, "invalid_field", "room ids are 1-64 letters, digits, '.', '_' or '-'"
            )
        if await self.hub.room_was_ended(room_id):
            raise SessionError(SessionCode.ROOM_ENDED, "this session has ended")
        parsed = await self.body(request, NewToken)
        if isinstance(parsed, JSONResponse):
            return parsed
        assert isinstance(parsed, NewToken)
        ttl = min(parsed.ttl, self.hub.settings.max_token_ttl)
        now = self.hub.now()
        identity = parsed.identity or new_identity()
        token = mint(
            self.hub.keys.token_secret, room_id, parsed.role, parsed.name, ttl, identity, now
        )
        self.hub.audit.record(
            "token_mint", room=room_id, role=parsed.role.value, identity=identity, actor="admin"
        )
        return JSONResponse(
            {
                "token": token,
                "room": room_id,
                "role": parsed.role.value,
                "identity": identity,
                "expires_at": int(now + ttl),
                "join_url": join_url(self.hub.settings.base_url(), room_id, token),
            },
            status_code=201,
        )

    async def revoke_token(self, request: Request) -> Response:
        parsed = await self.body(request, Revocation)
        if isinstance(parsed, JSONResponse):
            return parsed
        assert isinstance(parsed, Revocation)
        try:
            grant = verify(self.hub.keys.token_secret, parsed.token, self.hub.now())
        except TokenError as e:
            if e.code == "token_expired":
                return JSONResponse({"revoked": False, "expired": True})
            return _error(422, e.code, e.message)
        if not grant.token_id:
            return _error(422, "token_invalid", "this token has no id and cannot be revoked")
        cut = await self.hub.revoke(grant.room, grant.token_id, grant.expires_at)
        return JSONResponse(
            {"revoked": True, "room": grant.room, "identity": grant.identity, "disconnected": cut}
        )


def routes(hub: Hub) -> list[Route]:
    """Build the HTTP routes bound to a hub."""
    return AdminApi(hub).routes()


def join_url(base: str, room: str, token: str) -> str:
    """Return the link a person opens; the token rides in the fragment, which is never sent."""
    return f"{base}/room/{room}#token={token}"
