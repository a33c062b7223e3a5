"""Invitations end to end over real loopback TCP: two (or more) nodes, each in its own home."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio

from p2pinvite.errors import UNIFORM_REFUSAL, ConnectionClosed, InvitationError
from p2pinvite.halo.credentials import Role, issue_space_member
from p2pinvite.halo.keys import DeviceKeys, SigningKey
from p2pinvite.halo.swarm_secrets import SwarmSecret, SwarmSecrets, seal_for_device
from p2pinvite.invitations import handlers
from p2pinvite.invitations.codes import LinkCode, generate_pin
from p2pinvite.invitations.model import Invitation
from p2pinvite.invitations.protocol import (
    AdmissionRequested,
    ChallengeMsg,
    GuestProtocol,
    GuestRequest,
    HostChallenged,
    HostInfo,
    Kind,
    Refused,
    RefusedMsg,
    SendMessage,
    Session,
    State,
    decode_message,
    encode_message,
)
from p2pinvite.net.secure import ConnectionBroken, SecureStream
from p2pinvite.net.topics import Topic

from .pairing_nodes import Node, open_node


def states(events: list) -> list[State]:
    return [e.state for e in events]


def assert_admitted(events: list) -> None:
    assert events[-1].state is State.SUCCESS, events[-1]
    assert events[-1].result is not None


# -- device invitations ----------------------------------------------------------------


@pytest.mark.parametrize("auth", ["none", "pin", "key"])
async def test_device_invitation_each_auth(tmp_path: Path, auth: str) -> None:
    admission = SigningKey.generate()
    async with open_node(tmp_path / "host", name="Alice") as host, \
            open_node(tmp_path / "guest") as guest:
        created = await host.manager.create(
            kind="device", auth=auth,
            admission_key=admission.public_key if auth == "key" else None)
        assert (created.pin is not None) == (auth == "pin")
        with trio.fail_after(30):
            events = await guest.accept(created.code, pin=created.pin,
                                        admission_key=admission if auth == "key" else None)
        expected = [State.CONNECTING, State.CONNECTED, State.READY_FOR_AUTHENTICATION]
        if auth == "pin":  # key proofs are pipelined with the admission request
            expected.append(State.AUTHENTICATING)
        expected += [State.ADMITTING, State.SUCCESS]
        assert states(events) == expected
        assert guest.identity.has_identity
        assert guest.identity.identity_key == host.identity.identity_key
        assert guest.identity.devices() == host.identity.devices()
        assert guest.identity.device.device_public in host.identity.devices()
        inv = host.manager.get(created.invitation.id)
        assert inv.uses == 1
        assert inv.failed_attempts == 0
        assert inv.status(host.manager._clock()).value == "exhausted"


async def test_device_already_having_identity_is_refused_locally(tmp_path: Path) -> None:
    async with open_node(tmp_path / "host", name="Alice") as host, \
            open_node(tmp_path / "guest", name="Bob") as guest:
        created = await host.manager.create(kind="device")
        events = await guest.accept(created.code)
        assert states(events) == [State.ERROR]
        assert events[-1].reason == "already_has_identity"
        assert host.manager.get(created.invitation.id).uses == 0


# -- space invitations -----------------------------------------------------------------


@pytest.mark.parametrize("auth", ["none", "pin", "key"])
async def test_space_invitation_each_auth(tmp_path: Path, auth: str) -> None:
    admission = SigningKey.generate()
    async with open_node(tmp_path / "host", name="Alice") as host, \
            open_node(tmp_path / "guest", name="Bob") as guest:
        space = host.spaces.create_space("Team")
        created = await host.manager.create(
            kind="space", space_id=space, role="editor", auth=auth,
            admission_key=admission.public_key if auth == "key" else None)
        with trio.fail_after(30):
            events = await guest.accept(created.code, pin=created.pin,
                                        admission_key=admission if auth == "key" else None)
        assert_admitted(events)
        assert events[-1].result.target == space
        assert guest.spaces.list_spaces() == [space]
        host_members = host.spaces.members(space)
        assert guest.spaces.members(space) == host_members
        bob = guest.identity.identity_key
        assert host.spaces.open_space(space).state.role_of(bob) is Role.EDITOR
        assert [m.name for m in host_members] == ["Alice", "Bob"]


async def test_already_member_is_refused(tmp_path: Path) -> None:
    async with open_node(tmp_path / "host", name="Alice") as host, \
            open_node(tmp_path / "guest", name="Bob") as guest:
        space = host.spaces.create_space("Team")
        first = await host.manager.create(kind="space", space_id=space)
        assert_admitted(await guest.accept(first.code))
        second = await host.manager.create(kind="space", space_id=space)
        events = await guest.accept(second.code)
        assert events[-1].reason == "already_member"  # we already hold the space
        # The host refuses too, even when the guest no longer holds the log.
        guest.spaces.close()
        shutil.rmtree(guest.home / "spaces" / space.hex())
        events = await guest.accept(second.code)
        assert events[-1].state is State.ERROR
        assert events[-1].reason == "already_member"
        assert host.manager.get(second.invitation.id).uses == 0


@contextlib.asynccontextmanager
async def owner_editor_guest(tmp_path: Path
                             ) -> AsyncIterator[tuple[Node, Node, Node, bytes, Invitation]]:
    """Alice owns space "Team", Bob joined it as an EDITOR (no right to admit), Carol
    has an identity and no space. Yields the nodes, the space and Bob's invitation."""
    async with open_node(tmp_path / "owner", name="Alice") as owner, \
            open_node(tmp_path / "editor", name="Bob") as editor, \
            open_node(tmp_path / "guest", name="Carol") as guest:
        space = owner.spaces.create_space("Team")
        created = await owner.manager.create(kind="space", space_id=space, role="editor")
        assert_admitted(await editor.accept(created.code))
        yield owner, editor, guest, space, created.invitation


