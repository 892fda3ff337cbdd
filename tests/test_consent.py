"""ICE consent on the server's side (RFC 7675, checked every second): a path that comes back
just as its last check times out is kept; a path that stays dead is given up in seconds.

Two aioice connections talk through a UDP relay on 127.0.0.1 that the test cuts and heals."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aioice
import pytest

from teleconsult.media.aioice_adapter import (
    CONSENT_FAILURES,
    guard_ice_ports,
    quick_consent,
    use_host_addresses,
)

# A DTLS record's header: what WebRTC sends (the guarded ports drop kinds RFC 7983 does not name).
RECORD = b"\x17\xfe\xfd" + bytes(10)


class Relay:
    """Two UDP ports: what `a` sends to the first goes on to `b` from the second, and back."""

    def __init__(self) -> None:
        self.cut = False
        self.heal_after_checks: int | None = None  # heal once `a` sent this many checks, cut
        self.checks_dropped = 0
        self.a_addr: tuple[str, int] | None = None
        self.b_addr: tuple[str, int] | None = None
        self.to_a: Any = None  # the port `a` talks to
        self.to_b: Any = None  # the port `b` talks to

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        relay = self

        class Side(asyncio.DatagramProtocol):
            def __init__(self, from_a: bool) -> None:
                self.from_a = from_a

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                relay.forward(self.from_a, data, addr)

        self.to_a, _ = await loop.create_datagram_endpoint(
            lambda: Side(True), local_addr=("127.0.0.1", 0)
        )
        self.to_b, _ = await loop.create_datagram_endpoint(
            lambda: Side(False), local_addr=("127.0.0.1", 0)
        )

    def port(self, side: Any) -> int:
        return int(side.get_extra_info("sockname")[1])

    def forward(self, from_a: bool, data: bytes, addr: tuple[str, int]) -> None:
        if from_a:
            self.a_addr = addr
        else:
            self.b_addr = addr
        if self.cut:
            if from_a and data[:2] == b"\x00\x01":  # a STUN Binding request: a consent check
                self.checks_dropped += 1
                if self.checks_dropped == self.heal_after_checks:
                    self.cut = False  # back just after this check was lost
            return
        if from_a and self.b_addr is not None:
            self.to_b.sendto(data, self.b_addr)
        elif not from_a and self.a_addr is not None:
            self.to_a.sendto(data, self.a_addr)

    def close(self) -> None:
        self.to_a.close()
        self.to_b.close()


async def connected_through(relay: Relay) -> tuple[aioice.Connection, aioice.Connection]:
    """Connect `a` (the server's side) and `b` through the relay only."""
    a = aioice.Connection(ice_controlling=True)
    b = aioice.Connection(ice_controlling=False)
    await asyncio.gather(a.gather_candidates(), b.gather_candidates())
    for x, y, port in ((a, b, relay.port(relay.to_a)), (b, a, relay.port(relay.to_b))):
        c = y.local_candidates[0]
        await x.add_remote_candidate(
            aioice.Candidate(
                foundation=c.foundation,
                component=c.component,
                transport=c.transport,
                priority=c.priority,
                host="127.0.0.1",
                port=port,
                type="host",
            )
        )
        await x.add_remote_candidate(None)
        x.remote_username, x.remote_password = y.local_username, y.local_password
    # b answers a's checks from its own port: learn it before a checks.
    await asyncio.wait_for(asyncio.gather(a.connect(), b.connect()), 15)
    return a, b


async def closed_within(connection: aioice.Connection, seconds: float) -> float | None:
    """Return when the connection ended (its receive fails), or None if it did not."""
    started = time.monotonic()
    try:
        while True:
            await asyncio.wait_for(connection.recv(), seconds - (time.monotonic() - started))
    except ConnectionError:
        return time.monotonic() - started
    except TimeoutError:
        return None


@pytest.fixture
async def relay() -> Any:
    guard_ice_ports()
    quick_consent()  # as the server's SFU does
    use_host_addresses(["127.0.0.1"])
    r = Relay()
    await r.start()
    yield r
    r.close()
    use_host_addresses(None)


async def test_a_path_back_as_its_last_check_times_out_is_kept(relay: Relay) -> None:
    a, b = await connected_through(relay)
    # Only the server's side is under test. The other side's own consent checks run on a
    # clock of their own: during the cut they may run out first (1 run in the full suite's
    # load did), and then nothing answers a's last check.
    task = b._query_consent_task
    assert task is not None
    task.cancel()
    try:
        # Cut; heal just after a's last allowed check is lost: it times out on a working path.
        relay.heal_after_checks = CONSENT_FAILURES
        relay.cut = True
        for _ in range(200):  # 10 s at most
            if not relay.cut:
                break
            await asyncio.sleep(0.05)
        assert not relay.cut
        assert await closed_within(a, 3.0) is None
        await a.send(RECORD + b"still here")
        assert await asyncio.wait_for(b.recv(), 5) == RECORD + b"still here"
    finally:
        await a.close()
        await b.close()


async def test_a_dead_path_is_given_up_within_seconds(relay: Relay) -> None:
    a, b = await connected_through(relay)
    try:
        relay.cut = True
        ended = await closed_within(a, 10.0)
        assert ended is not None and ended < 8.0, ended
    finally:
        await a.close()
        await b.close()
