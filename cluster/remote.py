"""Media on another node: driven from a room's host over the bus, and served on the node."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from teleconsult.media.sfu import CASCADE, MediaError
from teleconsult.signaling.access import Link
from teleconsult.signaling.http_api import admin_op
from teleconsult.signaling.recordings_api import find_session, with_links

if TYPE_CHECKING:
    from teleconsult.signaling.hub import Hub

log = logging.getLogger("teleconsult.cluster")


Args = dict[str, Any]


class Caller(Protocol):
    """What asks another node's media to act: this node's part in the cluster."""

    node: str

    async def call(self, node: str, method: str, **args: Any) -> Any:
        """Ask a node's media to do something and return its result."""

    def tell(self, node: str, method: str, **args: Any) -> None:
        """Ask a node's media to do something, without waiting for it."""


class RemoteMedia:
    """The media of a client that reached another node, driven from its room's host."""

    def __init__(self, caller: Caller, node: str) -> None:
        self.caller = caller
        self.node = node

    async def publish(
        self,
        stream_id: str,
        participant_id: str,
        offer: str,
        feed_ids: dict[str, str],
        replace: bool = False,
    ) -> tuple[str, dict[str, str]]:
        """Accept a publisher's offer on its node."""
        answer, codecs = await self.caller.call(
            self.node,
            "publish",
            stream_id=stream_id,
            participant_id=participant_id,
            offer=offer,
            feed_ids=feed_ids,
            replace=replace,
            host=self.caller.node,
        )
        return str(answer), dict(codecs)

    async def unpublish(self, stream_id: str, reason: str) -> None:
        """Close a stream on its node."""
        self.caller.tell(self.node, "unpublish", stream_id=stream_id, reason=reason)

    async def subscribe(
        self,
        down_id: str,
        subscriber_id: str,
        stream_id: str,
        feeds: list[str] | None = None,
        voices: int | None = None,
    ) -> tuple[str, dict[str, str]]:
        """Offer a stream to a subscriber from the subscriber's node."""
        offer, mids = await self.caller.call(
            self.node,
            "subscribe",
            down_id=down_id,
            subscriber_id=subscriber_id,
            stream_id=stream_id,
            feeds=feeds,
            voices=voices,
            host=self.caller.node,
        )
        return str(offer), dict(mids)

    async def answer(self, down_id: str, subscriber_id: str, sdp: str) -> None:
        """Pass a subscriber's answer to its node."""
        await self.caller.call(
            self.node, "answer", down_id=down_id, subscriber_id=subscriber_id, sdp=sdp
        )

    async def unsubscribe(self, down_id: str, reason: str) -> None:
        """Close a subscription on its node."""
        self.caller.tell(self.node, "unsubscribe", down_id=down_id, reason=reason)

    async def pause(
        self, down_id: str, subscriber_id: str, feeds: list[str] | None, paused: bool
    ) -> None:
        """Pause or resume feeds of a subscription on its node."""
        await self.caller.call(
            self.node,
            "pause",
            down_id=down_id,
            subscriber_id=subscriber_id,
            feeds=feeds,
            paused=paused,
        )

    async def close_participant(self, participant_id: str, reason: str) -> None:
        """Close a participant's media on its node."""
        self.caller.tell(
            self.node, "close_participant", participant_id=participant_id, reason=reason
        )

    async def lost(self, participant_id: str) -> None:
        """Drop a participant's media paths on its node."""
        self.caller.tell(self.node, "lost", participant_id=participant_id)

    def mute(self, participant_id: str, kind: str, muted: bool) -> None:
        """Mute a participant's tracks on its node."""
        self.caller.tell(self.node, "mute", participant_id=participant_id, kind=kind, muted=muted)


