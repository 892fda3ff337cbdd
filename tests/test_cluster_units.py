"""The pure parts of the cluster: merging copies of a frame, placement choice."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from teleconsult.session.placement import Load, choose
from teleconsult.signaling.cluster import fan_in

frames = st.lists(
    st.tuples(
        st.sampled_from(["edge-1", "edge-2"]),
        st.sampled_from(["x", "y", "z"]),  # clients
        st.sampled_from(["t1", "t2", "t3", "close"]),
    ),
    max_size=40,
)


def delivered(batch: list[tuple[str, dict[str, Any]]]) -> dict[tuple[str, str], list[str]]:
    """What each client of each edge receives, in order."""
    got: dict[tuple[str, str], list[str]] = {}
    for node, msg in batch:
        if msg["k"] == "down":
            for cid in msg["c"]:
                got.setdefault((node, cid), []).append(msg["t"])
        else:
            got.setdefault((node, msg["c"]), []).append("<close>")
    return got


@given(frames)
def test_merging_keeps_every_clients_frames_in_order(items: list[tuple[str, str, str]]) -> None:
    batch = [
        (node, {"k": "close", "c": cid, "code": 1000})
        if text == "close"
        else (node, {"k": "down", "c": [cid], "t": text})
        for node, cid, text in items
    ]
    merged = fan_in(batch)
    assert delivered(merged) == delivered(batch)
    assert len(merged) <= len(batch)


def test_one_event_to_many_clients_of_an_edge_is_one_message() -> None:
    batch = [("edge-1", {"k": "down", "c": [f"c{i}"], "t": "op-7"}) for i in range(15)]
    merged = fan_in(batch)
    assert merged == [("edge-1", {"k": "down", "c": [f"c{i}" for i in range(15)], "t": "op-7"})]


def test_placement_prefers_the_least_loaded_open_node() -> None:
    nodes = {
        "a": Load(rooms=4, down_tracks=30, cpu=40.0),
        "b": Load(rooms=1, down_tracks=2, cpu=3.0),
        "c": Load(rooms=0, draining=True),
    }
    assert choose(nodes, "a") == "b"
    assert choose({"c": Load(draining=True)}, "a") == "a"  # nobody open: serve it here
    assert choose({}, "a") == "a"
    # A tie, or a small difference, goes to the node choosing (its client needs no relay).
    assert choose({"a": Load(), "b": Load()}, "b") == "b"
    assert choose({"a": Load(cpu=0.3), "b": Load(cpu=1.5)}, "b") == "b"
    # A room weighs more than CPU jitter: the next room goes to the other node.
    assert choose({"a": Load(rooms=1), "b": Load()}, "a") == "b"
