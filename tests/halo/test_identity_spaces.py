"""halo.identity and halo.spaces: the services end to end, on temporary homes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from p2pinvite.errors import CredentialError, LocalProtocolError, StorageError
from p2pinvite.halo.credentials import Role, decode_credential, verify_credential
from p2pinvite.halo.identity import (
    IDENTITY_DIR,
    IDENTITY_LOG,
    IdentityExists,
    IdentityService,
    Issued,
    NoIdentity,
)
from p2pinvite.halo.log import CHECKPOINT_SUFFIX, InvalidEntries, SpaceLog
from p2pinvite.halo.spaces import SPACE_LOG, SpaceExists, SpaceService, UnknownSpace
from p2pinvite.halo.state import LogKind

from .reference import canonical


class Device:
    """One device's home with its identity and space services."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.identity = IdentityService.open(home)
        self.spaces = SpaceService.open(self.identity)

    def reopen(self) -> None:
        self.close()
        self.identity = IdentityService.open(self.home)
        self.spaces = SpaceService.open(self.identity)

    def close(self) -> None:
        self.spaces.close()
        self.identity.close()


@pytest.fixture
def devices(tmp_path: Path) -> Iterator[list[Device]]:
    made: list[Device] = []

    def make(name: str) -> Device:
        d = Device(tmp_path / name)
        made.append(d)
        return d

    made_list: list[Device] = [make("alice-phone"), make("alice-laptop"), make("bob")]
    yield made_list
    for d in made:
        d.close()


def test_create_identity_layout_and_reopen(tmp_path: Path) -> None:
    home = tmp_path / "home"
    d = Device(home)
    assert not d.identity.has_identity
    with pytest.raises(NoIdentity):
        d.identity.device_chain()
    ident = d.identity.create_identity("Alice")
    assert d.identity.identity_key == ident
    assert d.identity.name == "Alice"
    assert d.identity.devices() == [d.identity.device.device_public]
    chain = d.identity.device_chain()
    assert len(chain) == 1
    assert decode_credential(chain[0]).signer == ident  # signed by the identity key itself
    assert home.stat().st_mode & 0o777 == 0o700
    assert (home / IDENTITY_DIR).stat().st_mode & 0o777 == 0o700
    log = home / IDENTITY_DIR / IDENTITY_LOG
    assert log.stat().st_mode & 0o777 == 0o600
    assert not [p for p in home.iterdir() if p.name.startswith(".")]  # no temp dirs left
    with pytest.raises(IdentityExists):
        d.identity.create_identity("again")
    d.reopen()
    assert d.identity.identity_key == ident
    assert d.identity.device_chain() == chain
    d.close()


def test_stored_identity_of_another_device_refused(tmp_path: Path) -> None:
    a = Device(tmp_path / "a")
    a.identity.create_identity("A")
    a.close()
    (tmp_path / "a" / "keys" / "device.key").unlink()  # a new device key, the old log
    with pytest.raises(StorageError, match="does not authorize"):
        IdentityService.open(tmp_path / "a")


