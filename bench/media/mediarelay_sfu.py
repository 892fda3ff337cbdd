"""The obvious alternative, for comparison: aiortc's MediaRelay, which decodes once and
re-encodes for every subscriber. It speaks to the same signaling as media.sfu.Sfu."""

from __future__ import annotations

import secrets
from typing import Any

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay

from teleconsult.media.aiortc_codecs import negotiated_codec


class MediaRelaySfu:
    """Publish and subscribe through decode + MediaRelay + per-subscriber encode."""

    def __init__(self) -> None:
        self.relay = MediaRelay()
        self.ups: dict[str, tuple[RTCPeerConnection, dict[str, Any], str]] = {}
        self.downs: dict[str, tuple[RTCPeerConnection, str]] = {}

    @staticmethod
    def new_id(prefix: str) -> str:
        return f"{prefix}-{secrets.token_hex(6)}"

    async def publish(
        self, stream_id: str, participant_id: str, offer: str, feed_ids: dict[str, str]
    ) -> tuple[str, dict[str, str]]:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        tracks = {str(t.mid): t.receiver.track for t in pc.getTransceivers()}
        codecs = {t.mid: negotiated_codec(t).name for t in pc.getTransceivers()}  # type: ignore[union-attr]
        await pc.setLocalDescription(await pc.createAnswer())
        self.ups[stream_id] = (pc, tracks, participant_id)
        return pc.localDescription.sdp, codecs  # type: ignore[return-value]

    async def subscribe(
        self,
        down_id: str,
        subscriber_id: str,
        stream_id: str,
        feeds: list[str] | None = None,
        voices: int | None = None,
    ) -> tuple[str, dict[str, str]]:
        _, tracks, _ = self.ups[stream_id]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pairs = []
        for mid, track in tracks.items():
            t = pc.addTransceiver(self.relay.subscribe(track), direction="sendonly")
            pairs.append((t, mid))
        await pc.setLocalDescription(await pc.createOffer())
        self.downs[down_id] = (pc, subscriber_id)
        return pc.localDescription.sdp, {str(t.mid): f"{stream_id}.{mid}" for t, mid in pairs}

    async def answer(self, down_id: str, subscriber_id: str, sdp: str) -> None:
        await self.downs[down_id][0].setRemoteDescription(RTCSessionDescription(sdp, "answer"))

    async def unsubscribe(self, down_id: str, reason: str) -> None:
        down = self.downs.pop(down_id, None)
        if down:
            await down[0].close()

    async def unpublish(self, stream_id: str, reason: str) -> None:
        up = self.ups.pop(stream_id, None)
        if up:
            await up[0].close()

    async def close_participant(self, participant_id: str, reason: str) -> None:
        for d, (_, sid) in list(self.downs.items()):
            if sid == participant_id:
                await self.unsubscribe(d, reason)
        for s, (_, _, pid) in list(self.ups.items()):
            if pid == participant_id:
                await self.unpublish(s, reason)

    async def lost(self, participant_id: str) -> None:
        await self.close_participant(participant_id, "failed")

    def mute(self, participant_id: str, kind: str, muted: bool) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {
            "up": [],
            "down": [],
            "load": {"held": 0, "queue_wait": 0.0, "queue_wait_worst": 0.0},
        }

    async def close(self) -> None:
        for d in list(self.downs):
            await self.unsubscribe(d, "shutdown")
        for s in list(self.ups):
            await self.unpublish(s, "shutdown")
