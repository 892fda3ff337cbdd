"""What the server and its media workers say to each other: framed JSON over a socket pair."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from .sfu import CASCADE, MediaError, Sfu

log = logging.getLogger("teleconsult.media")

Args = dict[str, Any]

_LENGTH = struct.Struct("!I")
# A worker's stats with thousands of subscriptions stay far below this.
MAX_FRAME = 64 * 1024 * 1024
# Ids of streams a worker received from another worker, and of subscriptions that carry a
# stream to another worker, start with this.
LEG = CASCADE


class Channel:
    """One end of the socket pair: requests with ids and their replies, and events."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def send(self, message: Args) -> None:
        """Queue one message (the writer's buffer is flushed by the event loop)."""
        data = json.dumps(message, separators=(",", ":")).encode()
        if self.writer.is_closing():
            raise MediaError("media_failed", "the media worker stopped")
        self.writer.write(_LENGTH.pack(len(data)) + data)

    async def receive(self) -> Args | None:
        """Return the next message, or None at the end of the stream."""
        try:
            head = await self.reader.readexactly(_LENGTH.size)
            (length,) = _LENGTH.unpack(head)
            if length > MAX_FRAME:
                raise ValueError(f"a frame of {length} bytes")
            message: Args = json.loads(await self.reader.readexactly(length))
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return message

    async def call(self, method: str, args: Args, timeout: float) -> Any:
        """Send a request and wait for its reply; a refusal is raised as a MediaError."""
        ident = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        try:
            self.send({"call": method, "id": ident, "args": args})
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise MediaError("media_timeout", "the media worker did not answer") from None
        finally:
            self._waiting.pop(ident, None)

    def spawn_call(self, method: str, args: Args, timeout: float) -> None:
        """Send a request whose reply nobody waits for (a refusal is only logged)."""
        task = asyncio.ensure_future(self.call(method, args, timeout))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and isinstance(task.exception(), MediaError):
            e = task.exception()
            assert isinstance(e, MediaError)
            log.info("a media worker refused a request: %s", e.code)

    def replied(self, message: Args) -> bool:
        """Resolve the request a message answers; tell whether it was a reply."""
        ident = message.get("reply")
        if ident is None:
            return False
        future = self._waiting.get(ident)
        if future is not None and not future.done():
            if "error" in message:
                future.set_exception(MediaError(*message["error"]))
            else:
                future.set_result(message.get("result"))
        return True

    def close(self) -> None:
        """Close the socket; requests still waiting fail."""
        self.writer.close()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(MediaError("media_failed", "the media worker stopped"))


async def frames(channel: Channel) -> AsyncIterator[Args]:
    """Yield the events a channel receives (replies resolve their requests), to its end."""
    while True:
        message = await channel.receive()
        if message is None:
            channel.close()
            return
        if not channel.replied(message):
            yield message


class MediaCall:
    """The requests a worker's SFU serves, by name."""

    def __init__(self, sfu: Sfu) -> None:
        self.sfu = sfu
        self._table: dict[str, Callable[[Args], Awaitable[Any] | Any]] = {
            "publish": lambda a: sfu.publish(
                a["stream_id"],
                a["participant_id"],
                a["offer"],
                a["feed_ids"],
                bool(a.get("replace", False)),
                bool(a.get("resumable", True)),
                bool(a.get("nearby", False)),
            ),
            "subscribe": lambda a: sfu.subscribe(
                a["down_id"],
                a["subscriber_id"],
                a["stream_id"],
                a["feeds"],
                a.get("voices"),
                bool(a.get("nearby", False)),
            ),
            "answer": lambda a: sfu.answer(a["down_id"], a["subscriber_id"], a["sdp"]),
            "unpublish": lambda a: sfu.unpublish(a["stream_id"], a["reason"]),
            "unsubscribe": lambda a: sfu.unsubscribe(a["down_id"], a["reason"]),
            "pause": lambda a: sfu.pause(a["down_id"], a["subscriber_id"], a["feeds"], a["paused"]),
            "close_participant": lambda a: sfu.close_participant(a["participant_id"], a["reason"]),
            "lost": lambda a: sfu.lost(a["participant_id"]),
            "mute": lambda a: sfu.mute(a["participant_id"], a["kind"], a["muted"]),
            "stats": lambda a: self._stats(),
            "close": lambda a: sfu.close(),
        }

    async def serve(self, method: str, args: Args) -> Any:
        """Do what was asked of the SFU and return the result."""
        handler = self._table.get(method)
        if handler is None:
            raise MediaError("unknown_request", f"no media request {method!r}")
        result = handler(args)
        return await result if asyncio.iscoroutine(result) else result

    def _stats(self) -> Args:
        h = self.sfu.forward_delay
        delay = {"counts": h.counts, "total": h.total, "n": h.n}
        return {**self.sfu.stats(), "forward_delay": delay}


async def serve(sfu: Sfu, channel: Channel) -> None:
    """Serve the server's requests of a worker's SFU until the server goes, each as it comes."""
    calls = MediaCall(sfu)
    legs: set[str] = set()
    tasks: set[asyncio.Task[None]] = set()

    def closed(what: str) -> Callable[[str, str], None]:
        def tell(item: str, reason: str) -> None:
            leg = item in legs if what == "up" else None
            legs.discard(item)
            with contextlib.suppress(MediaError):
                channel.send({"closed": what, "id": item, "reason": reason, "leg": leg})

        return tell

    sfu.on_up_closed, sfu.on_down_closed = closed("up"), closed("down")

    def speaking(stream_id: str, feed: str, on: bool) -> None:
        with contextlib.suppress(MediaError):
            channel.send({"speaking": stream_id, "feed": feed, "on": on})

    sfu.on_speaking = speaking

    async def answer(message: Args) -> None:
        reply: Args = {"reply": message.get("id")}
        try:
            args = message.get("args") or {}
            if message.get("call") == "publish" and str(args.get("participant_id")).startswith(LEG):
                legs.add(str(args.get("stream_id")))
            result = await calls.serve(str(message.get("call")), args)
            reply["result"] = list(result) if isinstance(result, tuple) else result
        except MediaError as e:
            reply["error"] = [e.code, e.message]
        except Exception as e:
            log.exception("a media request failed")
            reply["error"] = ["internal", type(e).__name__]
        with contextlib.suppress(MediaError):
            channel.send(reply)

    while True:
        message = await channel.receive()
        if message is None:
            break
        task = asyncio.ensure_future(answer(message))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await sfu.close()
