"""Prometheus metrics of one server, in a registry of its own."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from teleconsult.media.aiortc_codecs import CODECS_CREATED
from teleconsult.media.datagrams import INGRESS
from teleconsult.media.histogram import Histogram as DelayHistogram


class Metrics:
    """Counters and gauges for rooms, participants, messages and errors."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rooms = Gauge("teleconsult_rooms", "Live rooms", registry=self.registry)
        self.participants = Gauge(
            "teleconsult_participants", "Participants in rooms or lobbies", registry=self.registry
        )
        self.connections = Gauge(
            "teleconsult_connections", "Open signaling connections", registry=self.registry
        )
        self.messages = Counter(
            "teleconsult_messages", "Messages received, by type", ["type"], registry=self.registry
        )
        self.errors = Counter(
            "teleconsult_errors",
            "Errors sent to clients, by code",
            ["code"],
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "teleconsult_event_loop_lag_seconds",
            "How much later than due the event loop woke a 0.1 s timer",
            buckets=(0.001, 0.005, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
            registry=self.registry,
        )

    def watch_media(self, stats: Callable[[], dict[str, Any]], delays: DelayHistogram) -> None:
        """Export media statistics, read from `stats` at every scrape."""
        self.registry.register(MediaCollector(stats, delays))

    def watch_cluster(self, cluster: Any) -> None:
        """Export the node's view of its cluster."""
        self.registry.register(ClusterCollector(cluster))

    def watch_turn(self, turn: Any) -> None:
        """Export the built-in TURN server's counters."""
        self.registry.register(TurnCollector(turn))

    def watch_processes(self, pids: Callable[[], dict[str, int]]) -> None:
        """Export the CPU time of the node's processes (the server, each media worker)."""
        self.registry.register(ProcessCollector(pids))

    def render(self) -> bytes:
        """Return the exposition text."""
        return generate_latest(self.registry)


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """A process's user and system CPU time so far (Linux), or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


class ProcessCollector(Collector):
    """CPU seconds of each of the node's processes, read from /proc at every scrape."""

    def __init__(self, pids: Callable[[], dict[str, int]]) -> None:
        self.pids = pids

    def collect(self) -> Iterator[Metric]:
        cpu = CounterMetricFamily(
            "teleconsult_process_cpu_seconds",
            "CPU time (user and system) of the node's processes: the server and media workers",
            labels=["process"],
        )
        for name, pid in self.pids().items():
            seconds = cpu_seconds(pid)
            if seconds is not None:
                cpu.add_metric([name], seconds)
        yield cpu


class ClusterCollector(Collector):
    """Live nodes, relayed and piped connections, cascade legs, bus traffic."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster

    def collect(self) -> Iterator[Metric]:
        """Read the cluster's state at scrape time."""
        c = self.cluster
        for name, doc, value in (
            ("teleconsult_cluster_nodes", "Live nodes this node sees", len(c.live)),
            (
                "teleconsult_cluster_relayed",
                "Connections hosted here for clients of other nodes",
                len(c.carried.relayed),
            ),
            (
                "teleconsult_cluster_piped",
                "Connections of this node piped to another host",
                len(c.carried.pipes),
            ),
            ("teleconsult_cluster_legs_in", "Streams cascaded to this node", c.legs_in()),
        ):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            yield g
        sent = CounterMetricFamily(
            "teleconsult_cluster_bus_messages", "Messages published to other nodes"
        )
        sent.add_metric([], c.published)
        yield sent
        dropped = CounterMetricFamily(
            "teleconsult_cluster_bus_dropped",
            "Messages no node took within the resend time, given up (their clients are told)",
            labels=["kind"],
        )
        for kind in ("open", "up", "gone", "down", "close", "call", "reply"):
            dropped.add_metric([kind], c.bus.dropped[kind])
        yield dropped
        unreadable = CounterMetricFamily(
            "teleconsult_cluster_bus_unreadable", "Messages received that were no bus message"
        )
        unreadable.add_metric([], c.bus.unreadable)
        yield unreadable


_UP = [
    ("packets", "Packets received from the publisher"),
    ("bytes", "Payload bytes received from the publisher"),
    ("lost", "Packets lost on the way from the publisher"),
    ("nacks_sent", "NACKs sent to the publisher"),
    ("plis_sent", "Keyframe requests sent to the publisher"),
    ("keyframes", "Keyframes received from the publisher"),
]
_DOWN = [
    ("packets", "Packets sent to the subscriber"),
    ("bytes", "Payload bytes sent to the subscriber"),
    ("nacks", "NACKed packets reported by the subscriber"),
    ("retransmits", "Packets retransmitted to the subscriber"),
    ("repeats_ignored", "NACKs not answered: the packet was resent within the round trip"),
    ("plis", "Keyframe requests from the subscriber"),
    ("held_packets", "Packets not sent to the subscriber while the node could not keep up"),
]


def _per_viewer(downs: list[dict[str, Any]], labels: list[str]) -> Iterator[Metric]:
    """Each subscriber's path: the estimate, the loss it reports, the simulcast layer sent."""
    estimate = GaugeMetricFamily(
        "teleconsult_media_down_estimate_bits_per_second",
        "What the subscriber's path is estimated to carry (its transport-wide feedback, or REMB)",
        labels=labels,
    )
    loss = GaugeMetricFamily(
        "teleconsult_media_down_loss_ratio",
        "Share of packets lost, as the subscriber's latest receiver report says",
        labels=labels,
    )
    layer = GaugeMetricFamily(
        "teleconsult_media_down_layer",
        "The simulcast layer sent to the subscriber (1 on the layer's series)",
        labels=[*labels, "layer"],
    )
    switches = CounterMetricFamily(
        "teleconsult_media_down_layer_switches",
        "Simulcast layer changes made for the subscriber",
        labels=labels,
    )
    shed = CounterMetricFamily(
        "teleconsult_media_down_shed_packets",
        "Packets of a higher layer not sent while the subscriber went down to a lower one",
        labels=labels,
    )
    for s in downs:
        values = [s["stream"], s["feed"], s["subscriber_id"]]
        rate = s["estimate"] if s["estimate"] is not None else s["remb"]
        if rate is not None:
            estimate.add_metric(values, rate)
        if s["loss"] is not None:
            loss.add_metric(values, s["loss"])
        if s["layer"] is not None:
            layer.add_metric([*values, s["layer"]], 1)
        switches.add_metric(values, s["switches"])
        shed.add_metric(values, s["shed"])
    yield from (estimate, loss, layer, switches, shed)


def _per_layer(ups: list[dict[str, Any]]) -> Iterator[Metric]:
    """Each simulcast layer a publisher sends: its rate, and whether it arrives."""
    rate = GaugeMetricFamily(
        "teleconsult_media_up_layer_bits_per_second",
        "Rate of a publisher's simulcast layer, over the last second (0 once it stopped)",
        labels=["stream", "feed", "layer"],
    )
    for s in ups:
        for x in s["layers"]:
            rate.add_metric([s["stream"], s["feed"], x["rid"]], x["bitrate"] if x["live"] else 0)
    yield rate


class MediaCollector(Collector):
    """Per-track and per-subscriber media series; labels are opaque ids, never names."""

    def __init__(self, stats: Callable[[], dict[str, Any]], delays: DelayHistogram) -> None:
        self.stats = stats
        self.delays = delays

    def collect(self) -> Iterator[Metric]:
        """Yield the series for the tracks live now."""
        stats = self.stats()
        yield GaugeMetricFamily(
            "teleconsult_media_up_tracks", "Published tracks", value=len(stats["up"])
        )
        yield GaugeMetricFamily(
            "teleconsult_media_down_tracks", "Forwarded subscriber tracks", value=len(stats["down"])
        )
        codecs = CounterMetricFamily(
            "teleconsult_media_codecs_created",
            "Decoders and encoders created (a relay creates none)",
            labels=["kind"],
        )
        for kind, n in CODECS_CREATED.items():
            codecs.add_metric([kind], n)
        yield codecs
        dropped = CounterMetricFamily(
            "teleconsult_media_dropped_datagrams",
            "Malformed or misdirected datagrams dropped on ICE ports, by kind",
            labels=["kind"],
        )
        for kind, n in sorted(stats.get("dropped", INGRESS.dropped).items()):
            dropped.add_metric([kind], n)
        yield dropped
        load = stats["load"]
        yield GaugeMetricFamily(
            "teleconsult_media_held_copies",
            "Video copies held back because the node cannot keep up (slowest paths first)",
            value=load["held"],
        )
        yield GaugeMetricFamily(
            "teleconsult_media_queue_wait_seconds",
            "The least wait of a packet read from a backed-up socket queue, last half second",
            value=load["queue_wait"],
        )
        up_labels = ["stream", "feed", "kind", "codec"]
        for key, doc in _UP:
            family = CounterMetricFamily(f"teleconsult_media_up_{key}", doc, labels=up_labels)
            for s in stats["up"]:
                family.add_metric([s["stream"], s["feed"], s["kind"], s["codec"]], s[key])
            yield family
        down_labels = ["stream", "feed", "subscriber"]
        for key, doc in _DOWN:
            family = CounterMetricFamily(f"teleconsult_media_down_{key}", doc, labels=down_labels)
            for s in stats["down"]:
                family.add_metric([s["stream"], s["feed"], s["subscriber_id"]], s[key])
            yield family
        rtt = GaugeMetricFamily(
            "teleconsult_media_down_rtt_seconds",
            "Round-trip time to the subscriber",
            labels=down_labels,
        )
        for s in stats["down"]:
            if s["rtt"] is not None:
                rtt.add_metric([s["stream"], s["feed"], s["subscriber_id"]], s["rtt"])
        yield rtt
        yield from _per_viewer(stats["down"], down_labels)
        yield from _per_layer(stats["up"])
        buckets = [
            (str(b) if b != float("inf") else "+Inf", n) for b, n in self.delays.cumulative()
        ]
        yield HistogramMetricFamily(
            "teleconsult_media_forward_delay_seconds",
            "From taking a publisher's packet off the transport to sending a subscriber's copy",
            buckets=buckets,
            sum_value=self.delays.total,
        )


class TurnCollector(Collector):
    """Allocations, relayed bytes, refused credentials and error responses of the TURN server."""

    def __init__(self, turn: Any) -> None:
        self.turn = turn

    def collect(self) -> Iterator[Metric]:
        """Yield the TURN series."""
        stats = self.turn.stats
        yield GaugeMetricFamily(
            "teleconsult_turn_allocations",
            "Live TURN allocations",
            value=len(self.turn.allocations),
        )
        yield CounterMetricFamily(
            "teleconsult_turn_relayed_bytes", "Bytes relayed both ways", value=stats.relayed_bytes
        )
        yield CounterMetricFamily(
            "teleconsult_turn_auth_failures",
            "Requests refused for their credentials",
            value=stats.auth_failures,
        )
        errors = CounterMetricFamily(
            "teleconsult_turn_errors", "Error responses, by code", labels=["code"]
        )
        for code, n in sorted(stats.errors.items()):
            errors.add_metric([str(code)], n)
        yield errors
