"""Simulcast: layers offered as a browser does, each subscriber sent the layer its path carries,
switching at keyframes without its decoder noticing, the recorder on the best layer."""

from __future__ import annotations

import asyncio
import fractions
import re
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket
from hypothesis import given, settings
from hypothesis import strategies as st

from teleconsult.client.media import MediaClient
from teleconsult.client.signaling import SignalingClient
from teleconsult.media.simulcast import RID_URI, answer_with_layers, offered_layers
from teleconsult.media.synthetic import UltrasoundTrack
from teleconsult.session.roles import Role

from .conftest import Server
from .media_util import receive


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())

LAYERS = {"lo": (160, 120), "mid": (320, 240), "hi": (640, 480)}
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
FPS = 30

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


def vp8_frames(width: int, height: int, count: int, gop: int) -> list[tuple[bytes, bool]]:
    """Encode `count` frames of the synthetic ultrasound at one size: (frame, keyframe)."""
    source = UltrasoundTrack(width, height, FPS)
    ctx = av.CodecContext.create("libvpx", "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = fractions.Fraction(1, FPS)
    ctx.bit_rate = width * height * 3
    ctx.gop_size = gop
    ctx.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    out = []
    for n in range(count):
        frame = av.VideoFrame.from_ndarray(source.picture(n, 0), format="gray").reformat(
            format="yuv420p"
        )
        frame.pts = n
        for packet in ctx.encode(frame):
            out.append((bytes(packet), bool(packet.is_keyframe)))
    return out


class SimulcastPublisher:
    """A publisher sending three layers on one video section, as a browser does: one SSRC per
    layer, each packet named by its rid in a header extension."""

    def __init__(self, signaling: SignalingClient) -> None:
        self.signaling = signaling
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.clips = {rid: vp8_frames(w, h, 60, 15) for rid, (w, h) in LAYERS.items()}
        self.task: asyncio.Task[None] | None = None

    async def publish(self) -> str:
        self.pc.addTransceiver("video", direction="sendonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        assert self.pc.localDescription is not None
        offer = self.pc.localDescription.sdp
        # The rid extension, unless aiortc offers it already (as it does in a process where
        # the SFU added it to aiortc's list).
        named = re.search(rf"^a=extmap:(\d+) {re.escape(RID_URI)}", offer, re.M)
        self.rid_id = int(named.group(1)) if named else 12
        extmap = "" if named else f"a=extmap:12 {RID_URI}\r\n"
        offer = offer.replace(
            "a=sendonly\r\n",
            "a=sendonly\r\n"
            + extmap
            + "".join(f"a=rid:{rid} send\r\n" for rid in LAYERS)
            + "a=simulcast:send "
            + ";".join(LAYERS)
            + "\r\n",
        )
        reply = await self.signaling.request(
            {"type": "publish", "sdp": offer, "feeds": [{"mid": "0", "source": "probe"}]}
        )
        self.answer = reply["sdp"]
        await self.pc.setRemoteDescription(RTCSessionDescription(reply["sdp"], "answer"))
        self.task = asyncio.create_task(self._send())
        return str(reply["stream"])

    async def _send(self) -> None:
        transceiver = self.pc.getTransceivers()[0]
        transport = transceiver.sender.transport
        for _ in range(200):
            if transport.state == "connected":
                break
            await asyncio.sleep(0.05)
        ids = HeaderExtensionsMap()
        ids.configure(
            RTCRtpParameters(
                headerExtensions=[
                    RTCRtpHeaderExtensionParameters(id=1, uri=MID_URI),
                    RTCRtpHeaderExtensionParameters(id=self.rid_id, uri=RID_URI),
                ]
            )
        )
        found = re.search(r"^m=video \d+ \S+ (\d+)", self.answer, re.M)
        assert found is not None
        pt = int(found.group(1))
        seqs = {rid: 1000 * (i + 1) for i, rid in enumerate(LAYERS)}
        ssrcs = {rid: 0x1000 + i for i, rid in enumerate(LAYERS)}
        start = time.monotonic()
        n = 0
        while True:
            for rid, clip in self.clips.items():
                data, _ = clip[n % len(clip)]
                chunks = [data[i : i + 1000] for i in range(0, len(data), 1000)]
                for k, chunk in enumerate(chunks):
                    packet = RtpPacket(
                        payload_type=pt,
                        marker=int(k == len(chunks) - 1),
                        sequence_number=seqs[rid] & 0xFFFF,
                        timestamp=(n * 3000) & 0xFFFFFFFF,
                        ssrc=ssrcs[rid],
                        payload=bytes([0x10 if k == 0 else 0x00]) + chunk,
                    )
                    packet.extensions.mid = "0"
                    packet.extensions.rtp_stream_id = rid
                    seqs[rid] += 1
                    with suppress(ConnectionError):
                        await transport._send_rtp(packet.serialize(ids))
            n += 1
            await asyncio.sleep(max(0.0, start + n / FPS - time.monotonic()))

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with suppress(asyncio.CancelledError):
                await self.task
        await self.pc.close()


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
            # Its path narrows (its REMB says 200 kbit/s): down to the layer that fits, from
            # that layer's keyframe; the picture keeps coming, smaller.
            down.remb = 200_000
            sizes = [(f.width, f.height) for f in await receive(track, 45, timeout=10)]
            assert sizes[-1] == LAYERS["lo"], sizes
            # Its report does not lower what the publisher is asked for: the others (and the
            # recorder) keep the top layer.
            down._on_remb(200_000)
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
