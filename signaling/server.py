"""The HTTP server of a node: uvicorn, with the hub drained before any socket is closed."""

from __future__ import annotations

import socket

import uvicorn

from .hub import Hub


class NodeServer(uvicorn.Server):
    """uvicorn's server; on SIGTERM or SIGINT the hub drains first, while clients can hear it.

    uvicorn closes every WebSocket (1012) before the application's own shutdown runs; the
    drain tells clients why (1001, recordings stopped) and writes what they were told was done.
    """

    def __init__(self, config: uvicorn.Config, hub: Hub) -> None:
        super().__init__(config)
        self.hub = hub

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Drain the hub, then shut down as uvicorn does."""
        if self.started:
            await self.hub.drain()
        await super().shutdown(sockets)
