"""Who is in a room and who waits: looked up, checked against their role, and told events."""

from __future__ import annotations

from .errors import Code, SessionError
from .participant import Event, Participant, State
from .roles import Action, Role, may


class Members:
    """Owns a room's participants by id; the room's rules build on these lookups."""

    def __init__(self) -> None:
        self.participants: dict[str, Participant] = {}

    def joined(self) -> list[Participant]:
        """Return the participants in the room, lobby excluded, in join order."""
        return [p for p in self.participants.values() if p.state is State.JOINED]

    def waiting(self) -> list[Participant]:
        """Return the participants waiting in the lobby."""
        return [p for p in self.participants.values() if p.state is State.WAITING]

    def by_identity(self, identity: str) -> Participant | None:
        """Return the participant with this identity, if present or waiting."""
        for p in self.participants.values():
            if p.identity == identity:
                return p
        return None

    def check(self, participant_id: str, action: Action) -> Participant:
        """Return the joined participant if its role allows the action, else refuse."""
        return self._require(participant_id, action)

    def _participant(self, participant_id: str) -> Participant:
        p = self.participants.get(participant_id)
        if p is None:
            raise SessionError(Code.NO_SUCH_PARTICIPANT, "no such participant in this room")
        return p

    def _target(self, participant_id: str) -> Participant:
        p = self._participant(participant_id)
        if p.state is not State.JOINED:
            raise SessionError(Code.NO_SUCH_PARTICIPANT, "that participant is not in the room")
        return p

    def _waiting(self, participant_id: str) -> Participant:
        p = self._participant(participant_id)
        if p.state is not State.WAITING:
            raise SessionError(Code.NOT_WAITING, "that participant is not waiting in the lobby")
        return p

    def _self(self, participant_id: str) -> Participant:
        p = self._participant(participant_id)
        if p.state is State.WAITING:
            raise SessionError(Code.IN_LOBBY, "wait until a moderator admits you")
        return p

    def _require(self, participant_id: str, action: Action) -> Participant:
        actor = self._self(participant_id)
        if not may(actor.role, action):
            raise SessionError(
                Code.FORBIDDEN, f"the {actor.role.value} role may not {action.value}"
            )
        return actor

    def _broadcast(self, event: Event, skip: str | None = None) -> None:
        for p in self.joined():
            if p.id != skip:
                p.client.push(event)

    def _to_moderators(self, event: Event) -> None:
        self._to_roles(event, Role.MODERATOR)

    def _to_roles(self, event: Event, *roles: Role) -> None:
        for p in self.joined():
            if p.role in roles:
                p.client.push(event)
