"""A Python client of the signaling protocol, for tests, CLI tools, the recorder and load."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import ssl
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

Event = dict[str, Any]


# Close codes after which reconnecting cannot help (docs/protocol.md, "Close codes"); after any
# other close (a network drop, 1001 a node stopping, 1012 a node lost) a client reconnects.
FINAL_CLOSES = frozenset({4000, 4001, 4005, 4009, 4010, 4011, 4012, 4013})


def local_addresses() -> set[str]:
    """Return the IP addresses this machine has now."""
    import ifaddr

    found = {"127.0.0.1", "::1"}
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            found.add(ip.ip if isinstance(ip.ip, str) else ip.ip[0])
    return found


class JoinRefused(Exception):
    """The server refused the handshake."""

    def __init__(self, code: str, message: str, close_code: int | None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.close_code = close_code


class RequestFailed(Exception):
    """The server answered a request with an error."""

    def __init__(self, event: Event) -> None:
        super().__init__(f"{event.get('code')}: {event.get('message')}")
        self.code = str(event.get("code"))
        self.event = event


class SignalingClient:
    """Connects, performs the handshake, answers pings and hands out server events in order."""

    def __init__(
        self,
        url: str,
        token: str,
        room: str,
        version: int = 1,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.url = url
        # For wss: whom to trust (the system's authorities when None).
        self.tls = tls
        self.token = token
        self.room = room
        self.version = version
        self.welcome: Event = {}
        self.ws: ClientConnection | None = None
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.answer_pings = True
        # Why this client gave the connection up ("silent", "address"), None if it did not.
        self.gave_up: str | None = None
        self.last_heard = 0.0
        self._watchdog: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[Event | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[Event]] = {}
        self._next_ref = 0
        self._ref_prefix = secrets.token_hex(4)

    @property
    def closed(self) -> bool:
        """Tell whether the connection has ended (or was never opened)."""
        return self._reader is None or self._reader.done()

    @property
    def participant_id(self) -> str:
        """Return the id the server gave this participant."""
        return str(self.welcome["participant_id"])

    async def open(self, timeout: float = 10.0) -> None:
        """Open the WebSocket without sending anything."""
        tls = self.tls if self.url.startswith("wss:") else None
        self.ws = await connect(
            self.url, max_size=2**22, ping_interval=None, open_timeout=timeout, ssl=tls
        )
        self.last_heard = asyncio.get_running_loop().time()
        self._reader = asyncio.create_task(self._read())

    async def connect(self, timeout: float = 10.0) -> Event:
        """Open the WebSocket, say hello and return the welcome; raise JoinRefused if refused.

        Once joined, the connection is given up (closed under the reader) when the server has
        been silent for its `ping_timeout`, or this machine no longer has the address the
        connection leaves from (a handover): a caller that reconnects then does so at once.
        """
        await self.open(timeout)
        await self.send(
            {"type": "hello", "version": self.version, "token": self.token, "room": self.room}
        )
        first = await self.recv(timeout)
        if first.get("type") == "error":
            await self.wait_closed(timeout)
            raise JoinRefused(first["code"], first["message"], self.close_code)
        if first.get("type") != "welcome":
            raise JoinRefused("unexpected", f"expected welcome, got {first.get('type')}", None)
        self.welcome = first
        # The server pings every ping_interval: one and a half of them missed is a dead path
        # (its own deadline, ping_timeout, is longer; this side reconnects first).
        interval = float(first.get("ping_interval", 15.0))
        silent_for = min(float(first.get("ping_timeout", 30.0)), 1.5 * interval + 0.5)
        self._watchdog = asyncio.create_task(self._watch(silent_for))
        return first

    @property
    def stale(self) -> bool:
        """Tell whether the server has been silent for longer than between two of its pings."""
        interval = float(self.welcome.get("ping_interval", 15.0))
        return asyncio.get_running_loop().time() - self.last_heard > interval + 0.5

    def give_up(self, reason: str) -> None:
        """Drop the connection at once, without a close handshake over a path that is dead."""
        if self.ws is not None and not self.closed:
            self.gave_up = reason
            self.ws.transport.abort()

    async def send(self, message: Event) -> None:
        """Send one message as JSON."""
        await self.send_raw(json.dumps(message))

    async def send_raw(self, data: str | bytes) -> None:
        """Send a frame exactly as given."""
        assert self.ws is not None
        await self.ws.send(data)

    async def request(self, message: Event, timeout: float = 10.0) -> Event:
        """Send a message and return the reply that refers to it (by its id, given or fresh)."""
        self._next_ref += 1
        # Ids name operations in the room's channel too: unique across clients and restarts.
        ref = str(message.get("id") or f"q-{self._ref_prefix}-{self._next_ref}")
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._pending[ref] = future
        try:
            await self.send({**message, "id": ref})
            reply = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(ref, None)
        if reply.get("type") == "error":
            raise RequestFailed(reply)
        return reply

    async def recv(self, timeout: float = 5.0) -> Event:
        """Return the next server event; raise ConnectionError once the connection is closed."""
        event = await asyncio.wait_for(self._inbox.get(), timeout)
        if event is None:
            self._inbox.put_nowait(None)
            raise ConnectionError(f"closed with {self.close_code}: {self.close_reason}")
        return event

    async def wait_for(
        self, type_: str, timeout: float = 5.0, where: Callable[[Event], bool] | None = None
    ) -> Event:
        """Return the next event of a type (and matching `where`), dropping those before it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = await self.recv(max(0.0, deadline - loop.time()))
            if event.get("type") == type_ and (where is None or where(event)):
                return event

    def drain(self) -> list[Event]:
        """Return the events already received and not yet read, without waiting."""
        events = []
        while not self._inbox.empty():
            event = self._inbox.get_nowait()
            if event is None:
                self._inbox.put_nowait(None)
                break
            events.append(event)
        return events

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        """Wait until the server closes the connection; return its close code."""
        if self._reader is not None:
            await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        return self.close_code

    async def close(self) -> None:
        """Close the connection and stop reading."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                await asyncio.wait_for(self._reader, 5)

    async def _watch(self, silent_for: float) -> None:
        assert self.ws is not None
        loop = asyncio.get_running_loop()
        local = self.ws.local_address[0] if self.ws.local_address else None
        while self._reader is not None and not self._reader.done():
            await asyncio.sleep(min(0.5, silent_for / 4))
            if loop.time() - self.last_heard > silent_for:
                self.give_up("silent")
            elif local is not None and local not in local_addresses():
                self.give_up("address")
            else:
                continue
            return

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for frame in self.ws:
                self.last_heard = asyncio.get_running_loop().time()
                event = json.loads(frame)
                if event.get("type") == "ping" and self.answer_pings:
                    await self.ws.send(json.dumps({"type": "pong", "ts": event.get("ts")}))
                    continue
                key = event.get("ref") or ""
                if event.get("type") == "op" and event.get("author") == self.welcome.get(
                    "participant_id"
                ):
                    # An ordered operation acknowledges its author under the author's own id.
                    key = event.get("id") or ""
                future = self._pending.get(key)
                if future is not None and not future.done():
                    future.set_result(event)
                    continue
                self._inbox.put_nowait(event)
        except ConnectionClosed:
            pass
        finally:
            rcvd = self.ws.protocol.close_rcvd
            if rcvd is not None:
                self.close_code = rcvd.code
                self.close_reason = rcvd.reason
            self._inbox.put_nowait(None)
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("connection closed"))
