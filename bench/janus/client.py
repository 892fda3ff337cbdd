"""A minimal client of Janus's VideoRoom over its WebSocket API: publish, subscribe, start."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from typing import Any

import websockets

ROOM = 1234
_ids = itertools.count(1)


class JanusError(Exception):
    """Janus or its plugin refused a request."""


class Janus:
    """One Janus session with one VideoRoom handle (a publisher or a subscriber)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.ws: Any = None
        self.session = 0
        self.handle = 0
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Open the WebSocket, create a session and attach the VideoRoom plugin."""
        self.ws = await websockets.connect(
            self.url, subprotocols=[websockets.Subprotocol("janus-protocol")], max_size=None
        )
        self._reader = asyncio.create_task(self._read())
        self.session = (await self._call({"janus": "create"}))["data"]["id"]
        attach = {"janus": "attach", "plugin": "janus.plugin.videoroom"}
        self.handle = (await self._call(attach))["data"]["id"]

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if msg.get("janus") == "ack":
                continue  # an asynchronous request's event follows under the same transaction
            future = self._waiting.pop(msg.get("transaction", ""), None)
            if future is not None and not future.done():
                future.set_result(msg)

    async def _call(self, msg: dict[str, Any], timeout: float = 20) -> dict[str, Any]:
        transaction = f"t{next(_ids)}"
        msg = {**msg, "transaction": transaction}
        if self.session:
            msg["session_id"] = self.session
        if self.handle:
            msg["handle_id"] = self.handle
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[transaction] = future
        await self.ws.send(json.dumps(msg))
        reply = await asyncio.wait_for(future, timeout)
        if reply.get("janus") == "error":
            raise JanusError(str(reply["error"]))
        data = reply.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise JanusError(str(data["error"]))
        return reply

    async def message(
        self, body: dict[str, Any], jsep: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Send a request to the plugin; returns Janus's reply (plugin data and any SDP)."""
        msg: dict[str, Any] = {"janus": "message", "body": body}
        if jsep is not None:
            msg["jsep"] = jsep
        return await self._call(msg)

    async def ensure_room(self) -> None:
        """Create the benchmark's room unless it exists (no bitrate cap, no recording)."""
        exists = await self.message({"request": "exists", "room": ROOM})
        if not exists["plugindata"]["data"].get("exists"):
            await self.message(
                {
                    "request": "create",
                    "room": ROOM,
                    "publishers": 4,
                    "bitrate": 0,
                    "videocodec": "vp8",
                    "audiocodec": "opus",
                }
            )

    async def publish(self, offer_sdp: str) -> tuple[int, str]:
        """Join as publisher and publish an offer; returns (our feed id, Janus's answer SDP)."""
        await self.ensure_room()
        joined = await self.message({"request": "join", "ptype": "publisher", "room": ROOM})
        feed = int(joined["plugindata"]["data"]["id"])
        reply = await self.message({"request": "publish"}, {"type": "offer", "sdp": offer_sdp})
        return feed, str(reply["jsep"]["sdp"])

    async def subscribe(self, feed: int) -> str:
        """Join as subscriber to a feed; returns Janus's offer SDP."""
        reply = await self.message(
            {"request": "join", "ptype": "subscriber", "room": ROOM, "streams": [{"feed": feed}]}
        )
        return str(reply["jsep"]["sdp"])

    async def start(self, answer_sdp: str) -> None:
        """Answer the subscriber's offer: media starts flowing."""
        await self.message({"request": "start"}, {"type": "answer", "sdp": answer_sdp})

    async def close(self) -> None:
        """Destroy the session and close the WebSocket."""
        if self.ws is not None:
            with contextlib.suppress(JanusError, TimeoutError, websockets.ConnectionClosed):
                await self._call({"janus": "destroy"}, timeout=3)
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