class MediaRequests:
    """Serves the requests other nodes make of this node's media, by name."""

    def __init__(self, hub: Hub, caller: Caller) -> None:
        self.hub = hub
        self.caller = caller
        # Streams and subscriptions served here for rooms hosted elsewhere: id -> host.
        self.routes: dict[str, str] = {}
        self._pulls: dict[str, asyncio.Future[None]] = {}
        self._table: dict[str, Callable[[Args], Awaitable[Any] | Any]] = {
            "publish": self._publish,
            "subscribe": self._subscribe,
            "answer": lambda a: hub.sfu.answer(a["down_id"], a["subscriber_id"], a["sdp"]),
            "unpublish": self._unpublish,
            "unsubscribe": self._unsubscribe,
            "pause": lambda a: hub.sfu.pause(
                a["down_id"], a["subscriber_id"], a["feeds"], a["paused"]
            ),
            "close_participant": lambda a: hub.sfu.close_participant(
                a["participant_id"], a["reason"]
            ),
            "lost": lambda a: hub.sfu.lost(a["participant_id"]),
            "mute": lambda a: hub.sfu.mute(a["participant_id"], a["kind"], a["muted"]),
            "pull": lambda a: self._pull(a["stream_id"], a["origin"]),
            "offer_leg": self._offer_leg,
            "answer_leg": lambda a: hub.sfu.answer(a["down_id"], CASCADE + a["to"], a["sdp"]),
            "closed": lambda a: hub.plane.closed(a["what"], a["id"], a["reason"]),
            "speaking": lambda a: hub.plane.speaking(a["stream_id"], a["feed_id"], a["speaking"]),
            "recording": self._recording,
            "stats": lambda a: hub.sfu.stats(),
            "revoked": lambda a: hub.cut_revoked(a["token_id"]),
            "admin": lambda a: list(admin_op(hub, a["op"], a["room"], a["data"])),
        }

    async def serve(self, method: str, args: Args) -> Any:
        """Do what another node (or this one) asked of this node's media; returns the result."""
        handler = self._table.get(method)
        if handler is None:
            raise MediaError("unknown_request", f"no media request {method!r}")
        result = handler(args)
        return await result if asyncio.iscoroutine(result) else result

    def closed(self, what: str, item_id: str, reason: str) -> None:
        """Pass the end of a stream or subscription served here to its room's host."""
        host = self.routes.pop(item_id, None)
        if host is not None:
            self.caller.tell(host, "closed", what=what, id=item_id, reason=reason)

    def speaking(self, stream_id: str, feed_id: str, speaking: bool) -> None:
        """Pass a microphone served here starting or stopping speaking to its room's host."""
        host = self.routes.get(stream_id)
        if host is not None:
            self.caller.tell(
                host, "speaking", stream_id=stream_id, feed_id=feed_id, speaking=speaking
            )

    async def _publish(self, a: Args) -> list[Any]:
        self.routes[a["stream_id"]] = a["host"]
        replace = bool(a.get("replace", False))
        got = await self.hub.sfu.publish(
            a["stream_id"], a["participant_id"], a["offer"], a["feed_ids"], replace
        )
        return list(got)

    async def _subscribe(self, a: Args) -> list[Any]:
        self.routes[a["down_id"]] = a["host"]
        got = await self.hub.sfu.subscribe(
            a["down_id"], a["subscriber_id"], a["stream_id"], a["feeds"], a.get("voices")
        )
        return list(got)

    async def _unpublish(self, a: Args) -> None:
        self.routes.pop(a["stream_id"], None)
        await self.hub.sfu.unpublish(a["stream_id"], a["reason"])

    async def _unsubscribe(self, a: Args) -> None:
        self.routes.pop(a["down_id"], None)
        await self.hub.sfu.unsubscribe(a["down_id"], a["reason"])

    async def _offer_leg(self, a: Args) -> list[Any]:
        down_id = self.hub.sfu.new_id("d")
        offer, mids = await self.hub.sfu.subscribe(down_id, CASCADE + a["to"], a["stream_id"])
        return [down_id, offer, mids]

    def _recording(self, a: Args) -> Any:
        room, session = a["room"], a["session"]
        folder = find_session(self.hub, room, session)
        base = f"/api/recordings/{room}/{session}"
        holder = Link(a["identity"], a["token_id"])
        return None if folder is None else with_links(self.hub, folder, base, holder)

    async def _pull(self, stream_id: str, origin: str) -> None:
        if stream_id in self.hub.sfu.ups:
            return
        pending = self._pulls.get(stream_id)
        if pending is None:
            # Subscribers arriving together share one leg.
            pending = asyncio.ensure_future(self._cascade(stream_id, origin))
            self._pulls[stream_id] = pending
            pending.add_done_callback(lambda _: self._pulls.pop(stream_id, None))
        await asyncio.shield(pending)

    async def _cascade(self, stream_id: str, origin: str) -> None:
        # The origin subscribes this node like any subscriber; this node takes the leg in like
        # a publisher's stream, under the same id, and fans it out to its own subscribers.
        node = self.caller.node
        down_id, offer, mids = await self.caller.call(
            origin, "offer_leg", stream_id=stream_id, to=node
        )
        try:
            answer, _ = await self.hub.sfu.publish(
                stream_id, CASCADE + origin, offer, mids, resumable=False
            )
        except MediaError:
            self.caller.tell(origin, "unsubscribe", down_id=down_id, reason="refused")
            raise
        await self.caller.call(origin, "answer_leg", down_id=down_id, to=node, sdp=answer)
