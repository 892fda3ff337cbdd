"""The built-in TURN server with real TURN clients (aioice) over UDP and TCP, on loopback."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import AsyncIterator

import aioice
import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint

from teleconsult.turn import credentials
from teleconsult.turn.policy import PeerPolicy
from teleconsult.turn.server import TurnServer

SECRET = "turn-secret-for-tests-0123456789"


@pytest.fixture
async def turn() -> AsyncIterator[TurnServer]:
    # Tests run on loopback, which the relay refuses by default: allow it explicitly.
    server = TurnServer(SECRET, host="127.0.0.1", port=0, policy=PeerPolicy(allow=["127.0.0.0/8"]))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class Echo(asyncio.DatagramProtocol):
    """A peer on the far side of the relay that sends back what it gets."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(b"echo:" + data, addr)  # type: ignore[attr-defined]


class Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.queue.put_nowait(data)


def test_credentials_match_the_rest_api_scheme() -> None:
    user, password = credentials.mint(SECRET, "dr-li", 3600, now=1000.0)
    assert user == "4600:dr-li"
    assert credentials.check(SECRET, user, now=2000.0) == password
    assert credentials.check(SECRET, user, now=5000.0) is None  # expired
    assert credentials.check(SECRET, "nonsense", now=0) is None
    # Digits that are not ASCII, and more than int() reads: refused, not raised.
    assert credentials.check(SECRET, "²:dr-li", now=0) is None
    assert credentials.check(SECRET, "9" * 5000 + ":dr-li", now=0) is None


def test_peer_policy() -> None:
    p = PeerPolicy(own=["203.0.113.5"])
    for denied in (
        "127.0.0.1",
        "10.1.2.3",
        "192.168.1.1",
        "169.254.1.1",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "203.0.113.5",
        "0.0.0.0",
        "not-an-ip",
        # Every other special-purpose range of RFC 6890 too.
        "100.64.0.1",  # carrier-grade NAT
        "100.127.255.254",
        "198.18.0.1",  # benchmarking
        "192.0.2.1",  # documentation
        "192.0.0.8",  # IETF protocol assignments
        "240.0.0.1",  # reserved
        "255.255.255.255",
        "::ffff:127.0.0.1",  # loopback, IPv4-mapped
        "fc00::1",  # unique local
        "ff02::1",  # multicast
        "2001:db8::1",  # documentation
    ):
        assert not p.permits(denied), denied
    for public in ("8.8.4.4", "1.1.1.1", "2001:4860:4860::8888"):  # checked, never contacted
        assert p.permits(public), public
    assert PeerPolicy(allow=["127.0.0.0/8"]).permits("127.0.0.1")
    assert PeerPolicy(allow=["100.64.0.0/10"]).permits("100.64.0.1")  # --turn-allow


def test_the_relay_reaches_the_nodes_own_media_ports_only() -> None:
    # A hospital node on a private address: its media is what the built-in relay is for.
    p = PeerPolicy(own=["10.20.30.40"], media=lambda port: 40000 <= port <= 40001)
    assert p.permits("10.20.30.40")
    assert p.permits_port("10.20.30.40", 40000) and p.permits_port("10.20.30.40", 40001)
    for other in (22, 53, 161, 3478, 8080, 39999, 40002):  # its other services, the relay
        assert not p.permits_port("10.20.30.40", other), other
    assert not p.permits("10.20.30.41")  # the rest of the hospital network stays out
    # Allow-listed or not, the node's own address is held to its media ports.
    q = PeerPolicy(allow=["10.0.0.0/8"], own=["10.20.30.40"], media=lambda port: port == 40000)
    assert q.permits("10.1.1.1") and q.permits_port("10.1.1.1", 22)
    assert not q.permits_port("10.20.30.40", 22) and q.permits_port("10.20.30.40", 40000)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_relay_to_a_peer_and_back(turn: TurnServer, transport: str) -> None:
    loop = asyncio.get_running_loop()
    peer, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    peer_addr = peer.get_extra_info("sockname")
    user, password = credentials.mint(SECRET, "dr-li", 600, time.time())
    server_addr = turn.udp_address if transport == "udp" else turn.tcp_address
    relay, inbox = await create_turn_endpoint(
        Inbox, server_addr, user, password, transport=transport
    )
    try:
        for i in range(20):
            relay.sendto(f"ping {i}".encode(), peer_addr)
        got = {await asyncio.wait_for(inbox.queue.get(), 5) for _ in range(20)}
        assert got == {f"echo:ping {i}".encode() for i in range(20)}
        assert turn.stats.allocations == 1 and turn.stats.relayed_bytes > 0
    finally:
        relay.close()
        peer.close()


