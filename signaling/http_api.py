"""The HTTP side: health, metrics, and the admin API guarded by an API key."""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from session.errors import Code as SessionCode
from session.errors import SessionError
from session.roles import Role
from session.room import Room, RoomConfig

from .hub import Hub
from .tokens import ROOM_ID, mint, new_identity


class NewRoom(BaseModel):
    """Body of POST /api/rooms."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(pattern=ROOM_ID.pattern)] | None = None
    title: Annotated[str, Field(max_length=200)] = ""
    max_participants: Annotated[int, Field(ge=1, le=1000)] | None = None
    lobby: bool = False
    idle_timeout: Annotated[float, Field(gt=0, le=7 * 86400)] | None = None


class NewToken(BaseModel):
    """Body of POST /api/rooms/{room}/tokens."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    name: Annotated[str, Field(min_length=1, max_length=100)]
    identity: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    ttl: Annotated[float, Field(gt=0)] = 7200.0


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


def routes(hub: Hub) -> list[Route]:
    """Build the HTTP routes bound to a hub."""

    def authorized(request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            key.encode(), hub.keys.admin_key.encode()
        )

    async def body(request: Request, model: type[BaseModel]) -> BaseModel | JSONResponse:
        try:
            raw = await request.body()
            return model.model_validate_json(raw or b"{}")
        except ValidationError as e:
            fields = [
                {"field": ".".join(str(x) for x in err["loc"]), "problem": err["msg"]}
                for err in e.errors(include_url=False, include_input=False)
            ]
            return _error(422, "invalid_field", "the request body is invalid", fields=fields)

    def guard(handler: Any) -> Any:
        async def guarded(request: Request) -> Response:
            if not authorized(request):
                hub.audit.record("admin_api", "denied", actor="admin", code="unauthorized")
                return _error(401, "unauthorized", "a valid admin API key is required")
            try:
                response: Response = await handler(request)
                return response
            except SessionError as e:
                return _error(_STATUS.get(e.code, 400), e.code, e.message)

        return guarded

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "rooms": len(hub.rooms)})

    async def metrics(request: Request) -> Response:
        hub.refresh_gauges()
        return Response(hub.metrics.render(), media_type="text/plain; version=0.0.4")

    async def list_rooms(request: Request) -> Response:
        return JSONResponse({"rooms": [_room_view(r) for r in hub.rooms.live()]})

    async def create_room(request: Request) -> Response:
        parsed = await body(request, NewRoom)
        if isinstance(parsed, JSONResponse):
            return parsed
        assert isinstance(parsed, NewRoom)
        default = hub.rooms.default_config
        config = RoomConfig(
            title=parsed.title,
            max_participants=parsed.max_participants or default.max_participants,
            lobby=parsed.lobby,
            idle_timeout=parsed.idle_timeout or default.idle_timeout,
        )
        room_id = parsed.id or "r-" + hub.new_participant_id()[2:]
        room = hub.rooms.create(room_id, hub.now(), config)
        hub.audit.record("room_create", room=room.id, actor="admin")
        hub.refresh_gauges()
        return JSONResponse(_room_view(room), status_code=201)

    def live_room(request: Request) -> Room:
        room = hub.rooms.get(request.path_params["room"])
        if room is None:
            raise SessionError(SessionCode.NO_SUCH_ROOM, "no such room")
        return room

    async def get_room(request: Request) -> Response:
        return JSONResponse(_room_view(live_room(request), detail=True))

    async def end_room(request: Request) -> Response:
        room = hub.end_room(request.path_params["room"], "ended_by_admin")
        hub.audit.record("room_end", room=room.id, actor="admin", code="ended_by_admin")
        return JSONResponse({"id": room.id, "ended": True})

    async def list_participants(request: Request) -> Response:
        room = live_room(request)
        return JSONResponse(
            {
                "participants": [p.describe() for p in room.joined()],
                "waiting": [p.describe() for p in room.waiting()],
            }
        )

    async def create_token(request: Request) -> Response:
        room_id = request.path_params["room"]
        if not ROOM_ID.match(room_id):
            return _error(
                422, "invalid_field", "room ids are 1-64 letters, digits, '.', '_' or '-'"
            )
        if hub.rooms.was_ended(room_id):
            raise SessionError(SessionCode.ROOM_ENDED, "this session has ended")
        parsed = await body(request, NewToken)
        if isinstance(parsed, JSONResponse):
            return parsed
        assert isinstance(parsed, NewToken)
        ttl = min(parsed.ttl, hub.settings.max_token_ttl)
        now = hub.now()
        identity = parsed.identity or new_identity()
        token = mint(hub.keys.token_secret, room_id, parsed.role, parsed.name, ttl, identity, now)
        hub.audit.record(
            "token_mint", room=room_id, role=parsed.role.value, identity=identity, actor="admin"
        )
        return JSONResponse(
            {
                "token": token,
                "room": room_id,
                "role": parsed.role.value,
                "identity": identity,
                "expires_at": int(now + ttl),
                "join_url": join_url(hub.settings.base_url(), room_id, token),
            },
            status_code=201,
        )

    return [
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        Route("/api/rooms", guard(list_rooms), methods=["GET"]),
        Route("/api/rooms", guard(create_room), methods=["POST"]),
        Route("/api/rooms/{room}", guard(get_room), methods=["GET"]),
        Route("/api/rooms/{room}", guard(end_room), methods=["DELETE"]),
        Route("/api/rooms/{room}/participants", guard(list_participants), methods=["GET"]),
        Route("/api/rooms/{room}/tokens", guard(create_token), methods=["POST"]),
    ]


def join_url(base: str, room: str, token: str) -> str:
    """Return the link a person opens; the token rides in the fragment, which is never sent."""
    return f"{base}/room/{room}#token={token}"
