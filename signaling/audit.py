"""The audit trail: who joined, left, was refused, changed roles or ended a room, as JSON lines."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class AuditLog:
    """Appends one JSON object per line; never records tokens, names or message bodies."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # O_APPEND makes each single write land whole at the end, even with several writers.
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def record(
        self,
        action: str,
        outcome: str = "ok",
        *,
        room: str | None = None,
        identity: str | None = None,
        role: str | None = None,
        participant: str | None = None,
        code: str | None = None,
        target: str | None = None,
        actor: str = "participant",
    ) -> None:
        """Append one entry."""
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "room": room,
            "identity": identity,
            "role": role,
            "participant": participant,
            "actor": actor,
            "action": action,
            "outcome": outcome,
        }
        if code is not None:
            entry["code"] = code
        if target is not None:
            entry["target"] = target
        os.write(self._fd, (json.dumps(entry, separators=(",", ":")) + "\n").encode())

    def close(self) -> None:
        """Close the file."""
        os.close(self._fd)
