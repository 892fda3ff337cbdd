"""Simulcast in SDP (RFC 8853, RFC 8851): which layers a publisher offers, and the answer's word
that we receive them. aiortc 1.16 reads neither `a=rid` nor `a=simulcast`; these work on text."""

from __future__ import annotations

import re

from .sdp_text import mid as _mid
from .sdp_text import sections as _sections

RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
# At most this many layers per feed: more is never useful, and a peer may offer anything.
MAX_LAYERS = 4
_RID = re.compile(r"^[A-Za-z0-9_-]{1,16}$")


def offered_layers(offer: str) -> dict[str, list[str]]:
    """Return, for each video section of an offer that sends simulcast, its mid and rids (in
    the order given; alternatives after the first and paused rids left out)."""
    layers: dict[str, list[str]] = {}
    for section in _sections(offer)[1:]:
        if not section or not section[0].startswith("m=video"):
            continue
        mid = _mid(section)
        declared = {
            parts[0]
            for line in section
            if line.startswith("a=rid:")
            for parts in [line[6:].split()]
            if len(parts) >= 2 and parts[1] == "send"
        }
        for line in section:
            if mid is not None and line.startswith("a=simulcast:send "):
                rids = []
                for choice in line.split(" ", 1)[1].split()[0].split(";"):
                    rid = choice.split(",")[0]
                    if _RID.match(rid) and rid in declared and rid not in rids:
                        rids.append(rid)
                if len(rids) >= 2:
                    layers[mid] = rids[:MAX_LAYERS]
    return layers


def answer_with_layers(answer: str, layers: dict[str, list[str]]) -> str:
    """Add to an answer's sections the rids they receive and their simulcast line."""
    out: list[str] = []
    for i, section in enumerate(_sections(answer)):
        out += section
        rids = layers.get(_mid(section) or "") if i else None
        if rids:
            out += [f"a=rid:{rid} recv" for rid in rids]
            out.append("a=simulcast:recv " + ";".join(rids))
    return "\r\n".join(out) + "\r\n"
