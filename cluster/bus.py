"""The bus between the nodes of a cluster: typed messages over Redis pub/sub, one ordered sender.

Every message a node sends another is one of the models below; on the wire each is the JSON of
its short keys (`k` the kind, `c` the client connection), as nodes of the previous version
wrote them, so that a cluster can be upgraded one node at a time. Pub/sub keeps nothing for a
node that is not listening: a message no live node took is sent again for a while, in order,
and then given up, counted and handed to `on_dropped` so that what depended on it is told.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Container
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from redis.exceptions import RedisError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_fixed,
)

log = logging.getLogger("teleconsult.cluster")

# Frames of one burst published in one round trip.
BATCH = 256
# How long a message for a live node that is not listening (re-making its bus connection) is
# sent again; the sender waits meanwhile, which keeps every node's messages in order.
RESEND_FOR = 2.0
RESEND_EVERY = 0.2


class Wire(BaseModel):
    """A bus message: fields by readable names in code, by short keys on the wire."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class Open(Wire):
    """Edge to host: a client reached the edge; its first frame (the hello) is `text`."""

    k: Literal["open"] = "open"
    cid: str = Field(validation_alias="c", serialization_alias="c")
    edge: str = Field(validation_alias="from", serialization_alias="from")
    text: str = Field(validation_alias="t", serialization_alias="t")
    turn: list[str] | None = None


class Up(Wire):
    """Edge to host: one frame of the client (`binary` frames are refused by the host)."""

    k: Literal["up"] = "up"
    cid: str = Field(validation_alias="c", serialization_alias="c")
    text: str | None = Field(default=None, validation_alias="t", serialization_alias="t")
    binary: bool = Field(default=False, validation_alias="b", serialization_alias="b")


class Gone(Wire):
    """Edge to host: the client's connection closed."""

    k: Literal["gone"] = "gone"
    cid: str = Field(validation_alias="c", serialization_alias="c")


class Down(Wire):
    """Host to edge: one frame for each of these clients of the edge."""

    k: Literal["down"] = "down"
    cids: list[str] = Field(validation_alias="c", serialization_alias="c")
    text: str = Field(validation_alias="t", serialization_alias="t")


class CloseClient(Wire):
    """Host to edge: close the client's WebSocket with this code."""

    k: Literal["close"] = "close"
    cid: str = Field(validation_alias="c", serialization_alias="c")
    code: int
    reason: str | None = Field(default=None, validation_alias="r", serialization_alias="r")


class Call(Wire):
    """A request to another node's media (answered by a `Reply` when it has an `id`)."""

    k: Literal["call"] = "call"
    id: str | None = None
    caller: str = Field(validation_alias="from", serialization_alias="from")
    method: str = Field(validation_alias="m", serialization_alias="m")
    args: dict[str, Any] = Field(validation_alias="a", serialization_alias="a")


class Reply(Wire):
    """The result of a `Call`, or its error as [code, message]."""

    k: Literal["reply"] = "reply"
    id: str
    result: Any = Field(default=None, validation_alias="r", serialization_alias="r")
    error: list[str] | None = Field(default=None, validation_alias="e", serialization_alias="e")


Message = Open | Up | Gone | Down | CloseClient | Call | Reply
WIRE: TypeAdapter[Message] = TypeAdapter(Annotated[Message, Field(discriminator="k")])


def encode(message: Message) -> str:
    """Return a message's wire text."""
    return message.model_dump_json(by_alias=True, exclude_none=True)


def decode(raw: str | bytes) -> Message:
    """Return the message a wire text carries (ValueError if it is none)."""
    try:
        return WIRE.validate_json(raw)
    except ValidationError as e:
        raise ValueError(f"not a bus message: {e.error_count()} problems") from None


class Unheard(Exception):
    """Some messages of a batch reached no listener of a live node."""


