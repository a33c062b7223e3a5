"""How long an invitation answers on its topic: while usable, then HOSTING_GRACE more.

Real nodes over loopback on trio's MockClock *without* autojump: time moves only
when a test jumps it, so "one second before the grace ends" is exact. (Autojump
would also jump while a worker thread writes a record.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from p2pinvite.errors import UNIFORM_REFUSAL
from p2pinvite.invitations.codes import ShortCode
from p2pinvite.invitations.manager import HOSTING_GRACE
from p2pinvite.invitations.model import AuthMethod, InvitationKind, InvitationStatus
from p2pinvite.invitations.protocol import State
from p2pinvite.invitations.store import InvitationStore
from p2pinvite.net.topics import Topic

from .pairing_nodes import Node, open_node

T0 = 1_700_000_000.0  # open_node's default clock is T0 + trio.current_time()


def topic_of(node: Node, inv_id: bytes) -> Topic:
    return node.manager._topic(node.manager.get(inv_id))


async def settle() -> None:
    """Let every task run until blocked, twice: a pass that leaves a topic awaits once."""
    await trio.testing.wait_all_tasks_blocked()
    await trio.testing.wait_all_tasks_blocked()


async def wait_until(cond: Callable[[], bool]) -> None:
    """*cond* may wait on a worker thread (a record write): poll in real time, bounded."""
    for _ in range(2000):  # at most ~4 s of real time
        await trio.testing.wait_all_tasks_blocked()
        if cond():
            return
        await trio.to_thread.run_sync(time.sleep, 0.002)
    raise AssertionError("condition not reached")


async def assert_left_after(node: Node, topic: Topic, clock: MockClock, seconds: float) -> None:
    """*topic* is still joined one second before *seconds* have passed, and left at them."""
    clock.jump(seconds - 1)
    await settle()
    assert node.network.is_joined(topic)
    clock.jump(1)
    await settle()
    assert not node.network.is_joined(topic)


def wrong(pin: str) -> str:
    return "135792" if pin != "135792" else "246813"


async def test_an_exhausted_invitation_answers_for_the_grace_then_leaves(
        tmp_path: Path, mock_clock: MockClock) -> None:
    async with open_node(tmp_path / "host", name="Alice") as host, \
            open_node(tmp_path / "guest", name="Bob") as guest, \
            open_node(tmp_path / "late", name="Carol") as late:
        space = host.spaces.create_space("Team")
        created = await host.manager.create(kind="space", space_id=space)  # single use
        inv_id = created.invitation.id
        topic = topic_of(host, inv_id)
        assert host.network.is_joined(topic)
        mock_clock.jump(100)  # the grace counts from the admission, not the creation
        events = await guest.accept(created.code)
        assert events[-1].state is State.SUCCESS
        await wait_until(lambda: not host.store.is_dirty(inv_id))
        # Exhausted but still answering: a late guest is told, rather than finding no host.
        events = await late.accept(created.code)
        assert (events[-1].state, events[-1].reason) == (State.ERROR, UNIFORM_REFUSAL)
        await assert_left_after(host, topic, mock_clock, HOSTING_GRACE)
        # Only the hosting ended: the record stays listed for its retention.
        assert host.manager.get(inv_id).status(host.manager._clock()) \
            is InvitationStatus.EXHAUSTED
        assert inv_id in [i.id for i in host.manager.list(include_all=True)]


async def test_an_expired_invitation_leaves_its_topic_after_the_grace(
        tmp_path: Path, mock_clock: MockClock) -> None:
    async with open_node(tmp_path / "host", name="Alice") as host:
        kept = (await host.manager.create(kind="device", expires_in=7200)).invitation.id
        inv_id = (await host.manager.create(kind="device", expires_in=3600)).invitation.id
        topic = topic_of(host, inv_id)
        mock_clock.jump(3600)
        assert host.manager.get(inv_id).status(host.manager._clock()) \
            is InvitationStatus.EXPIRED
        await assert_left_after(host, topic, mock_clock, HOSTING_GRACE)
        assert host.network.is_joined(topic_of(host, kept))  # the other one is untouched


async def test_a_locked_invitation_answers_for_the_grace_after_the_lock(
        tmp_path: Path, mock_clock: MockClock) -> None:
    async with open_node(tmp_path / "host", name="Alice") as host, \
            open_node(tmp_path / "guest") as guest:
        created = await host.manager.create(kind="device", auth="pin")
        assert created.pin is not None
        topic = topic_of(host, created.invitation.id)
        mock_clock.jump(1000)
        for _ in range(3):
            events = await guest.accept(created.code, pin=wrong(created.pin))
        assert (events[-1].state, events[-1].attempts_left) == (State.LOCKED, 0)
        await assert_left_after(host, topic, mock_clock, HOSTING_GRACE)


async def test_a_revoked_invitation_refuses_at_once_for_the_grace_then_leaves(
        tmp_path: Path, mock_clock: MockClock) -> None:
    async with open_node(tmp_path / "host", name="Alice") as host, \
            open_node(tmp_path / "guest") as guest:
        created = await host.manager.create(kind="device")
        inv_id = created.invitation.id
        topic = topic_of(host, inv_id)
        mock_clock.jump(100)  # the grace counts from the revocation
        await host.manager.revoke(inv_id)
        # A guest arriving now is told at once, instead of looking for a host in vain.
        events = await guest.accept(created.code)
        assert (events[-1].state, events[-1].reason) == (State.ERROR, UNIFORM_REFUSAL)
        await assert_left_after(host, topic, mock_clock, HOSTING_GRACE)


async def test_a_restarted_host_answers_a_locked_invitation_for_the_grace_after_the_lock(
        tmp_path: Path, mock_clock: MockClock) -> None:
    async with open_node(tmp_path / "guest") as guest:
        async with open_node(tmp_path / "host", name="Alice") as host:
            created = await host.manager.create(kind="device", auth="pin")
            assert created.pin is not None
            inv_id = created.invitation.id
            mock_clock.jump(50)
            for _ in range(3):
                events = await guest.accept(created.code, pin=wrong(created.pin))
            assert (events[-1].state, events[-1].attempts_left) == (State.LOCKED, 0)
            locked_at = host.manager.get(inv_id).locked_at
            assert locked_at == T0 + 50
            address = host.address  # the code's hint: the restarted host listens there again
        mock_clock.jump(HOSTING_GRACE - 10)
        async with open_node(tmp_path / "host", listen=address) as host:
            topic = topic_of(host, inv_id)
            assert host.network.is_joined(topic)  # the lock time is on disk
            # The right PIN after the restart: refused at once, not admitted.
            events = await guest.accept(created.code, pin=created.pin)
            assert (events[-1].state, events[-1].reason) == (State.ERROR, UNIFORM_REFUSAL)
            await assert_left_after(host, topic, mock_clock, 10)


async def test_a_handshake_in_progress_is_not_cut_when_the_grace_ends(
        tmp_path: Path, mock_clock: MockClock) -> None:
    async with open_node(tmp_path / "host", name="Alice") as host:
        inv_id = (await host.manager.create(kind="device", expires_in=60)).invitation.id
        topic = topic_of(host, inv_id)
        # A guest resuming its admission is still being served.
        host.manager._ctx.active[inv_id] = {trio.CancelScope()}
        mock_clock.jump(60 + HOSTING_GRACE)
        await settle()
        assert host.network.is_joined(topic)
        host.manager._ctx.active[inv_id] = set()
        mock_clock.jump(4.9)
        await settle()
        assert host.network.is_joined(topic)  # looked at again 5 s later, not sooner
        mock_clock.jump(0.1)
        await settle()
        assert not host.network.is_joined(topic)


async def test_a_restart_hosts_finished_invitations_only_within_the_grace(
        tmp_path: Path, mock_clock: MockClock) -> None:
    async with open_node(tmp_path / "guest", name="Bob") as guest:
        async with open_node(tmp_path / "host", name="Alice") as host:
            space = host.spaces.create_space("Team")
            created = await host.manager.create(kind="space", space_id=space)
            pending = (await host.manager.create(kind="device")).invitation.id
            inv_id = created.invitation.id
            assert (await guest.accept(created.code))[-1].state is State.SUCCESS
            used_at = host.manager.get(inv_id).accepted_by[0][1]
            await wait_until(lambda: not host.store.is_dirty(inv_id))

        def clock_at(t: float) -> Callable[[], float]:
            offset = t - trio.current_time()
            return lambda: offset + trio.current_time()

        async with open_node(tmp_path / "host",
                             clock=clock_at(used_at + HOSTING_GRACE - 10)) as host:
            assert host.network.is_joined(topic_of(host, inv_id))
            mock_clock.jump(10)
            await settle()
            assert not host.network.is_joined(topic_of(host, inv_id))
        async with open_node(tmp_path / "host", clock=clock_at(used_at + HOSTING_GRACE)) as host:
            assert not host.network.is_joined(topic_of(host, inv_id))
            assert host.network.is_joined(topic_of(host, pending))


@pytest.fixture
def scripted_discriminators(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the store draw short-code discriminators from a list, in order."""
    script: list[str] = []
    real = ShortCode.generate

    def generate(discriminator: str | None = None) -> ShortCode:
        return real(script.pop(0))  # an IndexError if the store draws more than scripted

    monkeypatch.setattr(ShortCode, "generate", staticmethod(generate))
    return script


