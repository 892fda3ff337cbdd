"""A room: its participants, lobby and moderation rules, with no I/O."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from .channel import Channel, FeedGeometry, Limits
from .errors import Close, Code, SessionError
from .members import Members
from .participant import Client, Event, Participant, State
from .recording_state import Recording
from .roles import PERSON_ROLES, Action, Role, Source, may, may_publish
from .streams import Feed, Published, Stream

# Past authors kept by name: far more people than a session has.
MAX_AUTHORS = 10_000


@dataclass(frozen=True)
class RoomConfig:
    """Settings fixed when a room is created."""

    title: str = ""
    max_participants: int = 50
    lobby: bool = False
    idle_timeout: float = 600.0
    chat_history: int = 200
    loudest_voices: int | None = None  # voices each listener hears (0 all; None the node's)


class Room(Members):
    """Owns one room's participants and applies its rules; pushes events to clients."""

    def __init__(self, room_id: str, config: RoomConfig, now: float) -> None:
        super().__init__()
        self.id = room_id
        self.config = config
        self.created_at = now
        self.ended = False
        self.end_reason = ""
        self.banned: set[str] = set()
        self.empty_since: float | None = now
        self.streams = Published()
        self.channel = Channel(Limits(chat=config.chat_history))
        # Set by the edge to keep every ordered operation beyond this process (session.store).
        self.journal: Callable[[Event], None] | None = None
        # People of this room as another node (or this one before a restart) last knew them,
        # by identity: a returning identity gets back its participant id, role and grants.
        self.remembered: dict[str, Event] = {}
        # Counts changes to what `export` returns, so the edge writes it only when it changed.
        self.revision = 0
        self.recording = Recording()
        # Everyone who has been in the room, by participant id, as last shown (name and role):
        # a recording names the authors of what it starts with, some of whom may have left.
        self.authors: dict[str, Event] = {}
        # The frame an annotator holds up for everyone (a JPEG), if any: kept here, not in the
        # channel's log, as it is large and only the latest one matters.
        self.held: Event | None = None
        self.held_count = 0
        # Microphones speaking now, as (participant id, feed id), from the media layer.
        self.speakers: set[tuple[str, str]] = set()

    # -- queries ---------------------------------------------------------------------------

    def describe(self) -> Event:
        """Return the room's public description."""
        view: Event = {
            "id": self.id,
            "title": self.config.title,
            "created_at": self.created_at,
            "lobby": self.config.lobby,
            "max_participants": self.config.max_participants,
        }
        if self.config.loudest_voices is not None:
            view["loudest_voices"] = self.config.loudest_voices
        return view

    def snapshot(self, viewer: Participant) -> Event:
        """Return what a participant sees on entering: the room, who is in it and who waits."""
        snap: Event = {
            "room": self.describe(),
            "participants": [p.describe() for p in self.joined()],
            "streams": [s.describe() for s in self.streams.values()],
            "recording": self.recording.describe(),
            "held": self.held,
            "speaking": [{"participant_id": p, "feed": f} for p, f in sorted(self.speakers)],
        }
        if viewer.role is Role.MODERATOR:
            snap["waiting"] = [p.describe() for p in self.waiting()]
        return snap

    # -- membership ------------------------------------------------------------------------

    def join(
        self,
        identity: str,
        name: str,
        role: Role,
        client: Client,
        now: float,
        new_id: Callable[[], str],
    ) -> Participant:
        """Admit a participant or seat it in the lobby; a rejoining identity replaces its link."""
        if self.ended:
            raise SessionError(Code.ROOM_ENDED, "this session has ended")
        if identity in self.banned:
            raise SessionError(Code.REMOVED, "you were removed from this session")
        old = self.by_identity(identity)
        if old is not None:
            return self._rejoin(old, name, role, client)
        if (
            role not in (Role.MODERATOR, Role.RECORDER)
            and len(self.participants) >= self.config.max_participants
        ):
            raise SessionError(Code.ROOM_FULL, "this session is full")
        known = self.remembered.pop(identity, None)
        if known is not None:
            # The room moved here from another node: the moderator's decisions still hold.
            role = Role(known["role"])
        # Someone remembered was in the room (admitted, if there is a lobby) before the move.
        state = State.WAITING if known is None and self._must_wait(role) else State.JOINED
        pid = known["id"] if known is not None else new_id()
        p = Participant(pid, identity, name, role, client, now, state)
        if known is not None:
            p.may_annotate, p.floor = bool(known["may_annotate"]), bool(known["floor"])
            p.muted = bool(known.get("muted", False))  # a moderator's mute holds too
        self.participants[p.id] = p
        self._shown(p)
        self.revision += 1
        self.empty_since = None
        if state is State.JOINED:
            self._broadcast({"type": "joined", "participant": p.describe()}, skip=p.id)
        else:
            self._to_moderators({"type": "knock", "participant": p.describe()})
        return p

    def _rejoin(self, old: Participant, name: str, role: Role, client: Client) -> Participant:
        """The same identity again: the newer connection takes the participant's place."""
        # A reconnect after a network drop often beats the detection of the dead socket;
        # the newer connection wins and keeps the participant id.
        old.client.kick(Close.REPLACED, "replaced by a newer connection")
        old.client = client
        old.name = name
        self._shown(old)
        if old.away_since is not None:
            old.away_since = None
            self._broadcast(
                {"type": "presence", "participant_id": old.id, "connected": True}, skip=old.id
            )
        if old.role is not role:
            old.role = role
            self.revision += 1
            changed = {"type": "role_changed", "participant_id": old.id, "role": role.value}
            self._broadcast({**changed, "by": None}, skip=old.id)
            self._shown(old)
        return old

    def _shown(self, p: Participant) -> None:
        """Remember how a participant is shown to the others now."""
        self.authors.pop(p.id, None)
        self.authors[p.id] = {"name": p.name, "role": p.role.value}
        if len(self.authors) > MAX_AUTHORS:
            del self.authors[next(iter(self.authors))]  # the longest unchanged

    def leave(
        self, participant_id: str, reason: str, now: float, client: Client | None = None
    ) -> Participant | None:
        """Remove a participant (only if still served by `client`, when given); others are told."""
        p = self.participants.get(participant_id)
        if p is None or (client is not None and p.client is not client):
            return None
        self.remove_streams_of(p.id, reason)
        if self.held is not None and self.held["author"] == p.id:
            self._release(None)
        del self.participants[participant_id]
        self.revision += 1
        for gone in self.channel.forget(p.id):
            self._broadcast(gone)
        if p.id in self.channel.hands:
            self._order(self.channel.hand(p.id, f"left-{p.id}-{self.channel.seq}", False, now))
        event = {"type": "left", "participant_id": p.id, "reason": reason}
        if p.state is State.JOINED:
            self._broadcast(event)
        else:
            self._to_moderators(event)
        # The recorder alone does not keep a room alive.
        if all(q.role is Role.RECORDER for q in self.participants.values()):
            self.empty_since = now
        return p

    def away(
        self, participant_id: str, reason: str, now: float, client: Client
    ) -> Participant | None:
        """Keep a participant whose connection dropped, for a while: it may come back.

        Only a joined participant still served by `client` is kept (one waiting in the lobby
        leaves); its streams, subscriptions, grants and raised hand stay. `expire` lets it go.
        """
        p = self.participants.get(participant_id)
        if p is None or p.client is not client:
            return None
        if p.state is not State.JOINED:
            self.leave(participant_id, reason, now, client)
            return None
        p.away_since, p.away_reason = now, reason
        self._broadcast({"type": "presence", "participant_id": p.id, "connected": False})
        return p

    def expire(self, now: float, grace: float) -> tuple[list[Participant], list[Stream]]:
        """Let go of those away, and of streams interrupted, for `grace` seconds or more."""
        gone = [
            p.id
            for p in self.participants.values()
            if p.away_since is not None and now - p.away_since >= grace
        ]
        left = [
            q
            for q in (self.leave(pid, self.participants[pid].away_reason, now) for pid in gone)
            if q is not None
        ]
        stale = self.streams.stale(now, grace)
        removed = [x for x in (self.remove_stream(sid, "interrupted") for sid in stale) if x]
        return left, removed

    def admit(self, actor_id: str, target_id: str) -> Participant:
        """Let a waiting participant in."""
        self._require(actor_id, Action.ADMIT)
        p = self._waiting(target_id)
        p.state = State.JOINED
        self.revision += 1
        p.client.push({"type": "admitted", **self.snapshot(p), "channel": self.channel.snapshot()})
        self._broadcast({"type": "joined", "participant": p.describe()}, skip=p.id)
        return p

    def deny(self, actor_id: str, target_id: str, now: float) -> Participant:
        """Turn a waiting participant away."""
        self._require(actor_id, Action.ADMIT)
        p = self._waiting(target_id)
        p.client.push({"type": "denied"})
        p.client.kick(Close.DENIED, "not admitted")
        self.leave(p.id, "denied", now)
        return p

    # -- moderation ------------------------------------------------------------------------

    def set_role(self, actor_id: str, target_id: str, role: Role) -> Participant:
        """Change a participant's role."""
        actor = self._require(actor_id, Action.SET_ROLE)
        if role not in PERSON_ROLES:
            raise SessionError(Code.FORBIDDEN, f"the {role.value} role belongs to the server")
        p = self._target(target_id)
        p.role = role
        self._shown(p)
        self.revision += 1
        self._broadcast(
            {"type": "role_changed", "participant_id": p.id, "role": role.value, "by": actor.id}
        )
        return p

    def mute(self, actor_id: str, target_id: str) -> Participant:
        """Mute a participant's microphone; only the participant may unmute."""
        actor = self._require(actor_id, Action.MUTE)
        p = self._target(target_id)
        p.muted = True
        self.revision += 1
        self._broadcast({"type": "muted", "participant_id": p.id, "muted": True, "by": actor.id})
        return p

    def mute_all(self, actor_id: str, keep_id: str | None) -> list[Participant]:
        """Mute every microphone but one participant's (and the moderator's own): a speaker
        given the room; return those muted now."""
        actor = self._require(actor_id, Action.MUTE)
        keep = self._target(keep_id).id if keep_id is not None else actor.id
        muted = [
            p
            for p in self.joined()
            if p.id not in (actor.id, keep) and p.role is not Role.RECORDER and not p.muted
        ]
        for p in muted:
            p.muted = True
            event = {"type": "muted", "participant_id": p.id, "muted": True, "by": actor.id}
            self._broadcast(event)
        if muted:
            self.revision += 1
        return muted

    def set_muted(self, participant_id: str, muted: bool) -> Participant:
        """Record a participant muting or unmuting itself."""
        p = self._self(participant_id)
        p.muted = muted
        self.revision += 1
        self._broadcast({"type": "muted", "participant_id": p.id, "muted": muted, "by": p.id})
        return p

    def set_scale(self, participant_id: str, feed_id: object, spacing: float | None) -> Feed:
        """Set the millimetres per pixel of one's own video feed (the operator changed the
        depth); rulers drawn from now on measure with it, those drawn before keep their length."""
        p = self._self(participant_id)
        feed = self._feed(feed_id)
        stream = next((s for s in self.streams.of(p.id) if feed in s.feeds), None)
        if stream is None or feed.kind != "video":
            raise SessionError(Code.FORBIDDEN, "only the publisher of a video feed sets its scale")
        feed = replace(feed, pixel_spacing_mm=spacing)
        stream.feeds = [feed if f.id == feed.id else f for f in stream.feeds]
        self.revision += 1
        self._broadcast({"type": "feed_changed", "feed": feed.describe(), "by": p.id})
        return feed

    def remove(self, actor_id: str, target_id: str, now: float) -> Participant:
        """Remove a participant for the rest of the session."""
        actor = self._require(actor_id, Action.REMOVE)
        p = self._participant(target_id)
        self.banned.add(p.identity)
        self.revision += 1
        p.client.push({"type": "removed", "by": actor.id})
        p.client.kick(Close.REMOVED, "removed by a moderator")
        self.leave(p.id, "removed", now)
        return p

    def end(self, reason: str, actor_id: str | None = None) -> list[Participant]:
        """End the session for everyone; returns who was in it."""
        if actor_id is not None:
            self._require(actor_id, Action.END_ROOM)
        self.ended = True
        self.end_reason = reason
        gone = list(self.participants.values())
        for p in gone:
            p.client.push({"type": "room_ended", "reason": reason})
            p.client.kick(Close.ROOM_ENDED, "session ended")
        self.participants.clear()
        self.streams.clear()
        return gone

    # -- media ---------------------------------------------------------------------------

    def check_publish(self, participant_id: str, sources: list[Source]) -> Participant:
        """Refuse unless the participant's role may publish every one of these sources."""
        p = self._self(participant_id)
        for source in sources:
            if not _may_send(p, source):
                raise SessionError(
                    Code.FORBIDDEN, f"the {p.role.value} role may not publish {source.value}"
                )
        return p

    def withdraw_forbidden(self, participant_id: str) -> list[Stream]:
        """Withdraw the streams a participant's role (changed since) may no longer publish."""
        p = self._participant(participant_id)
        banned = [
            s.id for s in self.streams.of(p.id) if not all(_may_send(p, f.source) for f in s.feeds)
        ]
        return [s for s in (self.remove_stream(i, "role_changed") for i in banned) if s]

    def add_stream(self, stream: Stream) -> None:
        """Announce a published stream to everyone in the room."""
        if stream.id in self.streams:
            raise SessionError(Code.STREAM_EXISTS, "a stream with this id is published")
        self._self(stream.participant_id)
        self.streams[stream.id] = stream
        self._broadcast({"type": "stream_added", "stream": stream.describe()})

    def remove_stream(self, stream_id: str, reason: str) -> Stream | None:
        """Withdraw a stream; everyone is told."""
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            # A microphone that ends speaking as it goes: nobody is told it stopped.
            self.speakers -= {(stream.participant_id, f.id) for f in stream.feeds}
            self._broadcast({"type": "stream_removed", "stream_id": stream_id, "reason": reason})
        return stream

    def stream_state(self, stream_id: str, live: bool, now: float) -> None:
        """Mark a stream's media lost (it waits to be published again) or back; all are told."""
        stream = self.streams.get(stream_id)
        if stream is None or (stream.interrupted_since is None) == live:
            return
        stream.interrupted_since = None if live else now
        state = "live" if live else "reconnecting"
        self._broadcast({"type": "stream_state", "stream_id": stream_id, "state": state})

    def interrupted_stream(self, participant_id: str, sources: list[Source]) -> Stream | None:
        """Return the participant's interrupted stream with exactly these feed sources, if any."""
        return self.streams.interrupted(participant_id, sources)

    def remove_streams_of(self, participant_id: str, reason: str) -> list[Stream]:
        """Withdraw every stream a participant publishes."""
        mine = [s.id for s in self.streams.of(participant_id)]
        return [s for s in (self.remove_stream(i, reason) for i in mine) if s is not None]

    def check_subscribe(self, participant_id: str, stream_id: str) -> Stream:
        """Return the stream if the participant may receive it."""
        self._require(participant_id, Action.SUBSCRIBE)
        stream = self.streams.get(stream_id)
        if stream is None:
            raise SessionError(Code.NO_SUCH_STREAM, "no such stream in this room")
        return stream

    def stream_of(self, participant_id: str, stream_id: str) -> Stream:
        """Return a stream the participant itself publishes."""
        stream = self.streams.get(stream_id)
        if stream is None or stream.participant_id != participant_id:
            raise SessionError(Code.NO_SUCH_STREAM, "you publish no stream with this id")
        return stream

    # -- the ordered channel -------------------------------------------------------------------

    def annotate(self, participant_id: str, op: dict[str, Any], now: float) -> None:
        """Apply an annotation operation and send it to those who should see it."""
        p = self._self(participant_id)
        if not (may(p.role, Action.ANNOTATE) or p.may_annotate):
            raise SessionError(Code.FORBIDDEN, f"the {p.role.value} role may not annotate")
        kind = op.get("op")
        if kind == "pointer":
            if op.get("points"):
                self._feed(op.get("feed"))
            self._broadcast(self.channel.point(p.id, op, now), skip=p.id)
            return
        op_id = op.get("id")
        if not isinstance(op_id, str) or not op_id:
            raise SessionError(Code.INVALID_OP, "an annotation needs an id")
        if self._retried(p, op_id):
            return
        moderator = p.role is Role.MODERATOR
        event = self.channel.apply(p.id, op, now, moderator, self._geometry)
        self._order(event)

    def speaking(self, stream_id: str, feed_id: str, speaking: bool) -> None:
        """A microphone started or stopped speaking: everyone is told (the media layer says it
        a few times a second at most)."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        key = (stream.participant_id, feed_id)
        if speaking == (key in self.speakers):
            return
        if speaking:
            self.speakers.add(key)
        else:
            self.speakers.discard(key)
        self._broadcast(
            {
                "type": "speaking",
                "participant_id": stream.participant_id,
                "feed": feed_id,
                "speaking": speaking,
            }
        )

    def check_hold(self, participant_id: str, feed_id: object) -> Participant:
        """Check that a participant may hold up a frame of a feed for everyone."""
        p = self._self(participant_id)
        if not (may(p.role, Action.ANNOTATE) or p.may_annotate):
            raise SessionError(Code.FORBIDDEN, f"the {p.role.value} role may not hold up frames")
        if self._feed(feed_id).kind != "video":
            raise SessionError(Code.NO_SUCH_FEED, "a frame is held from a video feed")
        return p

    def hold_frame(self, participant_id: str, frame: Event, now: float, ref: str | None) -> Event:
        """Show everyone a still frame (`feed`, `width`, `height`, `image`, maybe `media_ts`)
        in place of any held before; its author sees it under `ref`."""
        p = self.check_hold(participant_id, frame["feed"])
        self.held_count += 1
        self.held = {
            "type": "frame_held",
            "id": f"held-{self.held_count}",
            "author": p.id,
            "server_ts": now,
            **frame,
        }
        self._broadcast(self.held, skip=p.id)
        p.client.push({**self.held, "ref": ref})
        return self.held

    def release_frame(self, participant_id: str, ref: str | None) -> Event:
        """Stop showing the held frame: its author, or a moderator."""
        p = self._self(participant_id)
        if self.held is None:
            raise SessionError(Code.NOTHING_HELD, "no frame is held up")
        if self.held["author"] != p.id and p.role is not Role.MODERATOR:
            raise SessionError(Code.FORBIDDEN, "only its author or a moderator releases a frame")
        return self._release(p, ref)

    def _release(self, by: Participant | None, ref: str | None = None) -> Event:
        assert self.held is not None
        event = {"type": "frame_released", "id": self.held["id"], "by": by.id if by else None}
        self.held = None
        self._broadcast(event, skip=by.id if by else None)
        if by is not None:
            by.client.push({**event, "ref": ref})
        return event

    def chat(self, participant_id: str, op_id: str, text: str, now: float) -> None:
        """Post a chat message to everyone."""
        p = self._require(participant_id, Action.CHAT)
        if self._retried(p, op_id):
            return
        self._order(self.channel.say(p.id, op_id, text, now))

    def raise_hand(self, participant_id: str, op_id: str, raised: bool, now: float) -> None:
        """Raise or lower one's hand."""
        p = self._self(participant_id)
        if self._retried(p, op_id):
            return
        self._order(self.channel.hand(p.id, op_id, raised, now))

    def grant(
        self,
        actor_id: str,
        target_id: str,
        now: float,
        *,
        annotate: bool | None = None,
        floor: bool | None = None,
    ) -> Participant:
        """Grant or withdraw annotating, or the floor (speaking), beyond a participant's role."""
        actor = self._require(actor_id, Action.SET_ROLE)
        p = self._target(target_id)
        if annotate is not None:
            p.may_annotate = annotate
        if floor is not None:
            p.floor = floor
        self.revision += 1
        if floor and p.id in self.channel.hands:
            lower = self.channel.hand(p.id, f"floor-{p.id}-{self.channel.seq}", False, now)
            self._order(lower)
        self._broadcast(
            {
                "type": "granted",
                "participant_id": p.id,
                "by": actor.id,
                "may_annotate": p.may_annotate,
                "floor": p.floor,
            }
        )
        return p

    # -- state kept beyond this process ----------------------------------------------------------

    def export(self) -> Event:
        """Return the membership state another node needs to carry the room on."""
        people = {
            p.identity: {
                "id": p.id,
                "role": p.role.value,
                "may_annotate": p.may_annotate,
                "floor": p.floor,
                "muted": p.muted,
            }
            for p in self.participants.values()
            if p.state is State.JOINED and p.role is not Role.RECORDER
        }
        # People restored from another node who have not come back yet are kept for later.
        return {
            "config": asdict(self.config),
            "created_at": self.created_at,
            "people": {**self.remembered, **people},
            "banned": sorted(self.banned),
            "recording": self.recording.export(),
        }

    def restore(self, state: Event) -> bool:
        """Take back the state exported by another node; True if it was being recorded."""
        if "config" in state:
            # Created with a lobby or a title by the admin: the same room on this node.
            self.config = RoomConfig(**state["config"])
            self.created_at = float(state.get("created_at", self.created_at))
        self.remembered = {k: dict(v) for k, v in state.get("people", {}).items()}
        self.banned = set(state.get("banned", []))
        return self.recording.restore(state.get("recording") or {})

    # -- recording -------------------------------------------------------------------------------

    def start_recording(self, actor_id: str, now: float) -> bool:
        """Ask to record; True when it may start now, False while consent is awaited."""
        actor = self._require(actor_id, Action.RECORD)
        if self.recording.active:
            raise SessionError(Code.ALREADY_RECORDING, "the session is being recorded")
        if self.streams.has_patient_feed() and self.recording.consent is None:
            operators = [p for p in self.joined() if p.role is Role.OPERATOR]
            if not operators:
                raise SessionError(
                    Code.CONSENT_REQUIRED,
                    "recording a patient feed needs the operator's confirmation",
                )
            self.recording.pending_by = actor.id
            self.revision += 1
            self._to_consent_parties(actor.id)
            for p in operators:
                p.client.push({"type": "consent_requested", "by": actor.id})
            return False
        self.recording.pending_by = actor.id
        return True

    def give_consent(self, participant_id: str, now: float) -> bool:
        """Record the operator's confirmation that the patient consented; True if a start waits."""
        p = self._require(participant_id, Action.CONSENT)
        self.recording.consent = {"participant_id": p.id, "identity": p.identity, "at": now}
        self.revision += 1
        return bool(self.recording.pending_by) and not self.recording.active

    def decline_consent(self, participant_id: str) -> str:
        """Record the operator's refusal: the waiting start is dropped; returns who asked."""
        self._require(participant_id, Action.CONSENT)
        pending, self.recording.pending_by = self.recording.pending_by, ""
        self.revision += 1
        if pending:
            self._to_consent_parties(participant_id)
        return pending

    def cancel_recording(self, actor_id: str) -> bool:
        """Take back a start that waits for consent; False when none waits."""
        self._require(actor_id, Action.RECORD)
        if self.recording.active or not self.recording.pending_by:
            return False
        self.recording.pending_by = ""
        self.revision += 1
        self._to_consent_parties(actor_id)
        return True

    def _to_consent_parties(self, by: str) -> None:
        """Tell the moderators and operators that a start waits for consent, or no longer."""
        event = {"type": "recording", **self.recording.describe(), "by": by}
        self._to_roles(event, Role.MODERATOR, Role.OPERATOR)

    def recording_started(self, session_id: str, now: float) -> None:
        """Tell everyone the session is now recorded."""
        self.recording.active = True
        self.recording.session_id = session_id
        self.recording.started_by = self.recording.pending_by or self.recording.started_by
        self.recording.pending_by = ""
        self.recording.since = now
        self.revision += 1
        self._broadcast(
            {"type": "recording", **self.recording.describe(), "by": self.recording.started_by}
        )

    def stop_recording(self, actor_id: str | None, announce: bool = True) -> Event:
        """Stop recording (a moderator, or the server as the room ends); returns the event
        that tells everyone, sent now or, with `announce` False, by `announce` later."""
        if actor_id is not None:
            self._require(actor_id, Action.RECORD)
        if not self.recording.active:
            raise SessionError(Code.NOT_RECORDING, "the session is not being recorded")
        self.recording.active = False
        self.revision += 1
        event = {"type": "recording", **self.recording.describe(), "by": actor_id}
        if announce:
            self._broadcast(event)
        return event

    def announce(self, event: Event) -> None:
        """Tell everyone an event prepared earlier (a recording stopped, once its files are
        complete)."""
        self._broadcast(event)

    def _feed(self, feed_id: object) -> Feed:
        feed = self.streams.feed(feed_id)
        if feed is None:
            raise SessionError(Code.NO_SUCH_FEED, "annotations are drawn on a published feed")
        return feed

    def _geometry(self, feed_id: object) -> FeedGeometry:
        f = self._feed(feed_id)
        return FeedGeometry(f.width, f.height, f.pixel_spacing_mm)

    def idle(self, now: float) -> bool:
        """Tell whether the room has been empty for longer than its idle timeout."""
        return self.empty_since is not None and now - self.empty_since >= self.config.idle_timeout

    # -- helpers ---------------------------------------------------------------------------

    def _must_wait(self, role: Role) -> bool:
        return self.config.lobby and role not in (Role.MODERATOR, Role.RECORDER)

    def _retried(self, p: Participant, op_id: str) -> bool:
        # A retry of an operation already ordered: acknowledge it again, tell nobody else.
        again = self.channel.retry(p.id, op_id)
        if again is not None:
            p.client.push(again)
        return again is not None

    def _order(self, event: Event) -> None:
        # An ordered channel operation: journaled (if the edge keeps a journal), then sent.
        if self.journal is not None:
            self.journal(event)
        self._broadcast(event)


def _may_send(p: Participant, source: Source) -> bool:
    """Whether a participant may publish a source now (the floor lets the audience speak)."""
    return (source is Source.MICROPHONE and p.floor) or may_publish(p.role, source)