async def slip_past_create(editor: Node, space: bytes, like: Invitation) -> str:
    """A READER invitation into *space* written straight into *editor*'s store, hosted,
    and its link code (the manager's create() refuses a non-admin)."""
    inv = editor.store.create(kind=like.kind, target=space,
                              created_by=editor.identity.identity_key,
                              now=editor.manager._clock(), role="reader")
    await editor.manager._host(inv)
    return LinkCode.for_invitation(inv, host_device_key=editor.identity.device.device_public,
                                   hints=(editor.address,)).encode()


async def test_member_without_admin_rights_cannot_host(tmp_path: Path) -> None:
    async with owner_editor_guest(tmp_path) as (_, editor, guest, space, bobs):
        with pytest.raises(InvitationError) as info:
            await editor.manager.create(kind="space", space_id=space)
        assert info.value.reason == "not_admin"
        # Even with a record slipped past create(), the editor's node will not host it.
        code = await slip_past_create(editor, space, bobs)
        feed = editor.manager.subscribe()
        async with trio.open_nursery() as nursery:
            seen: list = []

            async def watch() -> None:
                async for ev in feed:
                    seen.append(ev)
                    if ev.type == "refused":
                        return

            nursery.start_soon(watch)
            await trio.sleep(0)
            events = await guest.accept(code)
        assert events[-1].state is State.ERROR
        assert events[-1].reason == UNIFORM_REFUSAL
        assert seen[-1].reason == "not_admin"
        assert guest.spaces.list_spaces() == []


