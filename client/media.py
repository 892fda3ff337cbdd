"""Publish and subscribe with aiortc over the signaling client: for tests, tools and load."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from teleconsult.media.aioice_adapter import guard_ice_ports, quick_consent

from .signaling import SignalingClient


def prefer_codec(transceiver: Any, kind: str, name: str) -> None:
    """Make a transceiver offer only codecs of this name (and RTX), e.g. "H264" or "H264/640c1f"."""
    name, _, profile = name.partition("/")
    caps = RTCRtpSender.getCapabilities(kind).codecs
    chosen = [
        c
        for c in caps
        if c.name.upper() == name.upper()
        and (not profile or str(c.parameters.get("profile-level-id", "")).lower() == profile)
    ]
    if not chosen:
        raise ValueError(f"no {kind} codec named {name}")
    rtx = [c for c in caps if c.name.lower() == "rtx"]
    transceiver.setCodecPreferences(chosen + rtx)


@dataclass
class Published:
    """A stream this client publishes."""

    id: str
    pc: RTCPeerConnection
    feeds: dict[str, str]


@dataclass
class Subscription:
    """A stream this client receives: its peer connection and a track per feed id."""

    id: str
    of: str
    pc: RTCPeerConnection
    tracks: dict[str, MediaStreamTrack] = field(default_factory=dict)


class MediaClient:
    """A participant's media: one peer connection per published stream and per subscription."""

    def __init__(
        self,
        signaling: SignalingClient,
        pc_factory: Callable[[], RTCPeerConnection] | None = None,
        use_turn: bool = False,
        relay_only: bool = False,
    ) -> None:
        self.signaling = signaling
        guard_ice_ports()
        quick_consent()
        # By default no ICE servers (aiortc would otherwise ask a public STUN server); with
        # use_turn, the TURN servers the server handed out on join, and relay_only forces them.
        self.use_turn = use_turn or relay_only
        self.relay_only = relay_only
        self.pc_factory = pc_factory or (lambda: RTCPeerConnection(self.configuration()))
        self.published: dict[str, Published] = {}
        self.subscriptions: dict[str, Subscription] = {}

    def configuration(self) -> RTCConfiguration:
        """Return the peer connection configuration: ICE servers and transport policy."""
        servers = []
        if self.use_turn:
            for s in self.signaling.welcome.get("ice_servers", []):
                servers.append(
                    RTCIceServer(
                        urls=s["urls"], username=s.get("username"), credential=s.get("credential")
                    )
                )
        policy = RTCIceTransportPolicy.RELAY if self.relay_only else RTCIceTransportPolicy.ALL
        return RTCConfiguration(iceServers=servers, iceTransportPolicy=policy)

    async def publish(
        self,
        feeds: list[tuple[MediaStreamTrack, str, str]],
        video_codec: str | None = None,
        replace: str | None = None,
    ) -> Published:
        """Publish tracks as one stream; each feed is (track, source, label).

        With `replace`, the tracks are new media for that stream of ours (its path was lost):
        the stream keeps its id and its viewers.
        """
        pc = RTCPeerConnection(self.configuration())
        transceivers = []
        for track, source, label in feeds:
            t = pc.addTransceiver(track, direction="sendonly")
            if video_codec and track.kind == "video":
                prefer_codec(t, "video", video_codec)
            transceivers.append((t, source, label))
        await pc.setLocalDescription(await pc.createOffer())
        assert pc.localDescription is not None
        specs = [
            {"mid": t.mid, "source": source, "label": label} for t, source, label in transceivers
        ]
        message: dict[str, Any] = {
            "type": "publish",
            "sdp": pc.localDescription.sdp,
            "feeds": specs,
        }
        if replace is not None:
            message["stream"] = replace
        try:
            reply = await self.signaling.request(message)
        except Exception:
            await pc.close()
            raise
        await pc.setRemoteDescription(RTCSessionDescription(reply["sdp"], "answer"))
        stream = Published(
            reply["stream"],
            pc,
            {str(t.mid): f"{reply['stream']}.{t.mid}" for t, _, _ in transceivers},
        )
        old = self.published.get(stream.id)
        self.published[stream.id] = stream
        if old is not None and old.pc is not pc:
            await old.pc.close()  # the connection whose path was lost
        return stream

    async def unpublish(self, stream_id: str) -> None:
        """Stop publishing a stream."""
        stream = self.published.pop(stream_id)
        await self.signaling.send({"type": "unpublish", "stream": stream_id})
        await stream.pc.close()

    async def subscribe(
        self, stream_id: str, feeds: list[str] | None = None, pc: RTCPeerConnection | None = None
    ) -> Subscription:
        """Receive a published stream; returns once the answer is sent."""
        message: dict[str, Any] = {"type": "subscribe", "stream": stream_id}
        if feeds is not None:
            message["feeds"] = feeds
        offer = await self.signaling.request(message)
        pc = pc or self.pc_factory()
        sub = Subscription(offer["stream"], stream_id, pc)
        by_mid = {f["mid"]: f["feed"] for f in offer["feeds"]}
        arrived = asyncio.Event()

        @pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            for t in pc.getTransceivers():
                if t.receiver.track is track and t.mid in by_mid:
                    sub.tracks[by_mid[t.mid]] = track
            if len(sub.tracks) == len(by_mid):
                arrived.set()

        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        assert pc.localDescription is not None
        await self.signaling.send(
            {"type": "answer", "stream": sub.id, "sdp": pc.localDescription.sdp}
        )
        await asyncio.wait_for(arrived.wait(), 5)
        self.subscriptions[sub.id] = sub
        return sub

    async def unsubscribe(self, sub_id: str) -> None:
        """Stop receiving a subscription."""
        sub = self.subscriptions.pop(sub_id)
        await self.signaling.send({"type": "unsubscribe", "stream": sub_id})
        await sub.pc.close()

    async def pause(self, sub_id: str, paused: bool, feeds: list[str] | None = None) -> None:
        """Stop (or start again) receiving feeds of a subscription that are not shown."""
        msg: dict[str, object] = {"type": "pause", "stream": sub_id, "paused": paused}
        if feeds is not None:
            msg["feeds"] = feeds
        await self.signaling.send(msg)

    async def close(self) -> None:
        """Close every peer connection."""
        for s in list(self.subscriptions.values()):
            await s.pc.close()
        for p in list(self.published.values()):
            await p.pc.close()
        self.subscriptions.clear()
        self.published.clear()
