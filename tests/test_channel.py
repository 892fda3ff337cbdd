"""The ordered channel with no I/O: shapes, retries, resume, limits, rulers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teleconsult.session.channel import Channel, FeedGeometry, Limits, ruler_length
from teleconsult.session.errors import Code, SessionError

G = FeedGeometry()


def stroke(op_id: str, n: int = 3, feed: str = "f") -> dict[str, object]:
    return {
        "op": "stroke",
        "id": op_id,
        "feed": feed,
        "points": [[i / 10, i / 10] for i in range(n)],
        "media_ts": 12345,
    }


def test_operations_are_ordered_and_form_the_state() -> None:
    ch = Channel()
    a = ch.draw("p1", stroke("a"), 1.0, G)
    b = ch.draw("p2", {"op": "arrow", "id": "b", "feed": "f", "points": [[0, 0], [1, 1]]}, 1.1, G)
    assert (a["seq"], b["seq"]) == (1, 2)
    assert a["author"] == "p1" and a["media_ts"] == 12345 and a["server_ts"] == 1.0
    assert set(ch.shapes) == {"a", "b"}
    assert ch.undo("p1", "u1", 2.0)["target"] == "a"
    assert set(ch.shapes) == {"b"}
    with pytest.raises(SessionError) as e:
        ch.undo("p1", "u2", 2.1)
    assert e.value.code is Code.NO_SUCH_ANNOTATION
    with pytest.raises(SessionError) as e:
        ch.delete("p1", "b", "d1", 2.2, moderator=False)
    assert e.value.code is Code.FORBIDDEN
    assert ch.delete("p3", "b", "d2", 2.3, moderator=True)["target"] == "b"
    assert ch.seq == 4 and not ch.shapes


def test_clear_own_and_all() -> None:
    ch = Channel()
    ch.draw("p1", stroke("a", feed="f1"), 1, G)
    ch.draw("p1", stroke("b", feed="f2"), 1, G)
    ch.draw("p2", stroke("c", feed="f1"), 1, G)
    assert ch.clear("p1", "x1", "own", "f1", 2, moderator=False)["removed"] == ["a"]
    with pytest.raises(SessionError) as e:
        ch.clear("p1", "x2", "all", None, 2, moderator=False)
    assert e.value.code is Code.FORBIDDEN
    assert sorted(ch.clear("m", "x3", "all", None, 2, moderator=True)["removed"]) == ["b", "c"]


def test_retry_is_idempotent_and_ids_are_per_author() -> None:
    ch = Channel()
    first = ch.draw("p1", stroke("a"), 1, G)
    assert ch.retry("p1", "a") == first
    assert ch.retry("p1", "new") is None
    with pytest.raises(SessionError) as e:
        ch.retry("p2", "a")
    assert e.value.code is Code.DUPLICATE_ID


def test_resume_gives_exactly_what_was_missed_or_a_snapshot() -> None:
    ch = Channel(Limits(log=5))
    for i in range(8):
        ch.draw("p1", stroke(f"s{i}"), i, G)
    r = ch.since(6)
    assert r["mode"] == "resume" and [e["seq"] for e in r["ops"]] == [7, 8]
    assert ch.since(8) == {"mode": "resume", "seq": 8, "ops": [], "pointers": []}
    assert ch.since(3)["mode"] == "resume"  # seq 4 is the oldest kept
    snap = ch.since(2)  # seq 3 fell out of the log: too old to resume
    assert snap["mode"] == "snapshot" and len(snap["annotations"]) == 8
    assert ch.since(99)["mode"] == "snapshot"  # from another life of the room


def test_points_are_checked() -> None:
    ch = Channel()
    cases: list[tuple[dict[str, Any], Code]] = [
        ({"op": "stroke", "id": "x", "feed": "f", "points": [[0, 0], [1.5, 0]]}, Code.OUT_OF_RANGE),
        ({"op": "stroke", "id": "x", "feed": "f", "points": [[0, 0]] * 501}, Code.TOO_LARGE),
        ({"op": "arrow", "id": "x", "feed": "f", "points": [[0, 0]]}, Code.INVALID_OP),
        ({"op": "arrow", "id": "x", "feed": "f", "points": [[0, 0], ["a", 1]]}, Code.INVALID_OP),
        ({"op": "arrow", "id": "x", "feed": "f", "points": [5, [0, 1]]}, Code.INVALID_OP),
        (
            {"op": "arrow", "id": "x", "feed": "f", "points": [[0, 0], [True, False]]},
            Code.INVALID_OP,
        ),
        (
            {"op": "arrow", "id": "x", "feed": "f", "points": [[0, 0], [0, float("nan")]]},
            Code.INVALID_OP,
        ),
        (
            {"op": "text", "id": "x", "feed": "f", "points": [[0, 0]], "text": "x" * 201},
            Code.TOO_LARGE,
        ),
        ({"op": "text", "id": "x", "feed": "f", "points": [[0, 0]]}, Code.INVALID_OP),
        ({"op": "laser", "id": "x", "feed": "f", "points": []}, Code.UNKNOWN_OP),
    ]
    for op, code in cases:
        with pytest.raises(SessionError) as e:
            ch.draw("p1", op, 1, G)
        assert e.value.code is code, op
    assert ch.seq == 0  # nothing refused was ordered


def test_ruler_lengths() -> None:
    pts = [[0.0, 0.0], [0.5, 0.0]]
    assert ruler_length(pts, FeedGeometry()) == {"value": 0.5, "unit": "frame"}
    assert ruler_length(pts, FeedGeometry(800, 600)) == {"value": 400.0, "unit": "px"}
    assert ruler_length(pts, FeedGeometry(800, 600, 0.1)) == {"value": 40.0, "unit": "mm"}


def test_chat_history_is_bounded() -> None:
    ch = Channel(Limits(chat=3))
    for i in range(5):
        ch.say("p1", f"c{i}", f"question {i}", i)
    assert [c["text"] for c in ch.snapshot()["chat"]] == ["question 2", "question 3", "question 4"]
    with pytest.raises(SessionError):
        ch.say("p1", "c9", "   ", 9)


def test_a_channel_rebuilt_from_its_log_is_the_same() -> None:
    ch = Channel()
    ch.draw("p1", stroke("a"), 1, G)
    ch.draw("p2", stroke("b"), 2, G)
    ch.say("p3", "c1", "hello", 3)
    ch.hand("p3", "h1", True, 4)
    ch.undo("p1", "u1", 5)
    ch.draw("p1", stroke("d"), 6, G)
    ch.clear("p2", "x", "own", None, 7, moderator=False)
    ch.hand("p4", "h2", True, 8)
    ch.hand("p3", "h3", False, 9)
    again = Channel.restore([json.loads(encoded) for _, encoded in ch.log])
    assert again.snapshot() == {**ch.snapshot(), "pointers": []}
    assert again.retry("p1", "d") == ch.retry("p1", "d")
    assert again.draw("p1", stroke("e"), 10, G)["seq"] == ch.seq + 1


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["draw", "say", "hand", "undo", "clear"]), st.integers(0, 2)),
        min_size=1,
        max_size=120,
    ),
    every=st.integers(1, 40),
    recent=st.integers(1, 50),
)
def test_a_log_cut_to_its_checkpoints_rebuilds_the_same_channel(
    steps: list[tuple[str, int]], every: int, recent: int
) -> None:
    """The store keeps a checkpoint every few operations and what came after the last one."""
    ch = Channel()
    log: list[dict[str, Any]] = []
    for n, (kind, who) in enumerate(steps):
        author = f"p{who}"
        try:
            if kind == "draw":
                event = ch.draw(author, stroke(f"s{n}"), n, G)
            elif kind == "say":
                event = ch.say(author, f"c{n}", f"message {n}", n)
            elif kind == "hand":
                event = ch.hand(author, f"h{n}", n % 3 != 0, n)
            elif kind == "undo":
                event = ch.undo(author, f"u{n}", n)
            else:
                event = ch.clear(author, f"x{n}", "own", None, n, moderator=False)
        except SessionError:
            continue  # nothing of this author's to undo
        log.append(json.loads(json.dumps(event)))
        if event["seq"] % every == 0:
            checkpoint = json.loads(json.dumps(ch.checkpoint(recent)))
            log = [checkpoint]  # what the store keeps: the checkpoint replaces all before it
    again = Channel.restore(log)
    assert again.snapshot() == {**ch.snapshot(), "pointers": []}
    assert again.seq == ch.seq
    # The latest operations are still recognised when sent again after a failover.
    for op_id, (author, seq) in ch.ids.items():
        if seq > ch.seq - min(recent, every):
            known = again.retry(author, op_id)
            assert known is not None and known["seq"] == seq
    # And the order goes on where it stopped.
    assert again.say("p9", "next", "go on", 999)["seq"] == ch.seq + 1
