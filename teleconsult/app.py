"""The ASGI application: WebSocket signaling, HTTP API and the web client's static files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from teleconsult.cluster.node import Cluster
from teleconsult.cluster.redis_store import RedisStore
from teleconsult.signaling.config import Secrets, Settings, resolve_secrets
from teleconsult.signaling.connection import Connection
from teleconsult.signaling.headers import SecurityHeaders
from teleconsult.signaling.http_api import routes
from teleconsult.signaling.hub import Hub
from teleconsult.signaling.recordings_api import routes as recording_routes

STATIC = Path(__file__).resolve().parent / "web_client" / "static"


def create_app(settings: Settings, keys: Secrets | None = None) -> Starlette:
    """Build the application and its hub."""
    # The app is where the node's parts meet: the hub knows its store and its cluster by
    # Protocols only.
    store = RedisStore(settings.redis) if settings.redis else None
    hub = Hub(settings, keys or resolve_secrets(settings), store=store)
    cluster = Cluster(hub) if settings.redis else None
    if cluster is not None:
        hub.join_cluster(cluster)

    async def signaling(websocket: WebSocket) -> None:
        if cluster is not None:
            await cluster.serve(websocket)
        else:
            await Connection(websocket, hub).run()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await hub.start()
        try:
            yield
        finally:
            await hub.stop()

    async def room_page(request: Request) -> Response:
        return FileResponse(STATIC / "room.html", headers={"Cache-Control": "no-cache"})

    async def playback_page(request: Request) -> Response:
        return FileResponse(STATIC / "playback.html", headers={"Cache-Control": "no-cache"})

    all_routes: list[BaseRoute] = [
        WebSocketRoute("/ws", signaling),
        *routes(hub),
        *recording_routes(hub),
        Route("/room/{room}", room_page),
        Route("/playback/{room}", playback_page),
    ]
    if STATIC.is_dir():
        all_routes.append(Mount("/", StaticFiles(directory=STATIC, html=True), name="static"))

    def peers() -> list[str]:
        if cluster is None:
            return []
        return sorted(url for node, url in cluster.urls.items() if node != cluster.node)

    app = Starlette(
        routes=all_routes,
        lifespan=lifespan,
        middleware=[Middleware(SecurityHeaders, peers=peers)],
    )
    app.state.hub = hub
    return app
