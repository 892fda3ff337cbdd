"""The Grafana dashboard IT imports: well formed, and every metric its queries name is one a
node with rooms, media, errors and TURN actually exports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from teleconsult.client.media import MediaClient
from teleconsult.client.signaling import RequestFailed
from teleconsult.session.roles import Role

from .conftest import Server
from .media_util import PatternTrack, receive

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "deploy" / "grafana-dashboard.json"
# PromQL's own words, which look like metric names in a query's text.
PROMQL = {"rate", "sum", "min", "max", "by", "le", "histogram_quantile", "code", "type"}


def queried(dashboard: dict[str, object]) -> set[str]:
    """The metric names the dashboard's queries use."""
    names: set[str] = set()
    for panel in dashboard["panels"]:  # type: ignore[attr-defined]
        for target in panel["targets"]:
            expr = re.sub(r"\[\d+[smh]\]", "", target["expr"])  # ranges: [1m]
            names |= set(re.findall(r"[a-z_][a-z0-9_]*", expr)) - PROMQL
    return names


async def test_every_metric_on_the_dashboard_is_exported(server: Server) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and all(
        p["targets"] and p["gridPos"] for p in dashboard["panels"]
    )
    # A node at work: a stream watched, an error sent, messages counted.
    op = await server.join(role=Role.OPERATOR, identity="op")
    ex = await server.join(role=Role.EXPERT, identity="ex")
    publisher, watcher = MediaClient(op), MediaClient(ex)
    try:
        stream = await publisher.publish([(PatternTrack(), "probe", "")])
        sub = await watcher.subscribe(stream.id)
        await receive(sub.tracks[f"{stream.id}.0"], 10, timeout=15)
        with contextlib.suppress(RequestFailed):
            await ex.request({"type": "end_room"})  # an expert may not: an error counted
        # Some appear with the viewer's first receiver report (its loss): a few seconds.
        for _ in range(100):
            text = await asyncio.to_thread(
                lambda: urllib.request.urlopen(server.http + "/metrics", timeout=5).read().decode()
            )
            exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
            if queried(dashboard) <= exported:
                break
            await asyncio.sleep(0.2)
    finally:
        await watcher.close()
        await publisher.close()
    missing = sorted(queried(dashboard) - exported)
    assert not missing, f"the dashboard asks for what no node exports: {missing}"
    assert len(queried(dashboard)) >= 15
