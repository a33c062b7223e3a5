"""Member devices meeting at their pair mailbox and through the transit relay (swarm/meeting.py).

Two network managers on loopback with the real mailbox server and transit
relay (tests/rendezvous/servers.py). Loopback addresses are never offered as
candidates, and neither manager is told the other's address, so the relay is
the only path: what comes out of it must be a member connection of the swarm
topic on both sides, the relay dialer being side 1 (the larger device key).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator

import pytest
import trio

from p2pinvite.crypto.noise import generate_private_key
from p2pinvite.net.manager import open_network_manager
from p2pinvite.net.secure import SecureStream
from p2pinvite.net.topics import Topic
from p2pinvite.rendezvous.config import RendezvousConfig, RendezvousStatus
from p2pinvite.swarm.meeting import meet_members

from ..rendezvous.servers import MailboxServer, RelayServer, mailbox_server, relay_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[MailboxServer, RelayServer]]:
    with mailbox_server(workdir=tmp_path_factory.mktemp("mailbox")) as mailbox, \
            relay_server(workdir=tmp_path_factory.mktemp("relay")) as relay:
        yield mailbox, relay


async def _meet(config: RendezvousConfig, secrets: tuple[bytes, bytes],
                within: float) -> tuple[list[bytes], list[bytes], list[RendezvousStatus]]:
    """Two devices meeting for *within* seconds; the peers each one's handler saw."""
    devices = (os.urandom(32), os.urandom(32))
    seen: tuple[list[bytes], list[bytes]] = ([], [])
    statuses = [RendezvousStatus(config), RendezvousStatus(config)]
    async with open_network_manager(static_key=generate_private_key()) as a, \
            open_network_manager(static_key=generate_private_key()) as b, \
            trio.open_nursery() as nursery:
        nets = (a, b)
        for i, net in enumerate(nets):
            out = seen[i]

            async def handler(stream: SecureStream, out: list[bytes] = out) -> None:
                out.append(stream.remote_static)
                await stream.send_message(b"hello member")
                assert await stream.receive_message(64) == b"hello member"
                await trio.sleep_forever()

            topic = Topic.for_swarm(secrets[i])
            await net.join(topic, handler, advertise=False)
            other = devices[1 - i]

            def wanted(other: bytes = other) -> list[bytes]:
                return [other]

            def connected(device: bytes, out: list[bytes] = out) -> bool:
                return bool(out)

            nursery.start_soon(functools.partial(
                meet_members, config, secrets[i], devices[i], net, topic, statuses[i],
                devices=wanted, connected=connected, label=f"test{i}"))
        with trio.move_on_after(within):
            while not (seen[0] and seen[1]):
                await trio.sleep(0.05)
        opened = [s.open_sessions for s in statuses]
        nursery.cancel_scope.cancel()
    assert opened == [1, 1]  # one pair mailbox each, open while meeting
    return seen[0], seen[1], statuses


def test_two_members_with_no_direct_path_meet_through_the_relay(
        servers: tuple[MailboxServer, RelayServer]) -> None:
    mailbox, relay = servers
    config = RendezvousConfig(mailbox.url, (relay.host, relay.port))
    used = len(relay.usage())
    secret = os.urandom(32)
    seen_a, seen_b, _ = trio.run(_meet, config, (secret, secret), 20.0)
    assert len(seen_a) == 1, (seen_a, seen_b)
    assert len(seen_b) == 1, (seen_a, seen_b)
    usage = relay.wait_usage(used + 1)
    happy = [u for u in usage[used:] if u["mood"] == "happy"]
    assert happy, usage[used:]
    assert all(u["total_bytes"] > 100 for u in happy), usage[used:]


def test_members_holding_different_secrets_never_meet(
        servers: tuple[MailboxServer, RelayServer]) -> None:
    # After a rotation the removed device holds the old secret only: other names.
    mailbox, relay = servers
    config = RendezvousConfig(mailbox.url, (relay.host, relay.port))
    used = len(relay.usage())
    seen_a, seen_b, _ = trio.run(_meet, config, (os.urandom(32), os.urandom(32)), 5.0)
    assert (seen_a, seen_b) == ([], [])
    assert len(relay.usage()) == used