async def test_guest_rejects_a_forged_log_from_a_member_without_admin_rights(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rogue EDITOR node skips its own checks and sends a log with a membership it
    signed itself: the guest checks the log's rules, installs nothing and says why."""
    async with owner_editor_guest(tmp_path) as (owner, editor, guest, space, bobs):
        ident = editor.identity
        rogue = HostInfo(ident.identity_key, ident.device.device_public,
                         tuple(ident.device_chain()))
        forged: list[bytes] = []

        async def admit_anyway(self: object, inv: object, ev: AdmissionRequested
                               ) -> tuple[bytes, list[bytes], bool]:
            assert ev.identity is not None
            log = editor.spaces.open_space(space).log
            cred = issue_space_member(ident.device, issuer=ident.identity_key, space=space,
                                      member=ev.identity, role=Role.READER, name=ev.name,
                                      parents=log.append_parents(),
                                      chain=ident.device_chain()).encode()
            forged.append(cred)
            return cred, [*log.raw_entries(), cred], False

        monkeypatch.setattr(handlers._HostDriver, "_host_info", lambda self, inv: rogue)
        monkeypatch.setattr(handlers._HostDriver, "_admit_member", admit_anyway)
        code = await slip_past_create(editor, space, bobs)
        with trio.fail_after(30):
            events = await guest.accept(code)
        assert len(forged) == 1  # the rogue host did answer with its forged admission
        assert events[-1].state is State.ERROR
        assert events[-1].reason.startswith("admission did not verify")
        assert "only OWNER and ADMIN members may admit" in events[-1].reason  # not_admin
        assert guest.spaces.list_spaces() == []
        assert list((guest.home / "spaces").iterdir()) == []
        # The rogue's own log never held the forged membership either.
        assert [m.name for m in owner.spaces.members(space)] == ["Alice", "Bob"]


async def test_only_owner_may_invite_admins(tmp_path: Path) -> None:
    async with open_node(tmp_path / "owner", name="Alice") as owner, \
            open_node(tmp_path / "admin", name="Bob") as admin:
        space = owner.spaces.create_space("Team")
        created = await owner.manager.create(kind="space", space_id=space, role="admin")
        assert_admitted(await admin.accept(created.code))
        assert owner.spaces.open_space(space).state.role_of(
            admin.identity.identity_key) is Role.ADMIN
        with pytest.raises(InvitationError) as info:
            await admin.manager.create(kind="space", space_id=space, role="admin")
        assert info.value.reason == "owner_required"
        ok = await admin.manager.create(kind="space", space_id=space, role="reader")
        assert ok.invitation.role == "reader"



# -- attempts and locking ------------------------------------------------------------------


def wrong_pin(right: str) -> str:
    while (pin := generate_pin()) == right:
        pass
    return pin


async def test_wrong_pin_three_times_locks_with_reconnects(tmp_path: Path) -> None:
    async with open_node(tmp_path / "host", name="Alice") as host, \
            open_node(tmp_path / "guest") as guest:
        created = await host.manager.create(kind="device", auth="pin")
        bad = wrong_pin(created.pin)
        for left in (2, 1):
            events = await guest.accept(created.code, pin=bad)
            assert events[-1].state is State.ERROR
            assert (events[-1].reason, events[-1].attempts_left) == ("wrong_pin", left)
        events = await guest.accept(created.code, pin=bad)
        assert events[-1].state is State.LOCKED
        assert (events[-1].reason, events[-1].attempts_left) == ("wrong_pin", 0)
        # Locked: even the right PIN is refused, uniformly; the owner sees why.
        events = await guest.accept(created.code, pin=created.pin)
        assert events[-1].state is State.ERROR
        assert events[-1].reason == UNIFORM_REFUSAL
        assert events[-1].attempts_left is None
        assert host.manager.validate(created.code).reason == "locked"
        assert not guest.identity.has_identity
        assert host.identity.devices() == [host.identity.device.device_public]


async def test_wrong_pin_lock_survives_host_restarts(tmp_path: Path) -> None:
    async with open_node(tmp_path / "guest", connect_timeout=0.5) as guest:
        async with open_node(tmp_path / "host", name="Alice") as host:
            port = host.address[1]
            created = await host.manager.create(kind="device", auth="pin")
            bad = wrong_pin(created.pin)
            events = await guest.accept(created.code, pin=bad)
            assert events[-1].attempts_left == 2
        for left in (1, 0):
            async with open_node(tmp_path / "host", listen=("127.0.0.1", port)) as host:
                assert host.manager.get(created.invitation.id).failed_attempts == 3 - left - 1
                events = await guest.accept(created.code, pin=bad)
                assert events[-1].attempts_left == left
        async with open_node(tmp_path / "host", listen=("127.0.0.1", port)) as host:
            assert host.manager.validate(created.code).reason == "locked"
            # Still answering (its lock time is on disk): the right PIN is refused
            # at once, uniformly, not admitted and not left to time out.
            events = await guest.accept(created.code, pin=created.pin)
            assert (events[-1].state, events[-1].reason) == (State.ERROR, UNIFORM_REFUSAL)
            assert not guest.identity.has_identity


@pytest.mark.parametrize("kind", ["device", "space"])
async def test_an_admission_hands_over_the_swarm_secret_sealed_to_the_guest(
        tmp_path: Path, kind: str) -> None:
    async with open_node(tmp_path / "host", name="Alice") as host, \
            open_node(tmp_path / "guest", name=None if kind == "device" else "Bob") as guest:
        if kind == "device":
            created = await host.manager.create(kind="device", auth="pin")
            log = host.identity.identity_key
        else:
            log = host.spaces.create_space("Team")
            created = await host.manager.create(kind="space", space_id=log, auth="pin")
        assert host.secrets.get(log) is None  # made on the first admission, then kept
        assert_admitted(await guest.accept(created.code, pin=created.pin))
        held = host.secrets.get(log)
        assert held is not None
        assert guest.secrets.get(log) == held  # the same epoch and secret, and on disk:
        assert SwarmSecrets.open(guest.home).get(log) == held


async def test_a_swarm_secret_sealed_to_another_device_installs_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with open_node(tmp_path / "host", name="Alice") as host, \
            open_node(tmp_path / "guest", name="Bob") as guest:
        space = host.spaces.create_space("Team")
        created = await host.manager.create(kind="space", space_id=space)
        stranger = DeviceKeys.generate()

        def misdirected(secret: SwarmSecret, device_static: bytes) -> bytes:
            return seal_for_device(secret, stranger.static_public)

        monkeypatch.setattr(handlers, "seal_for_device", misdirected)
        events = await guest.accept(created.code)
        assert events[-1].state is State.ERROR
        assert "swarm secret is not sealed to this device" in (events[-1].reason or "")
        assert not guest.spaces.has_space(space)
        assert guest.secrets.get(space) is None


async def test_wrong_pins_on_a_used_up_space_invitation_are_counted(tmp_path: Path) -> None:
    # An exhausted space invitation still runs the PAKE (its admitted guest may be
    # resuming, and a guest's identity is only known from its sealed admit), so
    # without counting it would be a PIN oracle for as long as the host answers.
    async with open_node(tmp_path / "host", name="Alice") as host, \
            open_node(tmp_path / "bob", name="Bob") as bob, \
            open_node(tmp_path / "carol", name="Carol") as carol:
        space = host.spaces.create_space("Team")
        created = await host.manager.create(kind="space", space_id=space, auth="pin")
        assert_admitted(await bob.accept(created.code, pin=created.pin))
        inv_id = created.invitation.id
        bad = wrong_pin(created.pin)
        for left in (2, 1):
            events = await carol.accept(created.code, pin=bad)
            assert (events[-1].reason, events[-1].attempts_left) == ("wrong_pin", left)
        # The admitted guest (as if it had lost its copy) still resumes with the right
        # PIN meanwhile, and that costs nothing.
        bob.spaces.close()
        shutil.rmtree(bob.home / "spaces" / space.hex())
        assert_admitted(await bob.accept(created.code, pin=created.pin))
        assert host.manager.get(inv_id).failed_attempts == 2
        events = await carol.accept(created.code, pin=bad)
        assert (events[-1].state, events[-1].attempts_left) == (State.LOCKED, 0)
        inv = host.manager.get(inv_id)
        assert (inv.failed_attempts, inv.uses) == (3, 1)
        # Locked: the next proof is not even looked at.
        events = await carol.accept(created.code, pin=created.pin)
        assert (events[-1].state, events[-1].reason) == (State.ERROR, UNIFORM_REFUSAL)
        assert not carol.spaces.has_space(space)


async def test_right_pin_after_a_wrong_one_succeeds_and_restores_count(tmp_path: Path) -> None:
    async with open_node(tmp_path / "host", name="Alice") as host, \
            open_node(tmp_path / "guest") as guest:
        created = await host.manager.create(kind="device", auth="pin")
        await guest.accept(created.code, pin=wrong_pin(created.pin))
        assert_admitted(await guest.accept(created.code, pin=created.pin))
        assert host.manager.get(created.invitation.id).failed_attempts == 1


async def test_a_failed_accept_leaves_no_prepared_directory(tmp_path: Path) -> None:
    """The guest prepares the space's directory while it connects; a refusal removes it."""
    async with open_node(tmp_path / "host", name="Alice") as host, \
            open_node(tmp_path / "guest", name="Bob") as guest:
        space = host.spaces.create_space("Team")
        created = await host.manager.create(kind="space", space_id=space, auth="pin")
        spaces_dir = guest.home / "spaces"
        with trio.fail_after(30):
            events = await guest.accept(created.code, pin=wrong_pin(created.pin))
            assert events[-1].reason == "wrong_pin"
            assert spaces_dir.is_dir()  # prepared, durable...
            assert list(spaces_dir.iterdir()) == []  # ...and the empty space directory gone
            assert_admitted(await guest.accept(created.code, pin=created.pin))
        assert [d.name for d in spaces_dir.iterdir()] == [space.hex()]
        assert guest.spaces.list_spaces() == [space]


async def test_wrong_admission_key_is_counted(tmp_path: Path) -> None:
    async with open_node(tmp_path / "host", name="Alice") as host, \
            open_node(tmp_path / "guest") as guest:
        right = SigningKey.generate()
        created = await host.manager.create(kind="device", auth="key",
                                            admission_key=right.public_key)
        events = await guest.accept(created.code, admission_key=SigningKey.generate())
        assert (events[-1].reason, events[-1].attempts_left) == ("wrong_key", 2)
        assert_admitted(await guest.accept(created.code, admission_key=right))


# -- uses ------------------------------------------------------------------------------


async def open_guests(stack: AsyncExitStack, tmp_path: Path, n: int, *,
                      named: bool = False) -> list[Node]:
    return [await stack.enter_async_context(
        open_node(tmp_path / f"g{i}", name=f"G{i}" if named else None)) for i in range(n)]


async def test_single_use_raced_by_20_guests_admits_exactly_one(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        host = await stack.enter_async_context(open_node(tmp_path / "host", name="Alice"))
        guests = await open_guests(stack, tmp_path, 20)
        created = await host.manager.create(kind="device")
        results: list[list] = []

        async def go(g: Node) -> None:
            results.append(await g.accept(created.code))

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for g in guests:
                    nursery.start_soon(go, g)
        finals = [r[-1] for r in results]
        assert sum(f.state is State.SUCCESS for f in finals) == 1
        assert {f.reason for f in finals if f.state is not State.SUCCESS} == {UNIFORM_REFUSAL}
        assert sum(g.identity.has_identity for g in guests) == 1
        assert len(host.identity.devices()) == 2
        inv = host.manager.get(created.invitation.id)
        assert inv.uses == 1
        assert host.store.reserved(inv.id) == 0


async def test_max_uses_5_admits_5(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        host = await stack.enter_async_context(open_node(tmp_path / "host", name="Alice"))
        guests = await open_guests(stack, tmp_path, 6, named=True)
        space = host.spaces.create_space("Team")
        created = await host.manager.create(kind="space", space_id=space, auth="pin",
                                            max_uses=5)
        results: list[list] = []

        async def go(g: Node) -> None:
            results.append(await g.accept(created.code, pin=created.pin))

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for g in guests[:5]:
                    nursery.start_soon(go, g)
        assert all(r[-1].state is State.SUCCESS for r in results)
        assert len(host.spaces.members(space)) == 6
        events = await guests[5].accept(created.code, pin=created.pin)
        assert events[-1].reason == UNIFORM_REFUSAL
        inv = host.manager.get(created.invitation.id)
        assert (inv.uses, inv.failed_attempts) == (5, 0)
        assert host.manager.validate(created.code).reason == "exhausted"
        assert {k for k, _ in inv.accepted_by} == {g.identity.identity_key for g in guests[:5]}


# -- refusals: uniform to the guest, precise to the owner ---------------------------------


async def _refusal_events(host: Node, guest: Node, code: str, **kw: object) -> tuple[list, list]:
    seen: list = []
    feed = host.manager.subscribe()

    async def watch() -> None:
        async for ev in feed:
            seen.append(ev)
            if ev.type == "refused":
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await trio.sleep(0)
        events = await guest.accept(code, **kw)
        with trio.fail_after(10):
            while not seen or seen[-1].type != "refused":
                await trio.sleep(0.01)
    return events, seen


def extend_expiry(code: str, by: int) -> str:
    link = LinkCode.parse(code)
    return dataclasses.replace(link, expires_at=link.expires_at + by).encode()


async def test_expired_is_refused_uniformly(tmp_path: Path, autojump_clock: object) -> None:
    async with open_node(tmp_path / "host", name="Alice") as host, \
            open_node(tmp_path / "guest") as guest:
        created = await host.manager.create(kind="device", auth="pin", expires_in=3600)
        assert host.manager.validate(created.code).valid
        await trio.sleep(3601)  # autojump: an hour passes at once
        assert host.manager.validate(created.code).reason == "expired"
        assert [i.id for i in host.manager.list()] == []
        assert [i.id for i in host.manager.list(include_all=True)] == [created.invitation.id]
        # The guest's own check uses the code's expiry...
        events = await guest.accept(created.code, pin=created.pin)
        assert states(events) == [State.EXPIRED]
        # ...and a guest that lies about it gets the uniform refusal.
        events, seen = await _refusal_events(host, guest, extend_expiry(created.code, 86400),
                                             pin=created.pin)
        assert events[-1].reason == UNIFORM_REFUSAL
        assert seen[-1].reason == "expired"
        assert not guest.identity.has_identity


async def test_revoked_is_refused_at_once_and_tombstoned(tmp_path: Path) -> None:
    async with open_node(tmp_path / "host", name="Alice") as host, \
            open_node(tmp_path / "guest", connect_timeout=0.5) as guest:
        created = await host.manager.create(kind="device", note="for Bob's laptop")
        tomb = await host.manager.revoke(created.invitation.id)
        assert tomb.revoked_by == host.identity.identity_key
        assert host.manager.validate(created.code).reason == "revoked"
        assert host.manager.list() == []
        assert host.manager.list(include_all=True)[0].note == "for Bob's laptop"
        events = await guest.accept(created.code)
        assert (events[-1].state, events[-1].reason) == (State.ERROR, UNIFORM_REFUSAL)
        assert not guest.identity.has_identity


async def _hand_driven_guest(host: Node, guest: Node, *, kind: Kind = "device",
                             identity: bytes | None = None
                             ) -> tuple[LinkCode, GuestProtocol, SecureStream, Session]:
    """A PIN device invitation on *host* and a connection to it, driven by hand."""
    created = await host.manager.create(kind="device", auth="pin")
    link = LinkCode.parse(created.code)
    keys = guest.identity.device
    machine = GuestProtocol(GuestRequest(
        kind=kind, method="pin", device=keys.device_public,
        invitation_id=link.invitation_id, host_device=link.host_device_key,
        password=created.pin.encode(), identity=identity))
    stream = await guest.network.connect(Topic.from_secret(link.secret), hints=link.hints,
                                         mdns=False)
    session = Session(stream.handshake_hash, keys.static_public, stream.remote_static,
                      stream.remote_payload)
    return link, machine, stream, session


async def test_the_host_challenges_before_the_request_arrives(tmp_path: Path) -> None:
    """The topic names the invitation, so the host speaks first: challenge and CPace share
    reach a guest that has sent nothing yet, and the run then completes as usual."""
    async with open_node(tmp_path / "host", name="Alice") as host, \
            open_node(tmp_path / "guest") as guest:
        with trio.fail_after(10):
            link, machine, stream, session = await _hand_driven_guest(host, guest)
            challenge, pake = [await stream.receive_message() for _ in range(2)]
            assert (decode_message(challenge).T, decode_message(pake).T) == ("challenge", "pake")
            for ev in machine.connected(session):  # only now: the request and our share
                await stream.send_message(ev.data)
            assert [type(e) for e in machine.receive_message(challenge)] == [HostChallenged]
            assert machine.host_verified() == []
            await stream.send_messages([ev.data for ev in machine.receive_message(pake)])
            answers = [machine.receive_message(await stream.receive_message()) for _ in range(2)]
            assert [type(e).__name__ for ev in answers for e in ev] == [
                "Authenticated", "AdmissionReceived"]
            await stream.aclose()
        assert host.store.get(link.invitation_id).uses == 1


async def test_revoke_stops_a_handshake_in_progress(tmp_path: Path) -> None:
    """A guest that paused after the host's CPace share is told the uniform refusal on revoke."""
    async with open_node(tmp_path / "host", name="Alice") as host, \
            open_node(tmp_path / "guest") as guest:
        with trio.fail_after(10):
            link, machine, stream, session = await _hand_driven_guest(host, guest)
            for ev in machine.connected(session):  # the request and our CPace share
                await stream.send_message(ev.data)
            assert [type(e) for e in machine.receive_message(await stream.receive_message())] \
                == [HostChallenged]
            assert machine.host_verified() == []
            # The host's share: the machine answers with its tag and its sealed
            # admit, which we hold back.
            assert [type(e) for e in machine.receive_message(await stream.receive_message())] \
                == [SendMessage, SendMessage]
            assert host.store.get(link.invitation_id).uses == 0
            await host.manager.revoke(link.invitation_id)
            assert machine.receive_message(await stream.receive_message()) == [
                Refused(UNIFORM_REFUSAL)]
            await stream.aclose()
        assert host.manager.validate(link.encode()).reason == "revoked"
        assert host.manager._ctx.active == {}


async def test_host_lingers_after_a_refusal_until_the_guest_hangs_up(tmp_path: Path) -> None:
    """After `refused` the host ends its side cleanly and drains the guest's pipelined
    input instead of closing on it (which would make the kernel send a reset)."""
    async with open_node(tmp_path / "host", name="Alice") as host, \
            open_node(tmp_path / "guest") as guest:
        with trio.fail_after(10):
            link, machine, stream, session = await _hand_driven_guest(
                host, guest, kind="space", identity=os.urandom(32))  # the wrong kind
            sends = [ev.data for ev in machine.connected(session)]
            await stream.send_messages([*sends, b"\x00" * 200_000])  # more than one read
            # The host challenged us before it read the request; then it refuses it.
            got = [decode_message(await stream.receive_message()) for _ in range(3)]
            assert [m.T for m in got] == ["challenge", "pake", "refused"]
            assert got[-1] == RefusedMsg(UNIFORM_REFUSAL)
            with pytest.raises(ConnectionClosed) as end:
                await stream.receive_message()
            assert not isinstance(end.value, ConnectionBroken)  # the end marker: a clean end
            await trio.sleep(0.2)
            assert link.invitation_id in host.manager._ctx.active  # still draining us
            await stream.aclose()
            while host.manager._ctx.active:  # it hangs up once we did
                await trio.sleep(0.01)


# -- a man in the middle holding the link ------------------------------------------------


async def test_mitm_with_the_link_but_not_the_pin_admits_no_one(tmp_path: Path) -> None:
    """Mallory holds the link (so both Noise sessions complete), relays every message
    between the real guest and the real host, and swaps in her own (valid) identity.
    The two sessions have different handshake hashes, so CPace cannot succeed."""
    async with open_node(tmp_path / "host", name="Alice") as host, \
            open_node(tmp_path / "guest", name="Bob") as guest, \
            open_node(tmp_path / "mitm", name="Mallory") as mitm:
        space = host.spaces.create_space("Team")
        created = await host.manager.create(kind="space", space_id=space, auth="pin")
        link = LinkCode.parse(created.code)
        topic = Topic.from_secret(link.secret)
        seen: list[bytes] = []
        to_host: list[str] = []
        to_guest: list[str] = []
        me = HostInfo(mitm.identity.identity_key, mitm.identity.device.device_public,
                      tuple(mitm.identity.device_chain()))

        async def relay(down: object) -> None:
            up = await mitm.network.connect(topic, hints=link.hints, mdns=False, timeout=5)

            async def pump(src: object, dst: object, rewrite: bool) -> None:
                while True:
                    data = await src.receive_message()
                    seen.append(data)
                    (to_guest if rewrite else to_host).append(decode_message(data).T)
                    msg = decode_message(data)
                    if rewrite and isinstance(msg, ChallengeMsg):
                        data = encode_message(ChallengeMsg(msg.method, me))
                    await dst.send_message(data)

            with contextlib.suppress(Exception):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(pump, down, up, False)
                    nursery.start_soon(pump, up, down, True)
            await up.aclose()

        await mitm.network.join(topic, relay, advertise=False)
        # The guest was handed a link whose host key and address are Mallory's.
        forged = dataclasses.replace(link, host_device_key=me.device,
                                     hints=(mitm.address,)).encode()
        with trio.fail_after(20):
            events = await guest.accept(forged, pin=created.pin)
        assert events[-1].state is State.ERROR
        assert (events[-1].reason, events[-1].attempts_left) == ("wrong_pin", 2)
        assert guest.spaces.list_spaces() == []
        assert [m.name for m in host.spaces.members(space)] == ["Alice"]
        inv = host.manager.get(created.invitation.id)
        assert (inv.uses, inv.failed_attempts) == (0, 1)
        # The guest's admit went out sealed under its CPace key: Mallory relayed it
        # but learned neither Bob's identity nor his name.
        assert to_host == ["request", "pake", "confirm", "admit_sealed"]
        assert to_guest == ["challenge", "pake", "refused"]
        assert all(created.pin.encode() not in d for d in seen)
        assert all(guest.identity.identity_key not in d and b"Bob" not in d for d in seen)


# -- dropped connections ------------------------------------------------------------------


class CuttingProxy:
    """A TCP relay that cuts the first connection before a given frame.

    Every unit on the wire is a 2-byte-length frame (preamble, Noise handshake
    and transport messages), so frames can be counted without decrypting.
    ``cut=("h2g", 4)`` drops the 4th frame from host to guest and everything after.
    """

    def __init__(self, target: tuple[str, int], cut: tuple[str, int]) -> None:
        self.target = target
        self.cut: tuple[str, int] | None = cut
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self.cuts = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.address = listeners[0].socket.getsockname()[:2]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, down: trio.SocketStream) -> None:
        cut, self.cut = self.cut, None
        up = await trio.open_tcp_stream(*self.target)
        async with up, down, trio.open_nursery() as nursery:
            async def pump(src: trio.SocketStream, dst: trio.SocketStream, name: str) -> None:
                buf = bytearray()
                frames = 0
                while data := await src.receive_some(65536):
                    buf += data
                    out = bytearray()
                    while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                        n = 2 + int.from_bytes(buf[:2], "big")
                        frames += 1
                        if cut == (name, frames):
                            if out:
                                await dst.send_all(bytes(out))
                            self.cuts += 1
                            nursery.cancel_scope.cancel()
                            return
                        out += buf[:n]
                        del buf[:n]
                    if out:
                        await dst.send_all(bytes(out))
                nursery.cancel_scope.cancel()

            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                nursery.start_soon(pump, down, up, "g2h")
                nursery.start_soon(pump, up, down, "h2g")


# guest->host frames: preamble, Noise 1, Noise 3, request, pake, confirm, admit_sealed
# host->guest frames: Noise 2, accept, challenge, pake, confirm, admitted (the last two
# are written together, after the host's fsync)
DROPS = [("g2h", 4), ("g2h", 5), ("g2h", 6), ("g2h", 7),
         ("h2g", 3), ("h2g", 4), ("h2g", 5), ("h2g", 6)]


@pytest.mark.parametrize("cut", DROPS, ids=[f"{d}{n}" for d, n in DROPS])
async def test_a_drop_at_each_step_is_resumed_by_the_guest_on_its_own(
        tmp_path: Path, cut: tuple[str, int]) -> None:
    async with open_node(tmp_path / "host", name="Alice") as host, \
            open_node(tmp_path / "guest") as guest, trio.open_nursery() as nursery:
        created = await host.manager.create(kind="device", auth="pin")
        proxy = CuttingProxy(host.address, cut)
        await nursery.start(proxy.serve)
        code = dataclasses.replace(LinkCode.parse(created.code), hints=(proxy.address,)).encode()
        with trio.fail_after(30):
            events = await guest.accept(code, pin=created.pin)
        # One accept: the connection broke once, the guest dialed again and the host
        # either admitted it afresh or (cut after its fsync) resumed the admission.
        assert proxy.cuts == 1
        assert_admitted(events)
        assert events[-1].result.target == host.identity.identity_key
        assert guest.identity.devices() == host.identity.devices()
        inv = host.manager.get(created.invitation.id)
        assert (inv.uses, inv.failed_attempts) == (1, 0)
        while host.manager._ctx.active:
            await trio.sleep(0.01)
        # The host never keeps a use reserved for a vanished guest.
        assert host.store.reserved(created.invitation.id) == 0
        nursery.cancel_scope.cancel()


async def test_restart_counts_an_admission_whose_use_was_not_committed(tmp_path: Path) -> None:
    """Crash window: the log record is durable but the store's use was not written."""
    async with open_node(tmp_path / "guest") as guest:
        async with open_node(tmp_path / "host", name="Alice") as host:
            created = await host.manager.create(kind="device", auth="none", max_uses=2)
            assert_admitted(await guest.accept(created.code))
            inv = host.store.get(created.invitation.id)
            host.store._write(dataclasses.replace(inv, uses=0, accepted_by=()))  # the crash
        async with open_node(tmp_path / "host") as host:
            inv = host.manager.get(created.invitation.id)
            assert inv.uses == 1
            assert inv.accepted_by[0][0] == guest.identity.device.device_public
