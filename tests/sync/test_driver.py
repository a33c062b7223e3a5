"""run_sync over real SecureStreams on loopback TCP: convergence, relays, hostile peers."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest
import trio

from p2pinvite.crypto.noise import generate_private_key
from p2pinvite.errors import (
    DecodeError,
    FrameTooLarge,
    LocalProtocolError,
    P2PInviteError,
    RemoteProtocolError,
)
from p2pinvite.net.secure import SecureStream, open_secure_stream
from p2pinvite.sync import (
    MAX_ENTRY,
    MAX_MESSAGE,
    EntriesMsg,
    HeadsMsg,
    RefusedEntries,
    SyncProgress,
    SyncResult,
    SyncViolation,
    encode_message,
    run_sync,
)

from .dag import MemoryReplica, chain, make_entry


async def tcp_pair() -> tuple[SecureStream, SecureStream]:
    """Two ends of one Noise XX connection over loopback TCP, with fresh keys."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    out: dict[str, SecureStream] = {}

    async def server() -> None:
        tcp = await listeners[0].accept()
        out["r"] = await open_secure_stream(tcp, initiator=False,
                                            static_key=generate_private_key())

    async def client() -> None:
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        out["i"] = await open_secure_stream(tcp, initiator=True,
                                            static_key=generate_private_key())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server)
        nursery.start_soon(client)
    for lst in listeners:
        await lst.aclose()
    return out["i"], out["r"]


async def wait_for(pred: Callable[[], bool], *, poll: float = 0.005) -> None:
    while not pred():
        await trio.sleep(poll)


def same(*replicas: MemoryReplica) -> Callable[[], bool]:
    return lambda: all(r.ids() == replicas[0].ids() and r.held == 0 for r in replicas)


async def run_until(replicas: tuple[MemoryReplica, ...], *links: tuple[
        SecureStream, MemoryReplica, SecureStream, MemoryReplica],
        then: Callable[[], Awaitable[None]] | None = None) -> None:
    """Run run_sync on both ends of every link until *replicas* agree (and *then* is done)."""
    async with trio.open_nursery() as nursery:
        for sa, ra, sb, rb in links:
            nursery.start_soon(run_sync, sa, ra)
            nursery.start_soon(run_sync, sb, rb)
        await wait_for(same(*replicas))
        if then is not None:
            await then()
        nursery.cancel_scope.cancel()


def branches(shared: int, a: int, b: int) -> tuple[MemoryReplica, MemoryReplica]:
    base = MemoryReplica("base")
    chain(base, shared, b"p")
    ra, rb = base.copy("a"), base.copy("b")
    chain(ra, a, b"a")
    chain(rb, b, b"b")
    return ra, rb


async def test_two_replicas_with_concurrent_branches_converge() -> None:
    ra, rb = branches(50, 20, 30)
    sa, sb = await tcp_pair()
    with trio.fail_after(10):
        await run_until((ra, rb), (sa, ra, sb, rb))
    assert len(ra) == 100
    assert set(ra.heads()) == set(rb.heads())
    assert len(ra.heads()) == 2


async def test_appends_after_the_sync_propagate_both_ways() -> None:
    ra, rb = branches(5, 0, 0)
    sa, sb = await tcp_pair()

    async def appends() -> None:
        x = ra.append(b"from a")
        await wait_for(lambda: rb.has(x))
        y = rb.append(b"from b")
        await wait_for(lambda: ra.has(y))
        z = ra.append(b"merge")  # parents: both heads
        await wait_for(lambda: rb.has(z))
        assert rb.heads() == [z]

    with trio.fail_after(10):
        await run_until((ra, rb), (sa, ra, sb, rb), then=appends)


async def test_entries_relay_through_a_middle_replica() -> None:
    ra, rb = branches(10, 40, 0)
    rc = MemoryReplica("c")
    ab = await tcp_pair()
    bc = await tcp_pair()

    async def late() -> None:
        x = rc.append(b"from c")
        await wait_for(lambda: ra.has(x))

    with trio.fail_after(10):
        await run_until((ra, rb, rc), (ab[0], ra, ab[1], rb), (bc[0], rb, bc[1], rc), then=late)
    assert len(rc) == 51


async def test_ten_thousand_entries_to_an_empty_replica() -> None:
    ra = MemoryReplica("a")
    chain(ra, 10_000, b"entry with a payload of about a credential's size " * 4)
    rb = MemoryReplica("b")
    sa, sb = await tcp_pair()
    done: list[SyncProgress] = []
    t0 = time.perf_counter()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_sync, sa, ra)
            nursery.start_soon(lambda: run_sync(sb, rb, on_progress=done.append))
            await wait_for(same(ra, rb), poll=0.001)
            nursery.cancel_scope.cancel()
    elapsed = time.perf_counter() - t0
    assert rb.ids() == ra.ids()
    assert len(rb) == 10_000
    # parents-first batches: nothing was ever held, no want was needed
    assert sum(rb.ingest_calls) == 10_000
    assert len(rb.ingest_calls) < 20
    assert done[-1].stats.entries_new == 10_000
    assert done[-1].stats.wants_sent == 0
    assert done[-1].stats.entries_sent == 0  # nothing echoed back
    print(f"\n10,000 entries synced over loopback TCP in {elapsed:.3f} s")


