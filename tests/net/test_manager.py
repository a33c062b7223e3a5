"""The network manager over real loopback TCP, mDNS off (hints and known peers only)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from p2pinvite.crypto.noise import generate_private_key
from p2pinvite.errors import ConnectionClosed, DecodeError, P2PInviteError
from p2pinvite.net.manager import (
    NetworkManager,
    PeerUnreachable,
    decode_preamble,
    encode_preamble,
    open_network_manager,
)
from p2pinvite.net.secure import PROTOCOL_XX, PROTOCOL_XXPSK0, SecureStream, open_secure_stream
from p2pinvite.net.topics import Topic
from p2pinvite.wire import frame, pack

LINK = Topic.from_secret(bytes(range(32)))


@asynccontextmanager
async def manager(payload: bytes = b"", **kw: object) -> AsyncIterator[NetworkManager]:
    async with open_network_manager(static_key=generate_private_key(), payload=payload,
                                    **kw) as m:  # type: ignore[arg-type]
        yield m


async def echo(stream: SecureStream) -> None:
    while True:
        await stream.send_message(await stream.receive_message())


# -- preamble ------------------------------------------------------------------


def test_preamble_round_trip_and_limits() -> None:
    body = encode_preamble(LINK.id)
    assert body == pack({"topic": LINK.id, "v": 1})
    assert body == bytes.fromhex("82a17601a5746f706963c420") + LINK.id  # as documented
    assert decode_preamble(body) == LINK.id
    assert decode_preamble(pack({"topic": LINK.id, "v": 1, "future": "x"})) == LINK.id
    for bad in (pack({"topic": LINK.id, "v": 2}), pack({"topic": LINK.id[:31], "v": 1}),
                pack({"v": 1}), pack([1, 2]), b"\xc1", pack({"topic": b"x" * 200, "v": 1})):
        with pytest.raises(DecodeError):
            decode_preamble(bad)


# -- connect ---------------------------------------------------------------------


async def test_hints_only_connect_link_swarm_and_short_topics() -> None:
    space = Topic.for_swarm(b"1" * 32)
    short = Topic.for_discriminator("4821")
    with trio.fail_after(10):
        async with manager(b"host-payload") as host, manager(b"guest-payload") as guest:
            seen: list[bytes] = []

            async def record(stream: SecureStream) -> None:
                seen.append(stream.remote_payload)
                await echo(stream)

            await host.join(LINK, record)
            await host.join(space, record)
            await host.join(short, record)
            dead = ("127.0.0.1", 1)  # nothing listens there: the race must not care
            s = await guest.connect(LINK, hints=[dead, host.addresses[0]], mdns=True)
            assert s.protocol_name == PROTOCOL_XXPSK0
            assert s.remote_payload == b"host-payload"
            assert s.remote_static == host.public_key
            await s.send_message(b"ping")
            assert await s.receive_message() == b"ping"
            assert seen == [b"guest-payload"]
            await s.aclose()

            s2 = await guest.connect(space, hints=host.addresses)
            assert s2.protocol_name == PROTOCOL_XXPSK0
            s3 = await guest.connect(short, hints=host.addresses)
            assert s3.protocol_name == PROTOCOL_XX
            for s in (s2, s3):
                await s.send_message(b"x")
                assert await s.receive_message() == b"x"
                await s.aclose()


async def test_connect_to_an_unjoined_topic_fails() -> None:
    with trio.fail_after(10):
        async with manager() as host, manager() as guest:
            await host.join(LINK, echo)
            other = Topic.from_secret(os.urandom(32))
            with pytest.raises(PeerUnreachable):
                await guest.connect(other, hints=host.addresses, timeout=0.5)
            with pytest.raises(PeerUnreachable):
                await guest.connect(LINK, mdns=True)  # no hints and mDNS off
            with pytest.raises(PeerUnreachable, match="ourselves"):
                await host.connect(LINK, hints=host.addresses, timeout=0.5)


async def test_tampered_preamble_breaks_the_handshake() -> None:
    with trio.fail_after(10):
        async with manager() as host:
            handled: list[SecureStream] = []

            async def record(stream: SecureStream) -> None:
                handled.append(stream)

            await host.join(LINK, record)
            sent = pack({"topic": LINK.id, "v": 1, "x": 0})  # same topic, other bytes
            stream = await trio.open_tcp_stream(*host.addresses[0])
            await stream.send_all(frame(sent))

            async def handshake_then_accept() -> None:
                s = await open_secure_stream(
                    stream, initiator=True, static_key=generate_private_key(), psk=LINK.psk,
                    prologue=encode_preamble(LINK.id), timeout=5)
                await s.receive_message()  # the accept

            with pytest.raises(P2PInviteError):
                await handshake_then_accept()
            assert handled == []


# -- isolation -------------------------------------------------------------------


async def test_a_raising_handler_affects_no_other_connection() -> None:
    with trio.fail_after(10):
        async with manager() as host, manager() as g1, manager() as g2:
            async def handler(stream: SecureStream) -> None:
                if await stream.receive_message() == b"boom":
                    raise RuntimeError("handler bug")
                await stream.send_message(b"ok")
                await echo(stream)

            await host.join(LINK, handler)
            good = await g1.connect(LINK, hints=host.addresses)
            await good.send_message(b"hi")
            assert await good.receive_message() == b"ok"

            bad = await g2.connect(LINK, hints=host.addresses)
            await bad.send_message(b"boom")
            with pytest.raises(ConnectionClosed):
                await bad.receive_message()

            await good.send_message(b"still here")
            assert await good.receive_message() == b"still here"
            again = await g2.connect(LINK, hints=host.addresses)  # the manager still serves
            await again.send_message(b"hi")
            assert await again.receive_message() == b"ok"
            for s in (good, bad, again):
                await s.aclose()


async def test_swarm_keeps_one_connection_per_peer_pair() -> None:
    space = Topic.for_swarm(b"d" * 32)
    with trio.fail_after(20):
        async with manager() as a, manager() as b:
            live: dict[str, set[SecureStream]] = {"a": set(), "b": set()}
            started = {"a": 0, "b": 0}

            def handler(side: str):  # type: ignore[no-untyped-def]
                async def run(stream: SecureStream) -> None:
                    started[side] += 1
                    live[side].add(stream)
                    try:
                        await trio.sleep_forever()
                    finally:
                        live[side].discard(stream)
                return run

            # Both dial each other at once: the simultaneous-dial case.
            await a.join(space, handler("a"), peers=b.addresses)
            await b.join(space, handler("b"), peers=a.addresses)
            while not (len(live["a"]) == 1 and len(live["b"]) == 1
                       and next(iter(live["a"])).handshake_hash
                       == next(iter(live["b"])).handshake_hash):
                await trio.sleep(0.05)
            await trio.sleep(0.5)  # nothing else shows up later
            assert len(live["a"]) == len(live["b"]) == 1
            (sa,), (sb,) = live["a"], live["b"]
            assert sa.handshake_hash == sb.handshake_hash
            # The kept connection is the one dialed by the lower static key.
            _lower, lower_stream, higher = ((a, sa, b) if a.public_key < b.public_key
                                           else (b, sb, a))
            peer = lower_stream.transport.socket.getpeername()  # type: ignore[attr-defined]
            assert tuple(peer) == higher.addresses[0]


# -- limits ----------------------------------------------------------------------


async def test_flood_of_idle_and_garbage_connections_does_not_lock_out_a_peer() -> None:
    with trio.fail_after(30):
        async with manager(max_unauthenticated=16, handshake_timeout=8.0) as host, \
                manager() as guest:
            await host.join(LINK, echo)
            flood: list[trio.SocketStream] = []
            try:
                for i in range(200):
                    s = await trio.open_tcp_stream(*host.addresses[0])
                    if i % 4 == 0:
                        await s.send_all(os.urandom(64))  # garbage
                    elif i % 4 == 1:
                        await s.send_all(b"\x00\x7f")  # a preamble that never arrives
                    flood.append(s)
                while host.unauthenticated < 16:
                    await trio.sleep(0.01)
                assert host.unauthenticated <= 16
                # Shorter than the handshake deadline: waiting for idle ones to expire is no answer.
                s = await guest.connect(LINK, hints=host.addresses, timeout=3)
                await s.send_message(b"through")
                assert await s.receive_message() == b"through"
                assert host.unauthenticated <= 16
                await s.aclose()
            finally:
                for s in flood:
                    await s.aclose()


async def test_leave_closes_the_topics_connections() -> None:
    space = Topic.for_swarm(b"o" * 32)
    with trio.fail_after(10):
        async with manager() as host, manager() as guest:
            await host.join(LINK, echo)
            await host.join(space, echo)
            s = await guest.connect(LINK, hints=host.addresses)
            kept = await guest.connect(space, hints=host.addresses)
            await s.send_message(b"1")
            assert await s.receive_message() == b"1"
            await host.leave(LINK)
            with pytest.raises(ConnectionClosed):
                await s.receive_message()
            with pytest.raises(PeerUnreachable):
                await guest.connect(LINK, hints=host.addresses, timeout=0.5)
            await kept.send_message(b"2")  # the other topic is untouched
            assert await kept.receive_message() == b"2"
            await kept.aclose()
            await host.leave(LINK)  # leaving twice is harmless


async def test_closing_the_manager_closes_connections() -> None:
    with trio.fail_after(10):
        async with manager() as guest:
            async with manager() as host:
                await host.join(LINK, echo)
                s = await guest.connect(LINK, hints=host.addresses)
            with pytest.raises(ConnectionClosed):
                await s.receive_message()


# -- dialing: one connection per peer, the wrong peers dropped ------------------------


async def _forward(listener: trio.SocketListener, to: tuple[str, int]) -> None:
    """A TCP forwarder on loopback: one more address of the same host."""
    async def pipe(a: trio.abc.Stream, b: trio.abc.Stream) -> None:
        try:
            while data := await a.receive_some(65536):
                await b.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await b.aclose()

    async def serve(client: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream(*to)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipe, client, upstream)
            nursery.start_soon(pipe, upstream, client)

    await trio.serve_listeners(serve, [listener])


async def test_a_host_reached_by_several_addresses_gets_one_session_per_join() -> None:
    # The common join: the code's hint and the mDNS advert name the same host, or
    # several of its addresses. Whatever the race, the host sees one session only.
    with trio.fail_after(30):
        async with manager() as host, manager() as guest, trio.open_nursery() as nursery:
            sessions: list[SecureStream] = []

            async def record(stream: SecureStream) -> None:
                sessions.append(stream)
                await echo(stream)

            await host.join(LINK, record, one_per_peer=False)
            hints = [host.addresses[0], host.addresses[0]]
            for _ in range(2):
                [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
                hints.append(listener.socket.getsockname()[:2])
                nursery.start_soon(_forward, listener, host.addresses[0])
            for round_ in range(20):
                async with guest.dial(LINK, hints=hints, mdns=False) as found:
                    s = await found.next()
                    await s.send_message(b"ping")
                    assert await s.receive_message() == b"ping"
                    with trio.move_on_after(0.2):  # no second connection to that host
                        extra = await found.next()
                        pytest.fail(f"a second connection to the same host: {extra}")
                    await s.aclose()
                    assert len(sessions) == round_ + 1
            nursery.cancel_scope.cancel()


async def test_a_session_topic_never_cancels_a_session_for_another_one() -> None:
    with trio.fail_after(10):
        async with manager() as host, manager() as guest:
            await host.join(LINK, echo, one_per_peer=False)
            first = await guest.connect(LINK, hints=host.addresses)
            second = await guest.connect(LINK, hints=host.addresses)  # same peer, same topic
            for s in (first, second, first):
                await s.send_message(b"alive")
                assert await s.receive_message() == b"alive"
            assert host.sessions == 2
            for s in (first, second):
                await s.aclose()


async def test_a_rejected_peer_is_dropped_and_the_right_one_kept() -> None:
    with trio.fail_after(10):
        async with manager(b"impostor") as impostor, manager(b"host") as host, \
                manager() as guest:
            seen: dict[str, int] = {"impostor": 0, "host": 0}

            def counting(name: str):  # type: ignore[no-untyped-def]
                async def run(stream: SecureStream) -> None:
                    seen[name] += 1
                    await echo(stream)
                return run

            await impostor.join(LINK, counting("impostor"), one_per_peer=False)
            await host.join(LINK, counting("host"), one_per_peer=False)

            def only_host(remote: bytes, payload: bytes) -> None:
                if payload != b"host":
                    raise DecodeError("not the host the code names")

            async with guest.dial(LINK, hints=[*impostor.addresses, *host.addresses],
                                  mdns=False, check_peer=only_host) as found:
                s = await found.next()
                assert s.remote_static == host.public_key
                await s.send_message(b"x")
                assert await s.receive_message() == b"x"
                await s.aclose()
            assert seen == {"impostor": 0, "host": 1}  # the impostor's handshake never completed


async def test_a_released_peer_is_dialed_again_and_a_rejected_one_is_not() -> None:
    with trio.fail_after(10):
        async with manager() as host, manager() as guest:
            await host.join(LINK, echo, one_per_peer=False)
            async with guest.dial(LINK, hints=host.addresses, mdns=False) as found:
                s1 = await found.next()
                await s1.aclose()
                found.release(s1.remote_static, again=True)  # dropped: resume
                s2 = await found.next()
                assert s2.handshake_hash != s1.handshake_hash
                await s2.aclose()
                found.reject(s2.remote_static)
                with trio.move_on_after(1.0) as idle:
                    await found.next()
                assert idle.cancelled_caught


@pytest.mark.parametrize(("cap", "per_source"), [(10, 2), (2, 10)],
                         ids=["per-source", "in-all"])
async def test_sessions_are_capped_and_a_freed_slot_is_served(cap: int, per_source: int) -> None:
    with trio.fail_after(20):
        async with manager(max_sessions=cap, max_sessions_per_source=per_source) as host, \
                manager() as guest:
            await host.join(LINK, echo, one_per_peer=False)
            held = [await guest.connect(LINK, hints=host.addresses) for _ in range(2)]
            assert host.sessions == 2
            with pytest.raises(PeerUnreachable):  # over the cap: closed before the accept
                await guest.connect(LINK, hints=host.addresses, timeout=1.0)
            await held.pop().aclose()
            while host.sessions > 1:
                await trio.sleep(0.01)
            again = await guest.connect(LINK, hints=host.addresses)
            for s in (*held, again):
                await s.send_message(b"ok")
                assert await s.receive_message() == b"ok"
                await s.aclose()


async def test_a_swarm_keeps_its_peers_connected_and_redials_after_a_drop() -> None:
    swarm = Topic.for_swarm(b"k" * 32)
    with trio.fail_after(20):
        async with manager() as a, manager() as b:
            sessions: list[SecureStream] = []
            drop = trio.Event()

            async def on_b(stream: SecureStream) -> None:
                sessions.append(stream)
                if len(sessions) == 1:
                    await drop.wait()  # the first connection ends when told
                    return
                await trio.sleep_forever()

            await b.join(swarm, on_b)
            await a.join(swarm, echo, peers=b.addresses)
            while not sessions:
                await trio.sleep(0.01)
            await trio.sleep(1.0)
            assert len(sessions) == 1  # connected: nothing else is dialed
            drop.set()
            while len(sessions) < 2:  # a dials again on its own
                await trio.sleep(0.01)
            assert sessions[1].handshake_hash != sessions[0].handshake_hash
            await trio.sleep(1.0)
            assert len(sessions) == 2


async def test_reachable_addresses_leave_out_a_wildcard_without_mdns() -> None:
    # With mDNS on, a wildcard stands for the mDNS interface addresses: that
    # path is proved in namespaces (tests/daemon/test_e2e_swarms_netns.py).
    async with open_network_manager(static_key=generate_private_key(),
                                    listen=("0.0.0.0", 0)) as wild:
        assert wild.addresses[0][0] == "0.0.0.0"
        assert wild.reachable_addresses == []
    async with open_network_manager(static_key=generate_private_key()) as local:
        assert local.reachable_addresses == local.addresses
        assert local.addresses[0][0] == "127.0.0.1"


async def test_a_peer_that_drops_every_connection_at_once_is_redialed_with_backoff() -> None:
    # A member check that fails drops the connection right after the handshake.
    # Such a connection must not reset the dialer's backoff (else: 4-8 dials a
    # second, each a full handshake, forever). Backoff doubles from 0.125-0.25 s,
    # so at most 5 dials start within 2.5 s; without the rule it would be 10-20.
    topic = Topic.for_swarm(b"2" * 32)
    refused: list[float] = []
    async with manager() as member, manager() as other:
        async def refuse(stream: SecureStream) -> None:
            refused.append(trio.current_time())

        async def stay(stream: SecureStream) -> None:
            with contextlib.suppress(P2PInviteError, trio.BrokenResourceError):
                await stream.receive_message()

        await member.join(topic, refuse, one_per_peer=True)
        await other.join(topic, stay, one_per_peer=True, peers=member.addresses)
        await trio.sleep(2.5)
    assert 2 <= len(refused) <= 6, refused


async def test_a_path_opened_elsewhere_is_dialed_and_served_like_tcp() -> None:
    """A relayed path: the dialer's bytes go over an opener's stream, the host serves it.

    A memory stream pair stands in for the two halves a transit relay glues
    together; the topic, PSK, handshake, accept and handler are the usual ones.
    """
    with trio.fail_after(10):
        async with manager(b"host-payload") as host, manager(b"guest-payload") as guest:
            await host.join(LINK, echo)
            near, far = trio.testing.memory_stream_pair()
            opened: list[str] = []

            async def opener() -> trio.abc.Stream:
                opened.append("relay")
                return near

            async with trio.open_nursery() as nursery:
                nursery.start_soon(host.serve_stream, far)
                async with guest.dial(LINK, mdns=False, more_paths=True) as found:
                    found.add_path("relay", opener)
                    s = await found.next()
                    assert opened == ["relay"]
                    assert s.remote_static == host.public_key
                    await s.send_message(b"over the relay")
                    assert await s.receive_message() == b"over the relay"
                    await s.aclose()
                # The session ended: serve_stream returns on its own.


async def test_a_path_to_the_wrong_topic_fails_and_is_not_retried() -> None:
    with trio.fail_after(10):
        async with manager() as host, manager() as guest:
            await host.join(Topic.from_secret(b"\x07" * 32), echo)
            near, far = trio.testing.memory_stream_pair()
            calls: list[int] = []

            async def opener() -> trio.abc.Stream:
                calls.append(1)
                return near

            async with trio.open_nursery() as nursery:
                nursery.start_soon(host.serve_stream, far)
                async with guest.dial(LINK, mdns=False, more_paths=True) as found:
                    found.add_path("relay", opener)
                    with trio.move_on_after(2) as waited:
                        await found.next()
                    assert waited.cancelled_caught  # no connection came of it
                    assert found.last_error is not None
                    assert found.last_error.startswith("relay: ")
            assert calls == [1]
