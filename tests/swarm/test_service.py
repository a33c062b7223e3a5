"""The swarm service over real loopback TCP: member devices connect, prove themselves, sync.

The logs are the in-memory Merkle-DAG replica of the sync tests (real hashing,
real DAG semantics); membership is a set of device keys per node, the
boundary the daemon fills from the halo layer (tests/daemon has that).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio
import trio.testing

from p2pinvite.halo.keys import DeviceKeys
from p2pinvite.halo.swarm_keys import Recipient
from p2pinvite.halo.swarm_secrets import SwarmSecret, SwarmSecrets
from p2pinvite.net.manager import open_network_manager
from p2pinvite.net.topics import Topic
from p2pinvite.swarm.hello import Hello, NotAMember
from p2pinvite.swarm.service import SwarmEvent, SwarmService

from ..sync.dag import MemoryReplica

LOG = b"L" * 32


@dataclass
class Logs:
    """A SwarmLogs over one MemoryReplica; members are the device keys in *members*."""

    dag: MemoryReplica
    members: set[bytes] = field(default_factory=set)

    def hello(self, log_key: bytes) -> Hello:
        return Hello(log_key)

    def check_member(self, log_key: bytes, device: bytes, hello: Hello) -> bytes | None:
        if log_key != LOG or device not in self.members:
            raise NotAMember("not one of our devices")
        return None

    def replica(self, log_key: bytes) -> MemoryReplica:
        return self.dag

    # The secret in force, as a test scripts it: ``in_force`` is what the log
    # says (and opens for us); ``rotate_to`` what a rotation by us would write.
    in_force: SwarmSecret | None = None
    rotate_to: SwarmSecret | None = None
    rotated_for: list[Recipient] = field(default_factory=list)
    granted: list[Recipient] = field(default_factory=list)

    def key_update(self, log_key: bytes, held: SwarmSecret | None) -> SwarmSecret | None:
        if self.in_force is None or (held is not None and held.secret == self.in_force.secret):
            return None
        return self.in_force

    def behind(self, log_key: bytes, held: SwarmSecret | None) -> bool:
        return self.in_force is not None and (held is None or held.secret != self.in_force.secret)

    def needs_rotation(self, log_key: bytes, held: SwarmSecret | None) -> bool:
        return self.rotate_to is not None and self.in_force is not self.rotate_to

    async def rotate(self, log_key: bytes, recipients: Sequence[Recipient]) -> SwarmSecret:
        assert self.rotate_to is not None
        self.in_force = self.rotate_to
        self.rotated_for = list(recipients)
        return self.rotate_to

    async def grant(self, log_key: bytes, held: SwarmSecret,
                    recipients: Sequence[Recipient]) -> int:
        self.granted.extend(recipients)
        return len(recipients)


@dataclass
class Node:
    keys: DeviceKeys
    logs: Logs
    swarm: SwarmService
    address: tuple[str, int]
    secrets: SwarmSecrets


@asynccontextmanager
async def node(home: Path, secret: SwarmSecret | None, replica: MemoryReplica
               ) -> AsyncIterator[Node]:
    keys = DeviceKeys.generate()
    secrets = SwarmSecrets.open(home)
    if secret is not None:
        secrets.install(secret)
    logs = Logs(replica)
    async with open_network_manager(static_key=keys.static_private,
                                    payload=keys.binding_proof()) as net, \
            SwarmService(home, net, secrets, logs, mdns=False) as swarm:
        yield Node(keys, logs, swarm, net.addresses[0], secrets)


async def settle(*replicas: MemoryReplica) -> None:
    while len({r.ids() for r in replicas}) != 1:
        await trio.sleep(0.01)


async def test_members_sync_both_ways_and_keep_syncing_after_new_entries(
        tmp_path: Path) -> None:
    secret = SwarmSecret(LOG, 1, os.urandom(32))
    ra, rb = MemoryReplica("a"), MemoryReplica("b")
    base = ra.append(b"genesis")
    rb.ingest_now([ra.get(base)])
    for i in range(50):
        ra.append(b"a%d" % i)
        rb.append(b"b%d" % i)
    with trio.fail_after(20):
        async with node(tmp_path / "a", secret, ra) as a, node(tmp_path / "b", secret, rb) as b:
            a.logs.members.add(b.keys.device_public)
            b.logs.members.add(a.keys.device_public)
            a.swarm.add_peers(LOG, (b.address,))
            await settle(ra, rb)
            assert len(ra) == 101
            [peer] = a.swarm.peers(LOG)
            assert peer.device == b.keys.device_public
            # A later local append reaches the other member on its own.
            eid = rb.append(b"later")
            await settle(ra, rb)
            assert ra.has(eid)
    # The peer's listening address was remembered for the next start.
    assert (tmp_path / "a" / "swarm" / f"{LOG.hex()}.peers").exists()


async def test_a_device_that_is_not_a_member_gets_nothing(tmp_path: Path) -> None:
    secret = SwarmSecret(LOG, 1, os.urandom(32))
    ra, rb = MemoryReplica("a"), MemoryReplica("b")
    for i in range(10):
        ra.append(b"a%d" % i)
    with trio.fail_after(20):
        async with node(tmp_path / "a", secret, ra) as a, node(tmp_path / "b", secret, rb) as b:
            # b holds the secret (an old topic, say) but a does not count it a member.
            b.logs.members.add(a.keys.device_public)
            events: list[SwarmEvent] = []

            async def watch() -> None:
                async for ev in a.swarm.subscribe():
                    events.append(ev)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                await trio.testing.wait_all_tasks_blocked()
                b.swarm.add_peers(LOG, (a.address,))
                a.swarm.add_peers(LOG, (b.address,))
                await trio.sleep(2.0)  # a few connections and drops
                nursery.cancel_scope.cancel()
            assert len(rb) == 0
            assert a.swarm.peers(LOG) == []
            assert not [e for e in events if e.type == "peer_connected"]


async def test_another_secret_is_another_swarm(tmp_path: Path) -> None:
    ra, rb = MemoryReplica("a"), MemoryReplica("b")
    ra.append(b"x")
    with trio.fail_after(20):
        async with node(tmp_path / "a", SwarmSecret(LOG, 1, os.urandom(32)), ra) as a, \
                node(tmp_path / "b", SwarmSecret(LOG, 1, os.urandom(32)), rb) as b:
            a.logs.members.add(b.keys.device_public)
            b.logs.members.add(a.keys.device_public)
            b.swarm.add_peers(LOG, (a.address,))  # the preamble names a topic a does not know
            await trio.sleep(1.5)
            assert len(rb) == 0
            assert b.swarm.peers(LOG) == []


async def eventually(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await trio.sleep(0.01)


async def test_a_rotation_moves_the_swarm_and_a_member_behind_is_granted_there(
        tmp_path: Path) -> None:
    s1, s2 = SwarmSecret(LOG, 1, os.urandom(32)), SwarmSecret(LOG, 2, os.urandom(32))
    ra, rb = MemoryReplica("a"), MemoryReplica("b")
    rb.ingest_now([ra.get(ra.append(b"genesis"))])
    with trio.fail_after(30):
        async with node(tmp_path / "a", s1, ra) as a, node(tmp_path / "b", s1, rb) as b:
            a.logs.members.add(b.keys.device_public)
            b.logs.members.add(a.keys.device_public)
            b.swarm.add_peers(LOG, (a.address,))
            await eventually(lambda: bool(a.swarm.peers(LOG)))
            # A change after which the log says "rotate": a rotates at once
            # (sealing to b, met) and moves to the new topic.
            a.logs.rotate_to = s2
            ra.append(b"removal of someone")
            await eventually(lambda: a.swarm.topic(LOG) == Topic.for_swarm(s2.secret))
            assert [(r.device, r.static) for r in a.logs.rotated_for] == [
                (b.keys.device_public, b.keys.static_public)]
            assert rb.has(ra.heads()[0])  # b got the change before a moved
            # b, still on s1, redials a there (accept-only now): a seals the
            # secret in force to it; b opens it (the log says so) and follows.
            await eventually(lambda: bool(a.logs.granted))
            assert a.logs.granted[0].static == b.keys.static_public
            b.logs.in_force = s2
            rb.append(b"the grant")
            await eventually(lambda: b.swarm.topic(LOG) == Topic.for_swarm(s2.secret))
            await eventually(lambda: bool(a.swarm.peers(LOG)) and bool(b.swarm.peers(LOG)))
    held = SwarmSecrets.open(tmp_path / "b").get(LOG)
    assert held is not None
    assert held.secret == s2.secret
    assert [p.epoch for p in SwarmSecrets.open(tmp_path / "b").previous(LOG)] == [1]


async def test_a_secret_held_beyond_the_topic_moves_the_swarm_on_the_next_change(
        tmp_path: Path) -> None:
    """A rotation written for the swarm being left lands in the store after the move.

    It happens when a second removal rotates (from the swarm object still
    current) while the move to the first rotation's topic hands over: the new
    swarm joins with the first secret, then the second is stored. The log
    says the second is in force and needs nothing more; the swarm must still
    move to it, or it stays alone on a topic nobody else uses.
    """
    s2, s3 = (SwarmSecret(LOG, e, os.urandom(32)) for e in (2, 3))
    ra, rb = MemoryReplica("a"), MemoryReplica("b")
    rb.ingest_now([ra.get(ra.append(b"genesis"))])
    with trio.fail_after(30):
        async with node(tmp_path / "a", s2, ra) as a, node(tmp_path / "b", s3, rb) as b:
            a.logs.members.add(b.keys.device_public)
            b.logs.members.add(a.keys.device_public)
            a.logs.in_force = b.logs.in_force = s3
            # a's log holds s3 in force and a holds s3, but a's swarm is on s2.
            a.secrets.put(s3)
            assert a.swarm.topic(LOG) == Topic.for_swarm(s2.secret)
            ra.append(b"any change")
            await eventually(lambda: a.swarm.topic(LOG) == Topic.for_swarm(s3.secret))
            b.swarm.add_peers(LOG, (a.address,))
            await eventually(lambda: bool(a.swarm.peers(LOG)) and bool(b.swarm.peers(LOG)))
