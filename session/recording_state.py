"""Whether a room is recorded, by whom and since when, and the patient's consent to it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .participant import Event


@dataclass
class Recording:
    """A room's recording state, as participants are told it and as other nodes take it on."""

    active: bool = False
    session_id: str = ""
    started_by: str = ""
    since: float = 0.0
    pending_by: str = ""  # a moderator's start waiting for the operator's consent
    consent: dict[str, Any] | None = None
    segment: int = 1  # above 1 when the recording went on on another node

    def describe(self) -> Event:
        """Return what participants are told."""
        return {
            "active": self.active,
            "session_id": self.session_id or None,
            "since": self.since if self.active else None,
            "consent": self.consent,
            "pending": bool(self.pending_by) and not self.active,
        }

    def export(self) -> Event:
        """Return what another node needs to go on recording (a waiting start is not kept)."""
        return {
            "active": self.active,
            "session_id": self.session_id,
            "started_by": self.started_by,
            "since": self.since,
            "consent": self.consent,
            "segment": self.segment,
        }

    def restore(self, rec: Event) -> bool:
        """Take back an exported state, inactive until the edge resumes it; True if it was on."""
        self.session_id = str(rec.get("session_id") or "")
        self.started_by = str(rec.get("started_by") or "")
        self.since = float(rec.get("since") or 0.0)
        self.consent = rec.get("consent")
        self.segment = int(rec.get("segment") or 1)
        # A recording that was running is resumed by the edge, as a new segment.
        self.active = False
        return bool(rec.get("active"))