async def test_wrong_and_expired_credentials(turn: TurnServer) -> None:
    for user, password in (
        ("9999999999:x", "wrong"),
        credentials.mint(SECRET, "late", -10, time.time()),
    ):
        with pytest.raises(Exception):  # noqa: B017 - aioice raises its own transaction error
            await asyncio.wait_for(
                create_turn_endpoint(Inbox, turn.udp_address, user, password), 10
            )
    assert turn.stats.auth_failures >= 2
    assert not turn.allocations


async def test_internal_peers_are_refused_by_default() -> None:
    server = TurnServer(SECRET, host="127.0.0.1", port=0)
    await server.start()
    try:
        user, password = credentials.mint(SECRET, "x", 600, time.time())
        relay, _ = await create_turn_endpoint(Inbox, server.udp_address, user, password)
        # Loopback, private, carrier-grade NAT, link-local, multicast: each ChannelBind gets
        # 403 and nothing is relayed (the addresses are never contacted).
        peers = ["127.0.0.1", "10.0.0.1", "100.64.0.1", "169.254.0.1", "224.0.0.1"]
        for peer in peers:
            relay.sendto(b"hello", (peer, 9))
        for _ in range(50):
            if server.stats.errors[403] >= len(peers):
                break
            await asyncio.sleep(0.05)
        assert server.stats.errors[403] == len(peers) and server.stats.relayed_bytes == 0
        relay.close()
    finally:
        await server.stop()


async def test_the_relay_reaches_its_nodes_media_and_never_its_own_ports() -> None:
    # The node on loopback; its media anywhere in the ephemeral range, as without --media-port.
    policy = PeerPolicy(own=["127.0.0.1"], media=lambda port: port >= 1024)
    server = TurnServer(SECRET, host="127.0.0.1", port=0, policy=policy)
    await server.start()
    loop = asyncio.get_running_loop()
    media, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    try:
        user, password = credentials.mint(SECRET, "x", 600, time.time())
        relay, inbox = await create_turn_endpoint(Inbox, server.udp_address, user, password)
        other, _ = await create_turn_endpoint(Inbox, server.udp_address, user, password)
        # The node's media answers through the relay.
        relay.sendto(b"probe", media.get_extra_info("sockname"))
        assert await asyncio.wait_for(inbox.queue.get(), 5) == b"echo:probe"
        # The relay's own listening port and another allocation's relay: a loop, refused.
        loops = [server.udp_address, other.get_extra_info("sockname")]
        assert loops[1][1] in server.relay_ports
        before = server.stats.errors[403]
        for peer in loops:
            relay.sendto(b"loop", ("127.0.0.1", peer[1]))
        for _ in range(50):
            if server.stats.errors[403] >= before + len(loops):
                break
            await asyncio.sleep(0.05)
        assert server.stats.errors[403] == before + len(loops)
        relay.close()
        other.close()
    finally:
        media.close()
        await server.stop()


