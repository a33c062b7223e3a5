"""The mailbox client against the REAL magic-wormhole mailbox server (0.8.x).

Two parties exchange sealed candidates; a third side is refused (crowded);
the server's surprising persistence rules that docs/RENDEZVOUS.md §6 relies
on are pinned down here, so an upgrade that changes them fails loudly.
"""

from __future__ import annotations

import os

import pytest
import trio

from p2pinvite.errors import (
    LocalProtocolError,
    MailboxCrowded,
    RendezvousProtocolError,
    RendezvousTimeout,
    RendezvousUnreachable,
)
from p2pinvite.rendezvous import (
    PHASE,
    Candidates,
    for_invitation,
    for_member_pair,
    open_candidates,
    open_mailbox,
    pair_side,
    seal_candidates,
)
from p2pinvite.rendezvous.names import RendezvousNames

from .servers import MailboxServer, mailbox_server

pytestmark = pytest.mark.slow

TIMEOUT = 5.0


def _fresh() -> RendezvousNames:
    return for_invitation(os.urandom(32))


async def test_two_sides_exchange_sealed_candidates(mailbox: MailboxServer) -> None:
    names = _fresh()
    host_c = Candidates((("192.0.2.1", 4000), ("2001:db8::1", 4000)), ("127.0.0.1", 4001))
    guest_c = Candidates((("198.51.100.2", 5000),), None)
    got: dict[str, Candidates] = {}

    async def party(role: int, mine: Candidates, delay: float) -> None:
        await trio.sleep(delay)
        me = names.side(role)
        async with open_mailbox(mailbox.url, names.mailbox_id, side=me,
                                timeout=TIMEOUT) as session:
            assert session.side == me
            assert names.mailbox_id not in repr(session)
            await session.add(PHASE, seal_candidates(names.sealing_key, mine, sender_side=me))
            msg = await session.receive(timeout=TIMEOUT)
            assert msg.side == names.other_side(me)
            assert msg.phase == PHASE
            got[me] = open_candidates(names.sealing_key, msg.body,
                                      sender_side=names.other_side(me))
            # Wait until the other side has read ours too before we close.
            await trio.sleep(0.3)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(party, 0, host_c, 0.0)
            nursery.start_soon(party, 1, guest_c, 0.5)  # the guest comes later: stored, then sent
    assert got == {names.side(0): guest_c, names.side(1): host_c}
    # The mailbox saw only ciphertext: no address, no key, no secret in its log.
    log = mailbox.log_text()
    for needle in ("192.0.2.1", "198.51.100.2", names.sealing_key.hex(),
                   names.relay_token.hex()):
        assert needle not in log


async def test_a_member_pair_meets_in_its_own_mailbox(mailbox: MailboxServer) -> None:
    swarm_secret, a, b = os.urandom(32), os.urandom(32), os.urandom(32)
    seen: list[bytes] = []

    async def device(me: bytes, peer: bytes) -> None:
        names = for_member_pair(swarm_secret, me, peer)  # each in its own order
        side = names.side(pair_side(me, peer))
        async with open_mailbox(mailbox.url, names.mailbox_id, side=side,
                                timeout=TIMEOUT) as session:
            await session.add("hello", me)
            seen.append((await session.receive(timeout=TIMEOUT)).body)
            await trio.sleep(0.3)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(device, a, b)
            nursery.start_soon(device, b, a)
    assert sorted(seen) == sorted([a, b])


async def test_a_third_side_is_crowded(mailbox: MailboxServer) -> None:
    names = _fresh()
    with trio.fail_after(30):
        async with open_mailbox(mailbox.url, names.mailbox_id, side=names.side(0),
                                timeout=TIMEOUT), \
                open_mailbox(mailbox.url, names.mailbox_id, side=names.side(1),
                             timeout=TIMEOUT):
            # Another connection of an existing side is not a third side...
            async with open_mailbox(mailbox.url, names.mailbox_id, side=names.side(1),
                                    timeout=TIMEOUT) as again:
                await again.add("p", b"x")
            # ... but a new side is (and poisons the mailbox: see the last test).
            start = trio.current_time()
            with pytest.raises(MailboxCrowded) as info:
                async with open_mailbox(mailbox.url, names.mailbox_id, timeout=TIMEOUT):
                    pass
            assert trio.current_time() - start < TIMEOUT
            assert info.value.service == mailbox.url
            assert names.mailbox_id not in str(info.value)


async def test_a_side_that_comes_back_finds_the_messages_and_is_not_crowded(
        mailbox: MailboxServer) -> None:
    names = _fresh()
    host, guest = names.side(0), names.side(1)
    with trio.fail_after(30):
        async with open_mailbox(mailbox.url, names.mailbox_id, side=host,
                                timeout=TIMEOUT) as h:
            await h.add(PHASE, b"from the host")

            async def guest_drops_out() -> None:
                async with open_mailbox(mailbox.url, names.mailbox_id, side=guest,
                                        timeout=TIMEOUT) as g:
                    assert (await g.receive(timeout=TIMEOUT)).body == b"from the host"
                    await g.add(PHASE, b"from the guest")
                    raise KeyError("connection lost")  # leaves without a close

            # The guest drops its connection without a close, twice (a flaky network).
            for _ in range(2):
                with pytest.raises(KeyError):
                    await guest_drops_out()
            # Back again: the host's message is still there; its own old ones are not echoed.
            async with open_mailbox(mailbox.url, names.mailbox_id, side=guest,
                                    timeout=TIMEOUT) as g:
                assert (await g.receive(timeout=TIMEOUT)).body == b"from the host"
                with pytest.raises(RendezvousTimeout):
                    await g.receive(timeout=0.5)
            # The host saw both of the guest's messages, in order.
            assert [(await h.receive(timeout=TIMEOUT)).body for _ in range(2)] == \
                [b"from the guest"] * 2


