"""A room's ordered channel: annotations, pointers, chat and raised hands, with no I/O."""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import Code, SessionError
from .participant import Event

SHAPES = frozenset({"arrow", "stroke", "ruler", "ellipse", "text"})
# How many points each shape takes: (fewest, most).
POINTS = {
    "pointer": (0, 1),
    "arrow": (2, 2),
    "stroke": (2, 500),
    "ruler": (2, 2),
    "ellipse": (2, 2),
    "text": (1, 1),
}
MAX_TEXT = 200
MAX_CHAT = 1000


@dataclass(frozen=True)
class FeedGeometry:
    """What the channel knows of a feed's picture, to give rulers a length."""

    width: int | None = None
    height: int | None = None
    pixel_spacing_mm: float | None = None


@dataclass
class Limits:
    """Bounds on the channel's memory."""

    # Operations kept for an exact resume: 3 min of drawing at 5 a second, three times the
    # reconnect grace; a client away longer gets a snapshot. Each is kept as its JSON (about
    # 600 bytes for a stroke): 5,000 of them took the first 17 minutes of a session to fill,
    # which looked like a leak in the soak's memory figures.
    log: int = 1000
    chat: int = 200  # chat messages kept for late joiners


@dataclass
class Channel:
    """Orders every persistent operation with a sequence number and keeps the room's state."""

    limits: Limits = field(default_factory=Limits)
    seq: int = 0
    # (seq, JSON) of the latest operations, for resume and retries; kept encoded, as a room
    # holds thousands of them.
    log: deque[tuple[int, str]] = field(default_factory=deque)
    shapes: dict[str, Event] = field(default_factory=dict)  # live annotations by id
    pointers: dict[str, Event] = field(default_factory=dict)  # last pointer by author
    chat: deque[Event] = field(default_factory=deque)
    hands: dict[str, float] = field(default_factory=dict)  # raised hands: author → when
    # Client ids already used, by id: (author, seq of the op that used it) for idempotent retry.
    ids: dict[str, tuple[str, int]] = field(default_factory=dict)

    # -- operations ----------------------------------------------------------------------------

    def apply(
        self,
        author: str,
        op: dict[str, Any],
        now: float,
        moderator: bool,
        geometry: Callable[[object], FeedGeometry],
    ) -> Event:
        """Order an annotation operation other than a pointer; `geometry` finds a drawn feed."""
        kind, op_id = op.get("op"), str(op.get("id"))
        if kind == "delete":
            return self.delete(author, str(op.get("target")), op_id, now, moderator)
        if kind == "undo":
            return self.undo(author, op_id, now)
        if kind == "clear":
            feed = op.get("feed")
            if feed is not None:
                geometry(feed)  # refuses a feed that is not published
            scope = str(op.get("scope") or "own")
            return self.clear(author, op_id, scope, feed, now, moderator)
        if kind not in SHAPES:
            raise SessionError(Code.UNKNOWN_OP, f"unknown annotation operation {kind!r}")
        return self.draw(author, op, now, geometry(op.get("feed")))

    def draw(self, author: str, op: dict[str, Any], now: float, geometry: FeedGeometry) -> Event:
        """Add a shape (arrow, stroke, ruler, ellipse, text); returns the ordered event."""
        kind = op["op"]
        if kind not in SHAPES:
            raise SessionError(Code.UNKNOWN_OP, f"unknown annotation operation {kind!r}")
        check_points(kind, op["points"])
        text = op.get("text")
        if kind == "text" and not text:
            raise SessionError(Code.INVALID_OP, "a text annotation needs text")
        if text is not None and len(text) > MAX_TEXT:
            raise SessionError(Code.TOO_LARGE, f"text is limited to {MAX_TEXT} characters")
        event = {k: v for k, v in op.items() if v is not None}
        if kind == "ruler":
            event["length"] = ruler_length(op["points"], geometry)
        event = self._order(author, event, now)
        self.shapes[event["id"]] = event
        return event

    def point(self, author: str, op: dict[str, Any], now: float) -> Event:
        """Move (or, with no points, hide) an author's pointer; pointers are not ordered."""
        check_points("pointer", op["points"])
        event = {k: v for k, v in op.items() if v is not None}
        event.update({"type": "pointer", "author": author, "server_ts": now})
        self.pointers[author] = event
        return event

    def delete(self, author: str, target: str, op_id: str, now: float, moderator: bool) -> Event:
        """Remove one annotation: the author's own, or any for a moderator."""
        shape = self.shapes.get(target)
        if shape is None:
            raise SessionError(Code.NO_SUCH_ANNOTATION, "no such annotation")
        if shape["author"] != author and not moderator:
            raise SessionError(Code.FORBIDDEN, "only its author or a moderator may delete it")
        event = self._order(author, {"op": "delete", "id": op_id, "target": target}, now)
        del self.shapes[target]
        return event

    def undo(self, author: str, op_id: str, now: float) -> Event:
        """Remove the author's most recent annotation."""
        mine = [s for s in self.shapes.values() if s["author"] == author]
        if not mine:
            raise SessionError(Code.NO_SUCH_ANNOTATION, "nothing of yours to undo")
        target = max(mine, key=lambda s: s["seq"])["id"]
        event = self._order(author, {"op": "undo", "id": op_id, "target": target}, now)
        del self.shapes[target]
        return event

    def clear(
        self, author: str, op_id: str, scope: str, feed: str | None, now: float, moderator: bool
    ) -> Event:
        """Remove the author's annotations (scope "own") or everyone's (scope "all")."""
        if scope == "all" and not moderator:
            raise SessionError(Code.FORBIDDEN, "only a moderator may clear everyone's drawings")
        gone = [
            i
            for i, s in self.shapes.items()
            if (scope == "all" or s["author"] == author) and (feed is None or s["feed"] == feed)
        ]
        event = self._order(
            author, {"op": "clear", "id": op_id, "scope": scope, "feed": feed, "removed": gone}, now
        )
        for i in gone:
            del self.shapes[i]
        return event

    def say(self, author: str, op_id: str, text: str, now: float) -> Event:
        """Add a chat message."""
        if not text.strip():
            raise SessionError(Code.INVALID_OP, "an empty message")
        if len(text) > MAX_CHAT:
            raise SessionError(Code.TOO_LARGE, f"messages are limited to {MAX_CHAT} characters")
        event = self._order(author, {"op": "chat", "id": op_id, "text": text}, now)
        self.chat.append(event)
        while len(self.chat) > self.limits.chat:
            self.chat.popleft()
        return event

    def hand(self, author: str, op_id: str, raised: bool, now: float) -> Event:
        """Raise or lower a hand."""
        event = self._order(author, {"op": "hand", "id": op_id, "raised": raised}, now)
        if raised:
            self.hands[author] = now
        else:
            self.hands.pop(author, None)
        return event

    def retry(self, author: str, op_id: str) -> Event | None:
        """Return the event an id already produced for this author (a retry), or None if new."""
        used = self.ids.get(op_id)
        if used is None:
            return None
        who, seq = used
        if who != author:
            raise SessionError(Code.DUPLICATE_ID, "this operation id is taken")
        for logged_seq, encoded in reversed(self.log):
            if logged_seq == seq:
                return dict(json.loads(encoded))
        # Too old to find: the client already has it, a fresh acknowledgement will do.
        return {"type": "op", "seq": seq, "id": op_id, "author": author, "op": "ack"}

    def forget(self, author: str) -> list[Event]:
        """Drop a departed author's pointer and raised hand; returns the events to send."""
        out: list[Event] = []
        if self.pointers.pop(author, None) is not None:
            out.append({"type": "pointer", "author": author, "points": []})
        return out

    def checkpoint(self, recent: int) -> Event:
        """Return the state at the current sequence number as one event a log can start from.

        It carries the ids of the latest `recent` operations too, so that an operation sent
        again after a failover (its acknowledgement lost) is still recognised.
        """
        oldest = self.seq - recent
        return {
            "type": "checkpoint",
            "seq": self.seq,
            "shapes": sorted(self.shapes.values(), key=lambda s: s["seq"]),
            "chat": list(self.chat),
            "hands": dict(self.hands),
            "ids": {k: list(v) for k, v in self.ids.items() if v[1] > oldest},
        }

    @classmethod
    def restore(cls, events: list[Event], limits: Limits | None = None) -> Channel:
        """Rebuild a channel from its ordered events (a checkpoint, then operations after it)."""
        ch = cls(limits or Limits())
        # A checkpoint sorts after the operation that shares its number: it includes it.
        for e in sorted(events, key=lambda e: (e["seq"], e.get("type") == "checkpoint")):
            if e.get("type") == "checkpoint":
                ch.seq = e["seq"]
                ch.log.clear()
                ch.shapes = {s["id"]: s for s in e["shapes"]}
                ch.chat = deque(e["chat"])
                ch.hands = dict(e["hands"])
                ch.ids = {k: (v[0], v[1]) for k, v in e["ids"].items()}
                continue
            ch.seq = e["seq"]
            ch.log.append(_logged(e))
            ch.ids[e["id"]] = (e["author"], e["seq"])
            kind = e["op"]
            if kind in SHAPES:
                ch.shapes[e["id"]] = e
            elif kind in ("delete", "undo"):
                ch.shapes.pop(e["target"], None)
            elif kind == "clear":
                for i in e["removed"]:
                    ch.shapes.pop(i, None)
            elif kind == "chat":
                ch.chat.append(e)
            elif kind == "hand":
                if e["raised"]:
                    ch.hands[e["author"]] = e["server_ts"]
                else:
                    ch.hands.pop(e["author"], None)
        while len(ch.log) > ch.limits.log:
            ch.log.popleft()
        while len(ch.chat) > ch.limits.chat:
            ch.chat.popleft()
        return ch

    # -- late join and resume ----------------------------------------------------------------

    def snapshot(self) -> Event:
        """Return everything a joiner needs: the state at the current sequence number."""
        return {
            "mode": "snapshot",
            "seq": self.seq,
            "annotations": sorted(self.shapes.values(), key=lambda s: s["seq"]),
            "pointers": list(self.pointers.values()),
            "chat": list(self.chat),
            "hands": [{"author": a, "since": t} for a, t in self.hands.items()],
        }

    def since(self, seq: int) -> Event:
        """Return what a client that saw up to `seq` missed, or a snapshot if that is too old."""
        if seq > self.seq or seq < 0:
            return self.snapshot()
        if seq == self.seq:
            return {
                "mode": "resume",
                "seq": self.seq,
                "ops": [],
                "pointers": list(self.pointers.values()),
            }
        if not self.log or self.log[0][0] > seq + 1:
            return self.snapshot()
        missed = [json.loads(encoded) for q, encoded in self.log if q > seq]
        return {
            "mode": "resume",
            "seq": self.seq,
            "ops": missed,
            "pointers": list(self.pointers.values()),
        }

    # -- helpers -------------------------------------------------------------------------------

    def _order(self, author: str, body: dict[str, Any], now: float) -> Event:
        self.seq += 1
        event: Event = {"type": "op", "seq": self.seq, "author": author, "server_ts": now, **body}
        self.log.append(_logged(event))
        while len(self.log) > self.limits.log:
            self.log.popleft()
        self.ids[event["id"]] = (author, self.seq)
        if len(self.ids) > 4 * self.limits.log:
            # Ids older than the log cannot be resent anyway; keep the map bounded.
            oldest = self.log[0][0]
            self.ids = {k: v for k, v in self.ids.items() if v[1] >= oldest}
        return event