def test_the_store_skips_the_discriminators_the_caller_names(
        tmp_path: Path, scripted_discriminators: list[str]) -> None:
    store = InvitationStore.open(tmp_path / "invitations")
    scripted_discriminators[:] = ["4821", "4821", "7390"]
    first = store.create(kind=InvitationKind.DEVICE, target=bytes(32), created_by=bytes(32),
                         now=T0, auth=AuthMethod.SHORT)
    second = store.create(kind=InvitationKind.DEVICE, target=bytes(32), created_by=bytes(32),
                          now=T0, auth=AuthMethod.SHORT, taken_discriminators={"4821"})
    assert (first.short_discriminator, second.short_discriminator) == ("4821", "7390")
    assert scripted_discriminators == []


async def test_a_new_short_code_avoids_a_finished_one_still_hosted(
        tmp_path: Path, mock_clock: MockClock, scripted_discriminators: list[str]) -> None:
    async with open_node(tmp_path / "host", name="Alice") as host:
        scripted_discriminators[:] = ["4821"]
        old = (await host.manager.create(kind="device", auth="short")).invitation.id
        mock_clock.jump(15 * 60)  # the short code's default life: expired, within its grace
        await settle()
        assert host.network.is_joined(topic_of(host, old))
        # The first draw is the expired one's discriminator, whose topic is still joined.
        scripted_discriminators[:] = ["4821", "7390"]
        new = (await host.manager.create(kind="device", auth="short")).invitation
        assert new.short_discriminator == "7390"
        assert host.network.is_joined(topic_of(host, new.id))
        assert host.network.is_joined(topic_of(host, old))