def test_stale_install_dirs_removed_on_open(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Device(home).close()
    stale = home / ".install-0123.tmp"
    stale.mkdir(mode=0o700)
    (stale / "identity.log").write_bytes(b"half")
    d = Device(home)
    assert not stale.exists()
    assert not d.identity.has_identity
    d.close()


async def test_second_device_admits_with_two_deep_chain(devices: list[Device]) -> None:
    phone, laptop, bob = devices
    with trio.fail_after(10):
        alice = phone.identity.create_identity("Alice")
        space_id = phone.spaces.create_space("Family")
        assert phone.spaces.list_spaces() == [space_id]
        [owner] = phone.spaces.members(space_id)
        assert (owner.identity, owner.role, owner.name, owner.admitted_by) == (
            alice, Role.OWNER, "Alice", space_id)

        # Device invitation: the phone authorizes the laptop, the laptop imports the log.
        issued = await phone.identity.authorize_device(
            laptop.identity.device.device_public, invitation=b"dev-invite"
        )
        assert phone.identity.heads() == [issued.id]
        assert verify_credential(issued.credential).id == issued.id
        assert phone.identity.state.redeemed(b"dev-invite") == 1
        joined = laptop.identity.join_identity_from_entries(phone.identity.raw_entries())
        assert joined == alice
        assert laptop.identity.devices() == phone.identity.devices()
        assert len(laptop.identity.device_chain()) == 2
        with pytest.raises(IdentityExists):
            laptop.identity.join_identity_from_entries(phone.identity.raw_entries())

        # The laptop gets the space (its identity is the owner), then admits Bob.
        assert laptop.spaces.import_space(phone.spaces.open_space(space_id).raw_entries(),
                                          expected=space_id) == space_id
        bob_id = bob.identity.create_identity("Bob")
        admitted = await laptop.spaces.admit(space_id, bob_id, Role.EDITOR, {"name": "Bob"},
                                             b"space-invite")
        cred = verify_credential(admitted.credential)
        assert cred.signer == laptop.identity.device.device_public
        assert cred.issuer == alice
        assert len(cred.chain) == 2  # laptop <- phone <- identity key
        assert laptop.spaces.open_space(space_id).heads() == [admitted.id]
        # On the laptop's heads: the entry after the owner's membership.
        assert cred.parents == (decode_credential(
            laptop.spaces.open_space(space_id).raw_entries()[1]).id,)

        # Bob, the guest, imports the entries; every one is verified.
        entries = laptop.spaces.open_space(space_id).raw_entries()
        assert bob.spaces.import_space(entries, expected=space_id) == space_id
        state = bob.spaces.open_space(space_id).state
        assert state.role_of(bob_id) is Role.EDITOR
        assert state.redeemed(b"space-invite") == 1
        assert [m.name for m in bob.spaces.members(space_id)] == ["Alice", "Bob"]
        with pytest.raises(SpaceExists):
            bob.spaces.import_space(entries)

        # Bob is an EDITOR: he cannot admit anyone.
        with pytest.raises(CredentialError) as info:
            await bob.spaces.admit(space_id, os.urandom(32), Role.READER, "x")
        assert info.value.rule == "not_admin"
        assert bob.spaces.open_space(space_id).log.count == 3

    # Everything survives a restart.
    bob.reopen()
    assert bob.spaces.list_spaces() == [space_id]
    assert bob.spaces.open_space(space_id).state.role_of(bob_id) is Role.EDITOR
    laptop.reopen()
    assert laptop.identity.identity_key == alice
    assert len(laptop.identity.device_chain()) == 2


async def test_admit_rules_surface_and_removal(devices: list[Device]) -> None:
    phone, _, bob = devices
    with trio.fail_after(10):
        phone.identity.create_identity("Alice")
        space_id = phone.spaces.create_space("S")
        bob_id = bob.identity.create_identity("Bob")
        await phone.spaces.admit(space_id, bob_id, Role.READER, "Bob")
        with pytest.raises(CredentialError) as info:
            await phone.spaces.admit(space_id, bob_id, Role.READER, "Bob")
        assert info.value.rule == "already_member"
        removed = await phone.spaces.remove(space_id, bob_id)
        assert phone.spaces.open_space(space_id).heads() == [removed.id]
        assert not phone.spaces.open_space(space_id).state.is_member(bob_id)
        # Bob was removed: the log no longer admits him, so he cannot import it.
        with pytest.raises(CredentialError) as info:
            bob.spaces.import_space(phone.spaces.open_space(space_id).raw_entries())
        assert info.value.rule == "not_admitted"
        assert bob.spaces.list_spaces() == []
        assert not [p for p in (bob.home / "spaces").iterdir()]  # temp dir cleaned up


async def test_concurrent_admissions_of_one_guest_admit_once(devices: list[Device]) -> None:
    phone, _, bob = devices
    phone.identity.create_identity("Alice")
    space_id = phone.spaces.create_space("S")
    bob_id = bob.identity.create_identity("Bob")
    results: list[object] = []

    async def attempt() -> None:
        try:
            results.append(await phone.spaces.admit(space_id, bob_id, Role.READER, "Bob"))
        except CredentialError as exc:
            results.append(exc.rule)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(attempt)
    assert results.count("already_member") == 4
    assert [type(r) for r in results if r != "already_member"] == [Issued]
    assert phone.spaces.open_space(space_id).log.count == 3


def test_import_refusals(devices: list[Device]) -> None:
    phone, laptop, bob = devices
    phone.identity.create_identity("Alice")
    space_id = phone.spaces.create_space("S")
    bob.identity.create_identity("Bob")
    entries = phone.spaces.open_space(space_id).raw_entries()
    # A space we were never admitted to.
    with pytest.raises(CredentialError) as info:
        bob.spaces.import_space(entries)
    assert info.value.rule == "not_admitted"
    # Tampered entries.
    bad = [entries[0], entries[1][:-1] + bytes([entries[1][-1] ^ 1])]
    with pytest.raises(InvalidEntries):
        bob.spaces.import_space(bad)
    # The wrong space for the invitation.
    with pytest.raises(InvalidEntries) as inv:
        bob.spaces.import_space(entries, expected=os.urandom(32))
    assert isinstance(inv.value.__cause__, CredentialError)
    assert inv.value.__cause__.rule == "wrong_genesis"
    # A space log offered as an identity log, and an identity that does not
    # authorize this device.
    with pytest.raises(InvalidEntries):
        laptop.identity.join_identity_from_entries(entries)
    with pytest.raises(CredentialError) as info:
        laptop.identity.join_identity_from_entries(phone.identity.raw_entries())
    assert info.value.rule == "device_not_authorized"
    assert not laptop.identity.has_identity
    # Our own space again.
    with pytest.raises(SpaceExists):
        phone.spaces.import_space(entries, expected=space_id)


def test_unknown_space_and_no_identity(devices: list[Device]) -> None:
    phone = devices[0]
    with pytest.raises(NoIdentity):
        phone.spaces.create_space("S")
    with pytest.raises(UnknownSpace):
        phone.spaces.open_space(b"\x00" * 32)
    with pytest.raises(UnknownSpace):
        phone.spaces.open_space(b"short")
    assert isinstance(UnknownSpace("x"), LocalProtocolError)


def test_space_files_are_private(devices: list[Device]) -> None:
    phone = devices[0]
    phone.identity.create_identity("Alice")
    space_id = phone.spaces.create_space("S")
    d = phone.home / "spaces" / space_id.hex()
    assert d.stat().st_mode & 0o777 == 0o700
    assert (phone.home / "spaces").stat().st_mode & 0o777 == 0o700
    assert (d / SPACE_LOG).stat().st_mode & 0o777 == 0o600
    creds = [decode_credential(c) for c in phone.spaces.open_space(space_id).raw_entries()]
    assert [c.type_name for c in creds] == ["space_genesis", "space_member"]
    assert creds[0].signer == creds[1].signer == space_id  # the one-use space key


async def test_space_log_reopens_to_the_same_state(devices: list[Device]) -> None:
    phone = devices[0]
    phone.identity.create_identity("Alice")
    space_id = phone.spaces.create_space("S")
    with trio.fail_after(10):
        for i in range(5):
            await phone.spaces.admit(space_id, bytes([i]) * 32, Role.READER, f"r{i}",
                                     b"inv")
    expected = canonical(phone.spaces.open_space(space_id).state)
    phone.close()
    path = phone.home / "spaces" / space_id.hex() / SPACE_LOG
    for how in ("checkpoint", "verify", "full"):
        if how == "verify":
            path.with_name(path.name + CHECKPOINT_SUFFIX).unlink()
        log = SpaceLog.open(path, kind=LogKind.SPACE, key=space_id,
                            full_verify=how == "full")
        try:
            assert canonical(log.state) == expected, how
            assert log.state.redeemed(b"inv") == 5
        finally:
            log.close()
    phone.reopen()


async def test_install_writes_in_place_and_a_refused_log_leaves_nothing(
        devices: list[Device]) -> None:
    phone, laptop, bob = devices
    phone.identity.create_identity("Alice")
    space_id = phone.spaces.create_space("S")
    bob.identity.create_identity("Bob")
    entries = phone.spaces.open_space(space_id).raw_entries()
    spaces_dir = bob.home / "spaces"
    with pytest.raises(CredentialError):
        bob.spaces.import_space(entries)  # not admitted: verified, refused, never written
    assert list(spaces_dir.iterdir()) == []
    assert not bob.spaces.has_space(space_id)
    # A crash that left an empty directory (no log) is harmless and reused.
    (spaces_dir / space_id.hex()).mkdir(mode=0o700)
    assert bob.spaces.list_spaces() == []
    with pytest.raises(InvalidEntries):
        bob.spaces.import_space([])
    # The joining laptop gets its identity without any temporary directory.
    with trio.fail_after(10):
        await phone.identity.authorize_device(laptop.identity.device.device_public)
    phone_entries = phone.identity.raw_entries()
    assert laptop.identity.join_identity_from_entries(phone_entries) == \
        phone.identity.identity_key
    assert not [p for p in laptop.home.iterdir() if p.name.startswith(".")]
    assert phone.spaces.has_space(space_id)
    assert not phone.spaces.has_space(b"short")
    laptop.reopen()
    assert laptop.identity.devices() == phone.identity.devices()


async def test_role_changes_removal_and_leaving(devices: list[Device]) -> None:
    phone, _, bob = devices
    alice = phone.identity.create_identity("Alice")
    space_id = phone.spaces.create_space("S")
    bob_id = bob.identity.create_identity("Bob")
    carol = os.urandom(32)
    with trio.fail_after(10):
        admitted = await phone.spaces.admit(space_id, bob_id, Role.READER, "Bob", b"inv")
        await phone.spaces.admit(space_id, carol, Role.EDITOR, "Carol")
        with pytest.raises(CredentialError) as info:
            await phone.spaces.admit(space_id, bob_id, Role.EDITOR, "Bob")
        assert info.value.rule == "already_member"  # admit() never changes a role
        with pytest.raises(CredentialError) as info:
            await phone.spaces.change_role(space_id, os.urandom(32), Role.EDITOR)
        assert info.value.rule == "not_member"  # change_role() never admits
        changed = await phone.spaces.change_role(space_id, bob_id, Role.ADMIN)
        space = phone.spaces.open_space(space_id)
        bob_m = space.state.member(bob_id)
        assert bob_m is not None
        assert (bob_m.role, bob_m.name, bob_m.entry, bob_m.invitation) == (
            Role.ADMIN, "Bob", admitted.id, b"inv")
        assert space.heads() == [changed.id]
        with pytest.raises(CredentialError) as info:
            await phone.spaces.change_role(space_id, alice, Role.ADMIN)
        assert info.value.rule == "cannot_demote_owner"
        with pytest.raises(CredentialError) as info:
            await phone.spaces.leave(space_id)
        assert info.value.rule == "cannot_remove_owner"
        # Bob, an ADMIN now, gets the log and removes Carol, then leaves.
        bob.spaces.import_space(space.raw_entries(), expected=space_id)
        await bob.spaces.remove(space_id, carol)
        left = await bob.spaces.leave(space_id)
        bob_space = bob.spaces.open_space(space_id)
        assert bob_space.state.role_of(bob_id) is Role.REMOVED
        assert bob_space.state.role_of(carol) is Role.REMOVED
        with pytest.raises(CredentialError) as info:
            await bob.spaces.admit(space_id, os.urandom(32), Role.READER, "x")
        assert info.value.rule == "issuer_removed"
        # The phone hears of it through sync (here: an ingest of Bob's entries).
        lacking = bob_space.log.ids_not_below(space.heads())
        assert len(lacking) == 2
        result = await space.log.ingest([bob_space.log.get(i) for i in lacking])
        assert result.added == tuple(lacking)
        assert result.added[-1] == left.id
        assert [m.identity for m in space.members()] == [alice]


def test_a_refused_install_says_why(devices: list[Device]) -> None:
    from .strategies import IdentityBuilder, SpaceBuilder

    bob = devices[2]
    bob_id = bob.identity.create_identity("Bob")
    # A log where a member that is no admin "admits" Bob: stored, but no effect.
    owner = IdentityBuilder.create("owner", seed=b"why-owner")
    editor = IdentityBuilder.create("editor", seed=b"why-editor")
    space = SpaceBuilder.create(owner, seed=b"why")
    space.admit(owner, editor.public, Role.EDITOR)
    space.admit(editor, bob_id, Role.READER)
    with pytest.raises(CredentialError) as info:
        bob.spaces.import_space(space.entries, expected=space.public)
    assert info.value.rule == "not_admitted"
    assert "not_admin" in str(info.value)
    assert bob.spaces.list_spaces() == []
