"""relay_connect against the REAL magic-wormhole transit relay (0.5.x).

Two connections with the same token and different sides are glued, and bytes
flow both ways (the relay's usage log counts them); a lone connection, two of
the same side, or two tokens are never glued and time out with a typed error.
"""

from __future__ import annotations

import os

import pytest
import trio

from p2pinvite.errors import RelayRefused, RendezvousTimeout
from p2pinvite.rendezvous import for_invitation, relay_connect
from p2pinvite.rendezvous.names import SIDES

from .servers import RelayServer

pytestmark = pytest.mark.slow

TIMEOUT = 5.0
CHUNK = 64 * 1024


async def _exchange(stream: trio.SocketStream, send: bytes, expect: int) -> bytes:
    """Send *send* while reading *expect* bytes; the relay cannot half-close, so no EOF."""
    got = bytearray()

    async def reader() -> None:
        while len(got) < expect:
            data = await stream.receive_some(65536)
            assert data, "the relay closed early"
            got.extend(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await stream.send_all(send)
    return bytes(got)


async def test_same_token_other_side_are_glued_both_ways(relay: RelayServer) -> None:
    names = for_invitation(os.urandom(32))
    before = len(relay.usage())
    a_data, b_data = os.urandom(CHUNK), os.urandom(CHUNK // 2)
    results: dict[str, bytes] = {}

    async def party(side: str, send: bytes, expect: int, delay: float) -> None:
        await trio.sleep(delay)
        stream = await relay_connect(relay.host, relay.port, names.relay_token, side,
                                     timeout=TIMEOUT)
        results[side] = await _exchange(stream, send, expect)
        await trio.sleep(0.2)  # let the other side finish reading before anyone closes
        await stream.aclose()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(party, SIDES[0], a_data, len(b_data), 0.0)
            nursery.start_soon(party, SIDES[1], b_data, len(a_data), 0.3)
    assert results == {SIDES[0]: b_data, SIDES[1]: a_data}
    # The relay carried exactly our bytes (not the handshake lines) and saw nothing else.
    record = relay.wait_usage(before + 1)[before]
    assert record["mood"] == "happy"
    assert record["total_bytes"] == len(a_data) + len(b_data)
    assert names.relay_token.hex() not in relay.log_text()


async def test_a_lone_connection_times_out(relay: RelayServer) -> None:
    names = for_invitation(os.urandom(32))
    before = len(relay.usage())
    start = trio.current_time()
    with pytest.raises(RendezvousTimeout) as info:
        await relay_connect(relay.host, relay.port, names.relay_token, SIDES[0], timeout=1.0)
    assert 1.0 <= trio.current_time() - start < 3.0
    assert info.value.service == relay.address
    assert relay.wait_usage(before + 1)[before]["mood"] == "lonely"


async def test_same_side_or_other_token_is_never_glued(relay: RelayServer) -> None:
    one, two = for_invitation(os.urandom(32)), for_invitation(os.urandom(32))
    outcomes: list[type[BaseException]] = []

    async def attempt(token: bytes, side: str) -> None:
        try:
            await relay_connect(relay.host, relay.port, token, side, timeout=1.5)
        except RendezvousTimeout as exc:
            outcomes.append(type(exc))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(attempt, one.relay_token, SIDES[0])
            nursery.start_soon(attempt, one.relay_token, SIDES[0])  # same side: no pair
            nursery.start_soon(attempt, two.relay_token, SIDES[1])  # other token: no pair
    assert outcomes == [RendezvousTimeout] * 3


async def test_a_redundant_connection_is_hung_up_when_its_twin_is_paired(
        relay: RelayServer) -> None:
    """Relay behaviour (0.5.0): on a match, every other waiting connection of the token is
    dropped without a word, so a side waits with ONE connection per token (RENDEZVOUS.md §5)."""
    names = for_invitation(os.urandom(32))
    refused: list[RelayRefused] = []
    paired: list[trio.SocketStream] = []

    async def waiting() -> None:
        try:
            paired.append(await relay_connect(relay.host, relay.port, names.relay_token,
                                              SIDES[0], timeout=TIMEOUT))
        except RelayRefused as exc:
            refused.append(exc)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiting)
            nursery.start_soon(waiting)
            await trio.sleep(0.5)
            other = await relay_connect(relay.host, relay.port, names.relay_token, SIDES[1],
                                        timeout=TIMEOUT)
    assert len(paired) == 1
    assert len(refused) == 1
    assert refused[0].answer == ""
    await paired[0].send_all(b"ping")
    assert await other.receive_some(10) == b"ping"
    for stream in (*paired, other):
        await stream.aclose()
