"""A benchmark publisher: replays a pre-encoded clip (or encodes live) and logs frame send times.

Usage: python -m bench.media.publisher URL ROOM TOKEN LOG --size WxH --bitrate B [--live] [--audio]
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from teleconsult.client.media import MediaClient, prefer_codec
from teleconsult.client.replay import ReplayTrack
from teleconsult.client.signaling import SignalingClient
from teleconsult.client.tools import publish
from teleconsult.media.aioice_adapter import use_host_addresses
from teleconsult.media.synthetic import UltrasoundTrack

from ..janus.client import Janus
from .clip import opus_clip, vp8_clip


def put_sdp(path: Path, sdp: str) -> None:
    """Write an SDP for the other side of a direct run, whole or not at all."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(sdp)
    tmp.rename(path)


async def get_sdp(path: Path) -> str:
    """Wait (at most 30 s) for the other side's SDP in a direct run."""
    for _ in range(600):
        try:
            return await asyncio.to_thread(path.read_text)
        except FileNotFoundError:
            await asyncio.sleep(0.05)
    raise TimeoutError(f"no {path}")


async def offer_tracks(tracks: list[tuple[MediaStreamTrack, str, str]]) -> RTCPeerConnection:
    """A peer connection sending the tracks (VP8 first), its offer made."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for track, _, _ in tracks:
        t = pc.addTransceiver(track, direction="sendonly")
        if track.kind == "video":
            prefer_codec(t, "video", "VP8")
    await pc.setLocalDescription(await pc.createOffer())
    return pc


async def publish_direct(
    folder: Path, tracks: list[tuple[MediaStreamTrack, str, str]], duration: float
) -> None:
    """Send the tracks straight to one viewer, no server between: the delay baseline."""
    pc = await offer_tracks(tracks)
    assert pc.localDescription is not None
    print(json.dumps({"stream": "direct"}), flush=True)
    put_sdp(folder / "offer.sdp", pc.localDescription.sdp)
    answer = await get_sdp(folder / "answer.sdp")
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    await asyncio.sleep(duration)
    await pc.close()


async def publish_to_janus(
    url: str, tracks: list[tuple[MediaStreamTrack, str, str]], duration: float
) -> None:
    """Publish the same tracks into Janus's VideoRoom, for the side-by-side runs."""
    janus = Janus(url)
    await janus.connect()
    pc = await offer_tracks(tracks)
    assert pc.localDescription is not None
    feed, answer = await janus.publish(pc.localDescription.sdp)
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    print(json.dumps({"stream": str(feed)}), flush=True)
    await asyncio.sleep(duration)
    await pc.close()
    await janus.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("room")
    ap.add_argument("token")
    ap.add_argument("log")
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--fps", type=int, default=30)
    ap.add_argument("--bitrate", type=int, default=1_500_000)
    ap.add_argument("--live", action="store_true", help="encode the synthetic source live")
    ap.add_argument("--audio", action="store_true")
    ap.add_argument("--source", default="probe", help="probe needs consent to be recorded")
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--heal", action="store_true", help="reconnect and publish again when lost")
    ap.add_argument("--janus", action="store_true", help="URL is Janus's WebSocket API")
    ap.add_argument("--direct", action="store_true", help="URL is a folder to trade SDP in")
    args = ap.parse_args()
    use_host_addresses(["127.0.0.1"])
    w, h = (int(x) for x in args.size.split("x"))
    sends: list[tuple[str, float]] = []
    tracks: list[tuple[MediaStreamTrack, str, str]] = []
    if args.live:
        tracks.append((UltrasoundTrack(w, h, args.fps), args.source, "live"))
    else:
        clip = vp8_clip(w, h, args.fps, args.bitrate, 10, 2 * args.fps)
        tracks.append((ReplayTrack("video", clip, args.fps, 90000, sends), args.source, "replay"))
    if args.audio:
        tracks.append((ReplayTrack("audio", opus_clip(5), 50, 48000, None), "microphone", ""))
    if args.heal:
        # As a station does: a dropped connection or media path is made again, under the
        # same stream id (the tool prints {"published": id} each time it publishes).
        def open_tracks() -> list[MediaStreamTrack]:
            return [t.again() if isinstance(t, ReplayTrack) else t for t, _, _ in tracks]

        await publish(
            lambda: SignalingClient(args.url, args.token, args.room),
            open_tracks,
            args.source,
            "replay",
            "VP8",
            args.duration,
        )
        await asyncio.to_thread(Path(args.log).write_text, json.dumps(sends))
        return
    if args.janus or args.direct:
        if args.direct:
            await publish_direct(Path(args.url), tracks, args.duration)
        else:
            await publish_to_janus(args.url, tracks, args.duration)
        await asyncio.to_thread(Path(args.log).write_text, json.dumps(sends))
        return
    client = SignalingClient(args.url, args.token, args.room)
    await client.connect()
    media = MediaClient(client)
    stream = await media.publish(tracks, video_codec="VP8")
    print(json.dumps({"stream": stream.id}), flush=True)
    await asyncio.sleep(args.duration)
    await asyncio.to_thread(Path(args.log).write_text, json.dumps(sends))
    await media.close()
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
