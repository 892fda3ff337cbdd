"""The aiortc adapter on its own: where an aiortc upgrade would break, these fail first."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import aioice.ice
import pytest
from aiortc import RTCConfiguration, RTCSessionDescription
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from teleconsult.media.aioice_adapter import DRAIN, guard_ice_ports, use_host_addresses
from teleconsult.media.aiortc_adapter import (
    ForwardingReceiver,
    ForwardingSender,
    RelayPeerConnection,
    packets_taken_now,
)
from teleconsult.media.aiortc_codecs import codec_preferences, same_codec
from teleconsult.media.sfu import offered_media, rewrite_host_candidates


def h264(profile: str, mode: str = "1") -> RTCRtpCodecParameters:
    return RTCRtpCodecParameters(
        mimeType="video/H264",
        clockRate=90000,
        payloadType=102,
        parameters={"profile-level-id": profile, "packetization-mode": mode},
    )


def test_same_codec_compares_h264_profiles_not_levels() -> None:
    assert same_codec(h264("42e01f"), h264("42e034"))
    assert not same_codec(h264("42e01f"), h264("640c1f"))
    assert not same_codec(h264("42e01f", "1"), h264("42e01f", "0"))
    vp8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    assert same_codec(vp8, vp8) and not same_codec(vp8, h264("42e01f"))


def test_codec_preferences_pick_the_publishers_profile() -> None:
    from teleconsult.media.aiortc_codecs import add_relay_codecs

    add_relay_codecs()
    prefs = codec_preferences("video", h264("640c1f"))
    assert prefs[0].parameters["profile-level-id"] == "640c1f"
    assert prefs[1].mimeType == "video/rtx"
    with pytest.raises(ValueError):
        codec_preferences("video", RTCRtpCodecParameters(mimeType="video/AV2", clockRate=90000))


def test_candidate_rewrite_for_a_1to1_nat() -> None:
    sdp = (
        "v=0\r\nc=IN IP4 10.0.0.5\r\n"
        "a=candidate:1 1 udp 2130706431 10.0.0.5 40001 typ host\r\n"
        "a=candidate:2 1 udp 1694498815 198.51.100.9 40001 typ srflx raddr 10.0.0.5 rport 1\r\n"
    )
    out = rewrite_host_candidates(sdp, "203.0.113.7")
    assert "a=candidate:1 1 udp 2130706431 203.0.113.7 40001 typ host" in out
    assert "198.51.100.9 40001 typ srflx" in out  # only host candidates are rewritten
    assert "c=IN IP4 203.0.113.7" in out


def test_offered_media_refuses_unusable_sdp() -> None:
    from teleconsult.media.sfu import MediaError

    for bad in ("", "garbage", "v=0\r\n"):
        with pytest.raises(MediaError) as e:
            offered_media(bad)
        assert e.value.code == "bad_sdp"


@pytest.mark.parametrize("path", ["socket", "awaited"])
async def test_relay_pair_forwards_packets_and_repairs_a_loss(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "socket": copies go straight to the ICE socket. "awaited": aioice's send is replaced (as
    # a TURN allocation's is another), so copies take aioice's own awaited way, in order.
    through_aioice: list[bytes] = []
    if path == "awaited":
        original = aioice.ice.StunProtocol.send_data

        async def send_data(self: Any, data: bytes, addr: tuple[str, int]) -> None:
            through_aioice.append(data)
            await original(self, data, addr)

        monkeypatch.setattr(aioice.ice.StunProtocol, "send_data", send_data)
    use_host_addresses(["127.0.0.1"])
    a = RelayPeerConnection(RTCConfiguration(iceServers=[]))
    b = RelayPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        t = a.addTransceiver("video", direction="sendonly")
        assert isinstance(t.sender, ForwardingSender)
        assert isinstance(t.receiver, ForwardingReceiver)
        await a.setLocalDescription(await a.createOffer())
        assert a.localDescription is not None
        await b.setRemoteDescription(RTCSessionDescription(a.localDescription.sdp, "offer"))
        await b.setLocalDescription(await b.createAnswer())
        assert b.localDescription is not None
        await a.setRemoteDescription(RTCSessionDescription(b.localDescription.sdp, "answer"))
        (rt,) = b.getTransceivers()
        receiver = rt.receiver
        assert isinstance(receiver, ForwardingReceiver)
        got: list[tuple[int, bytes]] = []

        def on_packet(packet: RtpPacket, codec: RTCRtpCodecParameters, layer: str) -> None:
            got.append((packet.sequence_number, packet.payload))

        receiver.on_packet = on_packet
        sender = t.sender
        await asyncio.wait_for(sender.ready.wait(), 10)
        assert sender.codec is not None and sender.codec.name == "VP8"
        # No decoder thread was started for the forwarding receiver.
        assert not [th for th in threading.enumerate() if th.name.endswith("-decoder")]

        send = sender._send
        lose = {1003}

        def lossy(data: bytes) -> bool:
            seq = int.from_bytes(data[2:4], "big")
            if seq in lose:
                lose.discard(seq)
                return True  # gone on the way
            return send(data)

        sender._send = lossy  # type: ignore[method-assign]
        source = RtpPacket(payload_type=96, payload=b"")
        for i in range(10):
            source.payload = bytes([0x10, 0x00]) + bytes([i]) * 100  # VP8 descriptor + data
            source.marker = 1
            sender.forward(source, 1000 + i, 90000 + 3000 * i, time.time())
            await asyncio.sleep(0.02)
        for _ in range(100):
            if len(got) == 10:
                break
            await asyncio.sleep(0.05)
        # Every payload arrived byte for byte; 1003 came late, through NACK and RTX.
        assert sorted(got) == [
            (1000 + i, bytes([0x10, 0x00]) + bytes([i]) * 100) for i in range(10)
        ]
        assert [s for s, _ in got].index(1003) > [s for s, _ in got].index(1004)
        assert sender.retransmits == 1 and receiver.nacks_sent >= 1
        assert sender.packets_sent == 10
        # The subscriber's side took them from its socket in one call each, not via a queue.
        # (all but any that came while an RTCP packet waited in the queue: that order is kept)
        assert packets_taken_now(receiver.transport) >= 8
        if path == "awaited":
            rtp = [d for d in through_aioice if 128 <= d[0] <= 191 and not 200 <= d[1] <= 206]
            assert len(rtp) >= 10, len(rtp)
    finally:
        await a.close()
        await b.close()
        use_host_addresses(None)


def test_receiver_statistics_across_the_rtp_clock_wrap(monkeypatch: pytest.MonkeyPatch) -> None:

    from teleconsult.media.aiortc_adapter import WrapSafeStatistics

    now = [1000.0]
    monkeypatch.setattr("aiortc.rtcrtpreceiver.time.time", lambda: now[0])
    stats = WrapSafeStatistics(90000)
    seq, ts = 65000, (1 << 32) - 3000 * 50
    worst = 0
    for _ in range(2000):  # 66 s at 30 packets/s, on time: both counters wrap
        stats.add(RtpPacket(payload_type=96, sequence_number=seq, timestamp=ts))
        worst = max(worst, stats.jitter)
        seq, ts = (seq + 1) % 65536, (ts + 3000) % (1 << 32)
        now[0] += 1 / 30
    assert worst < 90  # under a millisecond; the raw difference reported 2**28 (49 minutes)
    assert stats.packets_expected == 2000 and stats.packets_lost == 0


async def test_a_burst_on_an_ice_port_is_read_in_one_pass() -> None:
    # A frame arrives as a burst of packets: they are read together, each handed on once and
    # in order, instead of one per pass of the event loop.
    guard_ice_ports()
    got: list[bytes] = []

    class Receiver:
        _queue: asyncio.Queue[object] = asyncio.Queue()

        def data_received(self, data: bytes, component: int) -> None:
            got.append(data)

    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: aioice.ice.StunProtocol(Receiver()),  # type: ignore[arg-type]
        local_addr=("127.0.0.1", 0),
    )
    protocol.local_candidate = type("C", (), {"component": 1})()
    calls = 0
    wrapped = protocol.datagram_received

    def counted(data: bytes, addr: tuple[str, int]) -> None:
        nonlocal calls
        calls += 1
        wrapped(data, addr)

    protocol.datagram_received = counted  # type: ignore[method-assign,assignment]
    burst = [bytes([20 + i % 40]) + i.to_bytes(2, "big") * 10 for i in range(100)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        for d in burst:
            out.sendto(d, transport.get_extra_info("sockname"))
        for _ in range(50):
            if len(got) == len(burst):
                break
            await asyncio.sleep(0.01)
    transport.close()
    assert got == burst
    assert calls <= len(burst) // DRAIN + 2, calls