def _logged(event: Event) -> tuple[int, str]:
    """Return an event as the log keeps it: its number and its JSON, five times smaller."""
    return event["seq"], json.dumps(event, separators=(",", ":"))


def check_points(kind: str, points: list[list[float]]) -> None:
    """Refuse a point list of the wrong size or outside the normalised frame."""
    fewest, most = POINTS[kind]
    if len(points) > most:
        raise SessionError(Code.TOO_LARGE, f"a {kind} takes at most {most} points")
    if len(points) < fewest:
        raise SessionError(Code.INVALID_OP, f"a {kind} needs at least {fewest} points")
    for p in points:
        # true and false are ints to Python, not coordinates.
        if (
            not isinstance(p, list)
            or len(p) != 2
            or not all(type(c) in (int, float) and math.isfinite(c) for c in p)
        ):
            raise SessionError(Code.INVALID_OP, "a point is a pair of numbers [x, y]")
        if not (0.0 <= p[0] <= 1.0 and 0.0 <= p[1] <= 1.0):
            raise SessionError(Code.OUT_OF_RANGE, "coordinates are fractions of the frame, 0..1")


def ruler_length(points: list[list[float]], geometry: FeedGeometry) -> Event:
    """Return a ruler's length: millimetres with a pixel spacing, pixels with a size, else 0..1."""
    (x0, y0), (x1, y1) = points
    if geometry.width and geometry.height:
        px = math.hypot((x1 - x0) * geometry.width, (y1 - y0) * geometry.height)
        if geometry.pixel_spacing_mm:
            return {"value": round(px * geometry.pixel_spacing_mm, 2), "unit": "mm"}
        return {"value": round(px, 1), "unit": "px"}
    return {"value": round(math.hypot(x1 - x0, y1 - y0), 4), "unit": "frame"}