def fan_in(batch: list[tuple[str, Message]]) -> list[tuple[str, Message]]:
    """Merge the copies of one frame for several clients of one edge into one message.

    An annotation goes to every participant; their connections send the same text at nearly
    the same time, so a batch holds it once per client. Merging keeps each client's order: a
    copy joins an earlier message only if that message comes after the client's previous one.
    """
    out: list[tuple[str, Message]] = []
    latest: dict[tuple[str, str], int] = {}  # (edge, text) -> index of its latest message
    last: dict[str, int] = {}  # client -> index of its latest message
    for node, msg in batch:
        if isinstance(msg, Down):
            (one,) = msg.cids
            i = latest.get((node, msg.text))
            if i is not None and i > last.get(one, -1):
                merged = out[i][1]
                assert isinstance(merged, Down)
                merged.cids.append(one)
                last[one] = i
                continue
            out.append((node, Down(cids=[one], text=msg.text)))
            latest[(node, msg.text)] = last[one] = len(out) - 1
            continue
        if isinstance(msg, Open | Up | Gone | CloseClient):
            last[msg.cid] = len(out)
        out.append((node, msg))
    return out


class Bus:
    """One node's end of the bus: an ordered sender and a listener on its own channel."""

    def __init__(
        self,
        redis: Any,
        node: str,
        live: Container[str],
        on_message: Callable[[Message], None],
        on_dropped: Callable[[str, Message], None],
        prefix: str = "teleconsult",
    ) -> None:
        self.redis = redis
        self.node = node
        self.live = live  # nodes whose heartbeat is fresh: only theirs are sent again
        self.on_message = on_message
        self.on_dropped = on_dropped
        self.prefix = prefix
        self.published = 0
        self.dropped: Counter[str] = Counter()  # by kind
        self.unreadable = 0
        self._out: asyncio.Queue[tuple[str, Message]] = asyncio.Queue()

    def channel(self, node: str) -> str:
        """Return the Redis channel a node listens on."""
        return f"{self.prefix}:bus:{node}"

    def send(self, node: str, message: Message) -> None:
        """Queue a message for another node; messages leave in the order they were queued."""
        self._out.put_nowait((node, message))

    def idle(self) -> bool:
        """Tell whether nothing waits to be sent."""
        return self._out.empty()

    async def send_forever(self) -> None:
        """Publish what is queued, in order, a batch a round trip."""
        while True:
            batch = [await self._out.get()]
            while len(batch) < BATCH and not self._out.empty():
                batch.append(self._out.get_nowait())
            await self.publish(fan_in(batch))

    async def publish(self, batch: list[tuple[str, Message]]) -> None:
        """Publish a batch in order; send again what a live node did not hear, for a while."""
        pending = list(batch)
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(RESEND_FOR),
                wait=wait_fixed(RESEND_EVERY),
                retry=retry_if_exception_type((Unheard, OSError, ConnectionError, RedisError)),
                before_sleep=self._holding,
                reraise=True,
            ):
                with attempt:
                    await self._publish_once(pending)
        except (Unheard, OSError, ConnectionError, RedisError):
            for node, message in pending:
                self.dropped[message.k] += 1
                self.on_dropped(node, message)
            log.warning(
                "gave up %d bus messages no node took in %.0f s; their clients are told",
                len(pending),
                RESEND_FOR,
            )

    async def _publish_once(self, batch: list[tuple[str, Message]]) -> None:
        """Publish once; leaves in `batch` what no live node heard (and raises Unheard)."""
        # One connection, one pipeline: Redis delivers them in this order.
        async with self.redis.pipeline(transaction=False) as pipe:
            for node, message in batch:
                pipe.publish(self.channel(node), encode(message))
            received = await pipe.execute()
        self.published += len(batch)
        # No receiver: the node is re-making its bus connection (after a Redis restart) and
        # would never see these. Pub/sub keeps nothing: send them again.
        batch[:] = [
            (node, m)
            for (node, m), n in zip(batch, received, strict=True)
            if n == 0 and node in self.live
        ]
        if batch:
            raise Unheard(len(batch))  # tried again with these only

    def _holding(self, state: RetryCallState) -> None:
        if state.attempt_number == 1:
            log.warning("cannot deliver on the bus; holding its messages and trying again")

    async def listen_forever(self) -> None:
        """Receive this node's messages and hand each on; a broken one is counted, not fatal."""
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel(self.node))
                    async for raw in pubsub.listen():
                        if raw.get("type") == "message":
                            self._receive(raw["data"])
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("lost the bus; listening again")
                await asyncio.sleep(0.5)

    def _receive(self, data: str | bytes) -> None:
        try:
            message = decode(data)
        except ValueError:
            self.unreadable += 1
            if self.unreadable == 1 or self.unreadable % 1000 == 0:
                log.warning(
                    "%d unreadable bus messages (a node of another version?)", self.unreadable
                )
            return
        self.on_message(message)
