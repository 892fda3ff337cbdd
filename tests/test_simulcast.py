"""Simulcast: layers offered as a browser does, each subscriber sent the layer its path carries,
switching at keyframes without its decoder noticing, the recorder on the best layer."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import av
from hypothesis import given, settings
from hypothesis import strategies as st

from teleconsult.client.media import MediaClient
from teleconsult.media.simulcast import answer_with_layers, offered_layers
from teleconsult.session.roles import Role

from .conftest import Server
from .media_util import receive
from .simulcast_util import LAYERS, SimulcastPublisher
from .test_recording import start_recording


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


CHROMIUM_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:0",
        "a=sendonly",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
        "a=mid:1",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        "a=sendonly",
        "a=rtpmap:96 VP8/90000",
        "a=rid:q send",
        "a=rid:h send",
        "a=rid:f send",
        "a=rid:x recv",
        "a=simulcast:send q;h,h2;~f;f",
        "",
    ]
)


def test_the_layers_a_browser_offers_and_the_answer_that_takes_them() -> None:
    # Alternatives after the first and paused rids are left out; a rid not declared as sent,
    # or named twice, is ignored.
    layers = offered_layers(CHROMIUM_OFFER)
    assert layers == {"1": ["q", "h", "f"]}
    answer = "v=0\r\ns=-\r\nm=audio 9 X 111\r\na=mid:0\r\nm=video 9 X 96\r\na=mid:1\r\n"
    lines = answer_with_layers(answer, layers).split("\r\n")
    video = lines[lines.index("m=video 9 X 96") :]
    assert video[2:6] == ["a=rid:q recv", "a=rid:h recv", "a=rid:f recv", "a=simulcast:recv q;h;f"]
    assert "a=rid" not in "\r\n".join(lines[: lines.index("m=video 9 X 96")])
    assert offered_layers(CHROMIUM_OFFER.replace("a=simulcast:send q;h,h2;~f;f", "")) == {}


@asynccontextmanager
async def publishing(server: Server) -> AsyncIterator[tuple[SimulcastPublisher, str]]:
    publisher = SimulcastPublisher(await server.join(role=Role.OPERATOR, identity="op"))
    try:
        yield publisher, await publisher.publish()
    finally:
        await publisher.close()


async def test_a_subscriber_follows_its_path_across_layers_without_a_decoder_reset(
    server: Server,
) -> None:
    async with publishing(server) as (publisher, stream_id):
        # The answer says which layers the SFU takes.
        assert "a=simulcast:recv lo;mid;hi" in publisher.answer
        ex = MediaClient(await server.join(role=Role.EXPERT, identity="ex"))
        try:
            sub = await ex.subscribe(stream_id)
            track = sub.tracks[f"{stream_id}.0"]
            up = server.hub.sfu.ups[stream_id].tracks["0"]
            (down,) = up.downs
            # The test says what the subscriber's path carries (aiortc's REMB would say it
            # otherwise): first, room for anything.
            down.sender.on_remb = None
            down.remb = None
            frames = await receive(track, 90, timeout=10)
            assert (frames[-1].width, frames[-1].height) == LAYERS["hi"], [
                (x.name, x.rate) for x in up.layers.values()
            ] + [down.layer, down.target, down.remb]
            assert set(up.layers) == {"lo", "mid", "hi"}
            # Its path narrows (its REMB says 120 kbit/s, under the middle layer): down to the
            # layer that fits, from that layer's keyframe; the picture keeps coming, smaller.
            down.remb = 120_000
            sizes = [(f.width, f.height) for f in await receive(track, 45, timeout=10)]
            assert sizes[-1] == LAYERS["lo"], sizes
            # Its report does not lower what the publisher is asked for: the others (and the
            # recorder) keep the top layer.
            down._on_remb(120_000)
            # (Without simulcast, its figure, raised to the floor, would be asked for.)
            assert up.rates.target(time.time(), None) == up.rates.floor
            assert up.publisher_target(time.time()) == up.receiver.upstream_bitrate
            # The operator sees which layer each viewer gets, and each layer's rate.
            metrics = await asyncio.to_thread(fetch, server.http + "/metrics")
            subscriber = down.subscriber_id
            sent = [
                line
                for line in metrics.splitlines()
                if line.startswith("teleconsult_media_down_layer{") and subscriber in line
            ]
            assert len(sent) == 1 and 'layer="lo"' in sent[0] and sent[0].endswith(" 1.0"), sent
            shed = [
                line
                for line in metrics.splitlines()
                if line.startswith("teleconsult_media_down_shed_packets_total{")
                and subscriber in line
            ]
            assert len(shed) == 1 and float(shed[0].split()[-1]) == down.shed, shed
            rates = dict(
                re.findall(
                    r'teleconsult_media_up_layer_bits_per_second{[^}]*layer="(\w+)"[^}]*} (\S+)',
                    metrics,
                )
            )
            assert set(rates) == set(LAYERS) and float(rates["hi"]) > float(rates["lo"]) > 0, rates
            # It widens again: up, layer by layer, at keyframes.
            down.remb = 100_000_000
            sizes = [(f.width, f.height) for f in await receive(track, 60, timeout=10)]
            assert sizes[-1] == LAYERS["hi"], sizes
            assert down.switches >= 3
            # One stream to the subscriber throughout: one SSRC, its numbering unbroken.
            inbound = [r for r in (await sub.pc.getStats()).values() if r.type == "inbound-rtp"]
            assert len(inbound) == 1 and inbound[0].packetsLost <= 5, inbound
            # The recorder would take the best layer.
            assert up.recorded == "hi"
        finally:
            await ex.close()


async def test_the_recording_has_the_top_layer_while_a_viewer_gets_the_lowest(
    server: Server,
) -> None:
    mod = await server.join(role=Role.MODERATOR, identity="mod")
    async with publishing(server) as (publisher, stream_id):
        ex = MediaClient(await server.join(role=Role.EXPERT, identity="ex"))
        try:
            sub = await ex.subscribe(stream_id)
            track = sub.tracks[f"{stream_id}.0"]
            (down,) = server.hub.sfu.ups[stream_id].tracks["0"].downs
            down.sender.on_remb = None
            down.remb = 120_000  # a narrow path: the lowest layer only
            sizes = [(f.width, f.height) for f in await receive(track, 45, timeout=10)]
            assert sizes[-1] == LAYERS["lo"], sizes
            await start_recording(mod, publisher.signaling)
            # Frames decoded by the viewer meanwhile: it stays on its layer.
            during = [(f.width, f.height) for f in await receive(track, 90, timeout=10)]
            await mod.send({"type": "record", "action": "stop"})
            await mod.wait_for("recording", where=lambda e: e["active"] is False)
        finally:
            await ex.close()
    assert set(during) == {LAYERS["lo"]}, during
    (room,) = (server.hub.settings.data_dir / "recordings").iterdir()
    (folder,) = room.iterdir()
    (video,) = json.loads((folder / "manifest.json").read_text())["tracks"]
    assert (video["width"], video["height"]) == LAYERS["hi"]
    # Every recorded frame decodes, at the top layer's size, whatever the viewer was sent.
    with av.open(str(folder / video["file"])) as container:
        decoded = [(f.width, f.height) for f in container.decode(video=0)]
    assert len(decoded) >= 75 and set(decoded) == {LAYERS["hi"]}, decoded[:5]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "m=video 9 X 96",
                "m=audio 9 X 111",
                "a=mid:1",
                "a=mid:",
                "a=rid:q send",
                "a=rid:h send",
                "a=rid:f recv",
                "a=rid: send",
                "a=simulcast:send q;h;f",
                "a=simulcast:send ~q,h;;",
                "a=simulcast:send",
                "a=simulcast:recv q",
                "a=rid:q;h send",
            ]
        )
        | st.text(max_size=40),
        max_size=30,
    )
)
def test_any_offer_gives_layers_that_were_declared_and_an_answer_that_names_them(
    lines: list[str],
) -> None:
    # Offers come from publishers: nothing in them raises, and only rids declared as sent
    # (at most four to a section) are taken.
    offer = "\r\n".join(lines)
    layers = offered_layers(offer)
    for rids in layers.values():
        assert 2 <= len(rids) <= 4 and len(set(rids)) == len(rids)
        declared = [line[6:].split() for line in offer.splitlines() if line.startswith("a=rid:")]
        assert set(rids) <= {d[0] for d in declared if len(d) >= 2 and d[1] == "send"}
    answer = answer_with_layers(offer, layers)
    for rids in layers.values():
        assert "a=simulcast:recv " + ";".join(rids) in answer