async def test_both_sides_push_large_batches_at_once_without_deadlock() -> None:
    ra, rb = MemoryReplica("a"), MemoryReplica("b")
    for k in range(1200):  # ~10 MB each way, written by both sides at the same time
        ra.append(bytes([k % 251]) * 8000 + b"a%d" % k, parents=[])
        rb.append(bytes([k % 241]) * 8000 + b"b%d" % k, parents=[])
    sa, sb = await tcp_pair()
    with trio.fail_after(30):
        await run_until((ra, rb), (sa, ra, sb, rb))
    assert len(ra) == len(rb) == 2400


async def test_progress_and_a_clean_end() -> None:
    ra, rb = branches(3, 2, 0)
    sa, sb = await tcp_pair()
    seen: list[SyncProgress] = []
    result: list[SyncResult] = []

    async def b_side() -> None:
        result.append(await run_sync(sb, rb, on_progress=seen.append, clock=trio.current_time))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b_side)
            with trio.CancelScope() as a_scope:
                nursery.start_soon(run_sync, sa, ra)
                await wait_for(lambda: bool(seen) and seen[-1].synced)
            a_scope.cancel()
            await sa.aclose()  # the peer ends the stream: B returns
    (res,) = result
    assert res.end == "closed"
    assert res.stats.entries_received == 2
    assert res.stats.entries_new == 2
    assert res.last_synced is not None
    assert res.last_synced <= trio.current_time()
    assert rb.ids() == ra.ids()
    assert seen[-1].last_synced == res.last_synced


async def test_a_broken_connection_ends_run_sync() -> None:
    ra, rb = branches(3, 0, 0)
    sa, sb = await tcp_pair()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_sync, sa, ra)
            await trio.sleep(0.05)
            await trio.aclose_forcefully(sa.transport)  # no end-of-stream marker
            res = await run_sync(sb, rb)
            nursery.cancel_scope.cancel()
    assert res.end.startswith("broken")


# -- hostile peers ------------------------------------------------------------------------


def _forged() -> bytes:
    return make_entry([], b"not signed by a member", secret=b"\x00" * 32)


def _oversized() -> bytes:
    return b"\x00" * (MAX_MESSAGE + 1)


GARBAGE = {
    "not msgpack": (lambda: [encode_message(HeadsMsg(())), b"\xc1\xc1\xc1"], DecodeError),
    "entries before heads": (lambda: [encode_message(EntriesMsg((b"x",)))], SyncViolation),
    "forged entry": (lambda: [encode_message(HeadsMsg(())),
                              encode_message(EntriesMsg((_forged(),)))], RefusedEntries),
    "oversized message": (lambda: [encode_message(HeadsMsg(())), _oversized()], FrameTooLarge),
}


@pytest.mark.parametrize("kind", GARBAGE)
async def test_a_garbage_peer_is_dropped_while_another_keeps_working(kind: str) -> None:
    make, error = GARBAGE[kind]
    hub, honest = branches(20, 5, 5)
    honest_link = await tcp_pair()
    hub_side, bad_side = await tcp_pair()
    raised: list[BaseException] = []
    hung_up: list[bool] = []

    async def hub_with_bad_peer() -> None:
        try:
            await run_sync(hub_side, hub)
        except RemoteProtocolError as exc:
            raised.append(exc)

    async def bad_peer() -> None:
        try:
            for data in make():
                await bad_side.send_message(data)
            while True:
                await bad_side.receive_message()
        except (P2PInviteError, trio.BrokenResourceError):
            hung_up.append(True)  # the hub closed the connection (maybe before we finished)

    async def then() -> None:
        await wait_for(lambda: bool(raised) and bool(hung_up))
        x = honest.append(b"after the garbage")
        await wait_for(lambda: hub.has(x))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub_with_bad_peer)
            nursery.start_soon(bad_peer)
            await run_until((hub, honest), (honest_link[0], hub, honest_link[1], honest),
                            then=then)
            nursery.cancel_scope.cancel()
    (exc,) = raised
    assert isinstance(exc, error)
    assert all(b"not signed" not in e for e in hub.entries_in_order())


async def test_a_local_failure_is_raised_as_itself() -> None:
    # an entry over the limit in our own replica is our bug: LocalProtocolError, not a group
    class Fat(MemoryReplica):
        def get(self, entry_id: bytes) -> bytes:
            return b"x" * (MAX_ENTRY + 1)

    ra = Fat("a")
    chain(ra, 1)
    rb = MemoryReplica("b")
    sa, sb = await tcp_pair()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_sync, sb, rb)
            with pytest.raises(LocalProtocolError):
                await run_sync(sa, ra)
            nursery.cancel_scope.cancel()


async def test_a_failing_progress_callback_is_raised_as_itself() -> None:
    ra, rb = branches(3, 0, 0)
    sa, sb = await tcp_pair()

    def boom(_: SyncProgress) -> None:
        raise ValueError("callback bug")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_sync, sa, ra)
            with pytest.raises(ValueError, match="callback bug"):
                await run_sync(sb, rb, on_progress=boom)
            nursery.cancel_scope.cancel()