async def test_close_deletes_the_mailbox_once_both_sides_closed(mailbox: MailboxServer) -> None:
    names = _fresh()
    with trio.fail_after(30):
        async with open_mailbox(mailbox.url, names.mailbox_id, side=names.side(0),
                                timeout=TIMEOUT) as a, \
                open_mailbox(mailbox.url, names.mailbox_id, side=names.side(1),
                             timeout=TIMEOUT) as b:
            await a.add("p", b"old")
            assert (await b.receive(timeout=TIMEOUT)).body == b"old"
            await a.close("happy")
            await b.close("lonely")
            assert a.closed
            await a.close()  # idempotent
            with pytest.raises(LocalProtocolError):
                await a.add("p", b"after close")
            with pytest.raises(LocalProtocolError):
                await b.receive()
            assert [m async for m in b] == []  # iteration just ends
        # Deleted: two new sides fit, and nothing old is delivered.
        async with open_mailbox(mailbox.url, names.mailbox_id, timeout=TIMEOUT) as c, \
                open_mailbox(mailbox.url, names.mailbox_id, timeout=TIMEOUT):
            with pytest.raises(RendezvousTimeout):
                await c.receive(timeout=0.5)


async def test_async_iteration_yields_the_other_sides_messages(mailbox: MailboxServer) -> None:
    names = _fresh()
    with trio.fail_after(30):
        async with open_mailbox(mailbox.url, names.mailbox_id, side=names.side(0),
                                timeout=TIMEOUT) as a, \
                open_mailbox(mailbox.url, names.mailbox_id, side=names.side(1),
                             timeout=TIMEOUT) as b:
            for i in range(5):
                await a.add(f"phase-{i}", bytes([i]) * i)
            got = []
            async for msg in b:
                got.append((msg.phase, msg.body))
                if len(got) == 5:
                    break
            assert got == [(f"phase-{i}", bytes([i]) * i) for i in range(5)]


async def test_concurrent_add_and_receive_share_one_connection(mailbox: MailboxServer) -> None:
    names = _fresh()
    with trio.fail_after(30):
        async with open_mailbox(mailbox.url, names.mailbox_id, side=names.side(0),
                                timeout=TIMEOUT) as a, \
                open_mailbox(mailbox.url, names.mailbox_id, side=names.side(1),
                             timeout=TIMEOUT) as b:
            received: list[bytes] = []

            async def reader() -> None:
                for _ in range(20):
                    received.append((await a.receive()).body)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                for i in range(20):  # a adds while its own reader task waits
                    nursery.start_soon(a.add, "p", b"a%d" % i)
                    await b.add("p", b"b%d" % i)
            assert sorted(received) == sorted(b"b%d" % i for i in range(20))


async def test_a_crowded_attempt_poisons_the_mailbox_for_everyone(
        mailbox: MailboxServer) -> None:
    """Server behaviour (0.8.0) the design must live with: see docs/RENDEZVOUS.md §6.

    ``open`` records the side *before* counting, so a refused third side stays
    recorded: from then on every open of the mailbox, even by its two
    rightful sides, is "crowded" until the server prunes it (11 minutes after
    its last activity; each refused open counts as activity).
    """
    names = _fresh()
    with trio.fail_after(30):
        async with open_mailbox(mailbox.url, names.mailbox_id, side=names.side(0),
                                timeout=TIMEOUT) as a, \
                open_mailbox(mailbox.url, names.mailbox_id, side=names.side(1),
                             timeout=TIMEOUT):
            with pytest.raises(MailboxCrowded):
                async with open_mailbox(mailbox.url, names.mailbox_id, timeout=TIMEOUT):
                    pass
            await a.add("p", b"still works on an open connection")
        for side in names.sides:
            with pytest.raises(MailboxCrowded):
                async with open_mailbox(mailbox.url, names.mailbox_id, side=side,
                                        timeout=TIMEOUT):
                    pass


async def test_a_wrong_path_is_a_protocol_error(mailbox: MailboxServer) -> None:
    with pytest.raises(RendezvousProtocolError, match="HTTP 404"):
        async with open_mailbox(mailbox.url.replace("/v1", "/v2"), "ab" * 32, timeout=TIMEOUT):
            pass


async def test_the_server_going_away_mid_session_is_unreachable(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    names = _fresh()
    with mailbox_server(workdir=tmp_path_factory.mktemp("dying")) as server, trio.fail_after(30):

        async def kill_and_wait() -> None:
            async with open_mailbox(server.url, names.mailbox_id, timeout=TIMEOUT) as session:
                server.process.kill()
                await session.receive(timeout=TIMEOUT)

        with pytest.raises(RendezvousUnreachable) as info:
            await kill_and_wait()
        assert not isinstance(info.value, RendezvousTimeout)
        assert info.value.service == server.url
