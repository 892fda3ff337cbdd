"""SDP as text, split into its sections: for what aiortc 1.16 does not read (simulcast, RED)."""

from __future__ import annotations


def sections(sdp: str) -> list[list[str]]:
    """Split SDP into the session part and each media section, as lists of lines."""
    parts: list[list[str]] = [[]]
    for line in sdp.splitlines():
        if line.startswith("m="):
            parts.append([])
        parts[-1].append(line)
    return parts


def mid(section: list[str]) -> str | None:
    """Return a media section's mid, if it has one."""
    for line in section:
        if line.startswith("a=mid:"):
            return line[6:].strip()
    return None