@pytest.mark.parametrize(
    "flags", [["-y"], ["-y", "-s"], ["-y", "-t"]], ids=["channels", "send", "tcp"]
)
async def test_coturns_own_client_allocates_and_relays(turn: TurnServer, flags: list[str]) -> None:
    """coturn's `turnutils_uclient`, REST credentials from the shared secret: two clients send
    to each other's relayed address (over channels, Send indications, or TCP to the server)."""
    from .need import executable

    proc = await asyncio.create_subprocess_exec(
        executable("turnutils_uclient"),
        *flags,
        *("-m", "2", "-n", "20", "-l", "100", "-W", SECRET, "-u", "uclient"),
        *("-p", str(turn.udp_address[1]), "127.0.0.1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out = (await asyncio.wait_for(proc.communicate(), 60))[0].decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, out[-2000:]
    assert "tot_send_msgs=80, tot_recv_msgs=80" in out, out[-2000:]
    assert "Total lost packets 0 " in out
    assert turn.stats.relayed_bytes >= 80 * 100
    # An IPv6 relay, which this server does not serve, is refused as RFC 8656 says.
    six = await asyncio.create_subprocess_exec(
        executable("turnutils_uclient"),
        *("-y", "-x", "-n", "1", "-W", SECRET, "-u", "uclient"),
        *("-p", str(turn.udp_address[1]), "127.0.0.1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out = (await asyncio.wait_for(six.communicate(), 60))[0].decode()
    assert "error 440" in out and turn.stats.errors[440] >= 1


async def test_malformed_messages_are_dropped_and_the_server_goes_on(turn: TurnServer) -> None:
    loop = asyncio.get_running_loop()
    sock, inbox = await loop.create_datagram_endpoint(Inbox, remote_addr=turn.udp_address)
    junk = [
        b"",
        b"\x00",
        b"\x00\x01\x00\x00",
        bytes(19),
        b"\x40\x00\xff\xff",
        b"\x00\x03\x00\x08\x21\x12\xa4\x42" + bytes(12) + b"\x00\x19\x00\x04",
        bytes(range(256)) * 4,
    ]
    for j in junk:
        sock.sendto(j)
    # An unknown comprehension-required attribute gets 420.
    request = stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST)
    raw = bytes(request) + b"\x00\x77\x00\x04abcd"
    sock.sendto(stun.set_body_length(raw, 8))
    answer = stun.parse_message(await asyncio.wait_for(inbox.queue.get(), 5))
    assert answer.error_code == 420
    # Without credentials: 401 with a realm and a nonce.
    sock.sendto(
        bytes(
            stun.Message(
                stun.Method.ALLOCATE,
                stun.Class.REQUEST,
                attributes={"REQUESTED-TRANSPORT": 17 << 24},
            )
        )
    )
    challenge = stun.parse_message(await asyncio.wait_for(inbox.queue.get(), 5))
    assert challenge.error_code == 401 and challenge.attributes["REALM"] == "teleconsult"
    sock.close()
    # And a real client is still served.
    user, password = credentials.mint(SECRET, "after", 600, time.time())
    relay, _ = await create_turn_endpoint(Inbox, turn.udp_address, user, password)
    relay.close()
    assert aioice  # the client library under test


async def test_a_publisher_that_can_only_relay_reaches_the_sfu(tmp_path: object) -> None:
    from pathlib import Path

    from teleconsult.client.media import MediaClient
    from teleconsult.session.roles import Role

    from .conftest import running_server
    from .media_util import PatternTrack, receive

    async with running_server(
        Path(str(tmp_path)), announce="127.0.0.1", turn_allow=["127.0.0.0/8"]
    ) as server:
        op = await server.join(role=Role.OPERATOR, identity="op")
        ex = await server.join(role=Role.EXPERT, identity="ex")
        (ice,) = op.welcome["ice_servers"]
        assert ice["urls"][0].startswith("turn:127.0.0.1:") and ice["username"].endswith(":op")
        # A clinic whose firewall passes only the TURN server: relay candidates only.
        pub = MediaClient(op, relay_only=True)
        sub = MediaClient(ex)
        try:
            stream = await pub.publish([(PatternTrack(), "probe", "")])
            watching = await sub.subscribe(stream.id)
            frames = await receive(watching.tracks[f"{stream.id}.0"], 30, timeout=15)
            assert frames[-1].width == 320
            turn = server.hub.turn
            assert turn is not None and len(turn.allocations) >= 1
            assert turn.stats.relayed_bytes > 2_000  # the picture went through the relay
            gatherer = stream.pc.getTransceivers()[0].sender.transport.transport.iceGatherer
            assert {c.type for c in gatherer.getLocalCandidates()} == {"relay"}
            text = await asyncio.to_thread(
                lambda: urllib.request.urlopen(server.http + "/metrics", timeout=5).read().decode()
            )
            assert "teleconsult_turn_allocations 1.0" in text
            assert 'teleconsult_turn_errors_total{code="401"} 1.0' in text
        finally:
            await pub.close()
            await sub.close()


def _until_stun_answers(address: tuple[str, int], timeout: float = 10.0) -> None:
    """Wait (bounded) until a STUN server answers a Binding request on UDP."""
    import socket

    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.1)
        while time.monotonic() < deadline:
            request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
            sock.sendto(bytes(request), address)
            try:
                answer = stun.parse_message(sock.recv(2048))
            except (TimeoutError, ConnectionRefusedError):
                continue
            if answer.transaction_id == request.transaction_id:
                return
    raise AssertionError(f"no STUN answer from {address} within {timeout} s")


@pytest.fixture
def coturn(tmp_path: object) -> object:
    """A real coturn on loopback with the TURN REST API's shared secret, stopped by its PID."""
    import subprocess
    from pathlib import Path

    from .conftest import free_socket
    from .need import executable

    path = executable("turnserver")
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    log = Path(str(tmp_path)) / "coturn.log"
    proc = subprocess.Popen(
        [
            path,
            "-n",
            "--listening-ip=127.0.0.1",
            f"--listening-port={port}",
            "--relay-ip=127.0.0.1",
            "--use-auth-secret",
            f"--static-auth-secret={SECRET}",
            "--realm=teleconsult",
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--allow-loopback-peers",
            "--min-port=49152",
            "--max-port=49999",
            f"--log-file={log}",
            "--simple-log",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _until_stun_answers(("127.0.0.1", port))
    try:
        yield ("127.0.0.1", port)
    finally:
        proc.terminate()
        proc.wait(10)


async def test_our_credentials_work_on_coturn(coturn: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    peer, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    user, password = credentials.mint(SECRET, "dr-li", 600, time.time())
    relay, inbox = await create_turn_endpoint(Inbox, coturn, user, password)
    try:
        relay.sendto(b"hello coturn", peer.get_extra_info("sockname"))
        assert await asyncio.wait_for(inbox.queue.get(), 5) == b"echo:hello coturn"
    finally:
        relay.close()
        peer.close()
    wrong = credentials.mint("another-secret-0123456789", "dr-li", 600, time.time())
    with pytest.raises(Exception):  # noqa: B017 - coturn refuses what another secret signed
        await asyncio.wait_for(create_turn_endpoint(Inbox, coturn, *wrong), 10)


async def test_ice_through_our_relay_only(turn: TurnServer) -> None:
    from teleconsult.media.aioice_adapter import guard_ice_ports, use_host_addresses

    guard_ice_ports()  # as in the server and the media clients
    use_host_addresses(["127.0.0.1"])  # the other side's host candidates: loopback only
    user, password = credentials.mint(SECRET, "ice", 600, time.time())
    a = aioice.Connection(
        ice_controlling=True,
        turn_server=turn.udp_address,
        turn_username=user,
        turn_password=password,
        transport_policy=aioice.TransportPolicy.RELAY,
    )
    b = aioice.Connection(ice_controlling=False)
    try:
        await asyncio.gather(a.gather_candidates(), b.gather_candidates())
        assert {c.type for c in a.local_candidates} == {"relay"}
        for x, y in ((a, b), (b, a)):
            for c in y.local_candidates:
                await x.add_remote_candidate(c)
            await x.add_remote_candidate(None)
            x.remote_username, x.remote_password = y.local_username, y.local_password
        await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), 15)
        # DTLS records, as WebRTC sends (ICE ports of this process drop kinds RFC 7983 does
        # not name once the SFU or a media client has guarded them).
        header = b"\x17\xfe\xfd" + bytes(10)
        there, back = header + b"through the relay", header + b"and back"
        await a.send(there)
        assert await asyncio.wait_for(b.recv(), 5) == there
        await b.send(back)
        assert await asyncio.wait_for(a.recv(), 5) == back
    finally:
        await a.close()
        await b.close()
        use_host_addresses(None)


async def test_an_allocate_flood_hits_the_quota_not_the_machine(turn: TurnServer) -> None:
    user, password = credentials.mint(SECRET, "flood", 600, time.time())
    opened = []
    refused = 0
    for _ in range(turn.quota + 15):
        try:
            relay, _ = await asyncio.wait_for(
                create_turn_endpoint(Inbox, turn.udp_address, user, password), 5
            )
            opened.append(relay)
        except Exception:  # aioice reports the 486 as a failed transaction
            refused += 1
    try:
        assert len(opened) == turn.quota and refused == 15
        assert turn.stats.errors[486] == 15
        assert len(turn.allocations) == turn.quota
        # Another identity is not starved by the first.
        other = credentials.mint(SECRET, "someone-else", 600, time.time())
        relay, _ = await create_turn_endpoint(Inbox, turn.udp_address, *other)
        relay.close()
    finally:
        for r in opened:
            r.close()


async def test_allocations_permissions_and_channels_expire() -> None:
    now = [1000.0]
    server = TurnServer(
        SECRET,
        host="127.0.0.1",
        port=0,
        clock=lambda: now[0],
        policy=PeerPolicy(allow=["127.0.0.0/8"]),
    )
    await server.start()
    try:
        user, password = credentials.mint(SECRET, "x", 10_000, now[0])
        relay, _ = await create_turn_endpoint(
            Inbox, server.udp_address, user, password, lifetime=600
        )
        relay.sendto(b"bind a channel", ("127.0.0.1", 9))
        for _ in range(100):  # the client binds a channel for the peer, then sends
            allocations = list(server.allocations.values())
            if allocations and allocations[0].permissions and allocations[0].channels:
                break
            await asyncio.sleep(0.02)
        (allocation,) = server.allocations.values()
        assert allocation.permissions and allocation.channels
        now[0] += 301  # permissions last 300 s (RFC 8656 section 9)
        server.sweep()
        assert not allocation.permissions and allocation.channels
        now[0] += 300  # channels 600 s; the allocation its lifetime
        server.sweep()
        assert not server.allocations
        relay.close()
    finally:
        await server.stop()


async def test_turn_over_tls(tmp_path: object) -> None:
    import datetime
    import ssl
    from pathlib import Path

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from .conftest import free_socket

    # A self-signed certificate for 127.0.0.1, as a hospital's own CA would issue one.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "turn.test")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    folder = Path(str(tmp_path))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    sock = free_socket()
    tls_port = sock.getsockname()[1]
    sock.close()
    server = TurnServer(
        SECRET,
        host="127.0.0.1",
        port=0,
        tls=server_ctx,
        tls_port=tls_port,
        policy=PeerPolicy(allow=["127.0.0.0/8"]),
    )
    await server.start()
    loop = asyncio.get_running_loop()
    peer, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    try:
        client_ctx = ssl.create_default_context(cafile=str(folder / "cert.pem"))
        user, password = credentials.mint(SECRET, "tls", 600, time.time())
        assert server.tls_address is not None
        relay, inbox = await create_turn_endpoint(
            Inbox, server.tls_address, user, password, transport="tcp", ssl=client_ctx
        )
        relay.sendto(b"secret", peer.get_extra_info("sockname"))
        assert await asyncio.wait_for(inbox.queue.get(), 5) == b"echo:secret"
        assert next(iter(server.allocations))[0] == "tls"
        relay.close()
    finally:
        peer.close()
        await server.stop()


async def test_stale_nonce_and_allocation_mismatch(
    turn: TurnServer, caplog: pytest.LogCaptureFixture
) -> None:
    import hashlib

    loop = asyncio.get_running_loop()
    sock, inbox = await loop.create_datagram_endpoint(Inbox, remote_addr=turn.udp_address)
    user, password = credentials.mint(SECRET, "n", 600, time.time())
    key = hashlib.md5(f"{user}:teleconsult:{password}".encode()).digest()

    async def ask(method: stun.Method, nonce: bytes, **attrs: object) -> stun.Message:
        m = stun.Message(
            method,
            stun.Class.REQUEST,
            attributes={"USERNAME": user, "REALM": "teleconsult", "NONCE": nonce, **attrs},
        )
        m.add_message_integrity(key)
        sock.sendto(bytes(m))
        return stun.parse_message(await asyncio.wait_for(inbox.queue.get(), 5))

    stale = f"{int(time.time()) - 10:x}-0000000000000000".encode()
    answer = await ask(stun.Method.ALLOCATE, stale, **{"REQUESTED-TRANSPORT": 17 << 24})
    assert answer.error_code == 438 and answer.attributes["NONCE"] != stale
    fresh = answer.attributes["NONCE"]
    refresh = await ask(stun.Method.REFRESH, fresh, LIFETIME=600)
    assert refresh.error_code == 437  # no allocation on this 5-tuple
    ok = await ask(stun.Method.ALLOCATE, fresh, **{"REQUESTED-TRANSPORT": 17 << 24})
    assert ok.message_class == stun.Class.RESPONSE and ok.check_message_integrity(key)
    again = await ask(stun.Method.ALLOCATE, fresh, **{"REQUESTED-TRANSPORT": 17 << 24})
    assert again.error_code == 437  # one allocation per 5-tuple
    udp_only = await ask(stun.Method.ALLOCATE, fresh, **{"REQUESTED-TRANSPORT": 6 << 24})
    assert udp_only.error_code in (437, 442)
    # A nonce that is not ASCII is stale, and a username whose expiry is not a number is
    # unauthorised: each answered, no traceback.
    weird = await ask(stun.Method.ALLOCATE, "é-ü".encode(), **{"REQUESTED-TRANSPORT": 17 << 24})
    assert weird.error_code == 438
    for expiry in ("²", "9" * 5000):
        m = stun.Message(
            stun.Method.ALLOCATE,
            stun.Class.REQUEST,
            attributes={
                "USERNAME": f"{expiry}:n",
                "REALM": "teleconsult",
                "NONCE": fresh,
                "REQUESTED-TRANSPORT": 17 << 24,
            },
        )
        m.add_message_integrity(key)
        sock.sendto(bytes(m))
        answer = stun.parse_message(await asyncio.wait_for(inbox.queue.get(), 5))
        assert answer.error_code == 401
    assert not [r for r in caplog.records if r.exc_info]
    sock.close()


async def test_external_turn_servers_replace_the_built_in_one(tmp_path: object) -> None:
    from pathlib import Path

    from teleconsult.session.roles import Role

    from .conftest import running_server

    urls = ["turn:turn.example.org:3478?transport=udp", "turns:turn.example.org:5349"]
    async with running_server(
        Path(str(tmp_path)), turn_urls=urls, turn_secret="coturn-static-auth-secret"
    ) as server:
        assert server.hub.turn is None  # not started
        c = await server.join(role=Role.EXPERT, identity="dr-li")
        (ice,) = c.welcome["ice_servers"]
        assert ice["urls"] == urls
        assert ice["username"].endswith(":dr-li")
        # The credential is what coturn computes from its static-auth-secret.
        assert ice["credential"] == credentials.password(
            "coturn-static-auth-secret", ice["username"]
        )
