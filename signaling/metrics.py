"""Prometheus metrics of one server, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest


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

    def render(self) -> bytes:
        """Return the exposition text."""
        return generate_latest(self.registry)
