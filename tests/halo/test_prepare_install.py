"""Preparing a received log's directory ahead of time (halo.identity / halo.spaces).

A guest makes the directory durable while the handshake runs
(``SpaceService.prepare_import``, ``IdentityService.prepare_join``); the
install then performs no mkdir and no fsync of the parent. Without a
prepare, the parent is always fsynced, even for a directory found in place.
The mkdir and fsync calls are counted by wrapping ``os.mkdir`` (pathlib's
mkdir calls it) and ``fsync_dir`` where halo looks it up: ``fsutil.fsync_dir``
(halo.log, the log directory's own fsync) and ``halo.identity.fsync_dir``
(the parent fsync).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pinvite import fsutil
from p2pinvite.errors import CredentialError, LocalProtocolError
from p2pinvite.halo import identity as identity_module
from p2pinvite.halo.credentials import Role
from p2pinvite.halo.identity import IDENTITY_DIR, IDENTITY_LOG, IdentityService
from p2pinvite.halo.spaces import SPACE_LOG, SPACES_DIR, SpaceExists, SpaceService


class Device:
    """One device's home with its identity and space services."""

    def __init__(self, home: Path, name: str | None = None) -> None:
        self.home = home
        self.open()
        if name is not None:
            self.identity.create_identity(name)

    def open(self) -> None:
        self.identity = IdentityService.open(self.home)
        self.spaces = SpaceService.open(self.identity)

    def reopen(self) -> None:
        self.close()
        self.open()

    def close(self) -> None:
        self.spaces.close()
        self.identity.close()

    @property
    def spaces_dir(self) -> Path:
        return self.home / SPACES_DIR

    def space_dir(self, space_id: bytes) -> Path:
        return self.spaces_dir / space_id.hex()


@dataclass
class World:
    """Alice (host) owns a space that admits Bob and Carol (two guests)."""

    alice: Device
    bob: Device
    carol: Device
    space_id: bytes
    entries: list[bytes]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    alice, bob, carol = (Device(tmp_path / n.lower(), n) for n in ("Alice", "Bob", "Carol"))
    space_id = alice.spaces.create_space("Family")
    with trio.fail_after(10):
        for guest in (bob, carol):
            await alice.spaces.admit(space_id, guest.identity.identity_key, Role.EDITOR, "g")
    entries = alice.spaces.open_space(space_id).raw_entries()
    assert len(entries) == 4
    yield World(alice, bob, carol, space_id, entries)
    for d in (alice, bob, carol):
        d.close()


@dataclass
class Calls:
    """Directories passed to ``os.mkdir`` and to ``fsync_dir`` since the last reset."""

    mkdir: list[Path] = field(default_factory=list)
    fsync_dir: list[Path] = field(default_factory=list)

    def reset(self) -> None:
        self.mkdir.clear()
        self.fsync_dir.clear()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Calls:
    recorded = Calls()
    real_mkdir, real_fsync_dir = os.mkdir, fsutil.fsync_dir

    def mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        recorded.mkdir.append(Path(path))
        real_mkdir(path, *args, **kwargs)

    def fsync_dir(path: Path) -> None:
        recorded.fsync_dir.append(Path(path))
        real_fsync_dir(path)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(fsutil, "fsync_dir", fsync_dir)
    monkeypatch.setattr(identity_module, "fsync_dir", fsync_dir)
    return recorded


# -- spaces --------------------------------------------------------------------------


async def test_prepared_import_skips_mkdir_and_parent_fsync_and_writes_the_same_log(
        world: World, calls: Calls) -> None:
    bob, carol, space_id = world.bob, world.carol, world.space_id
    calls.reset()
    bob.spaces.prepare_import(space_id)
    prepared = bob.space_dir(space_id)
    assert prepared.is_dir()
    assert prepared.stat().st_mode & 0o777 == 0o700
    assert prepared in calls.mkdir
    assert calls.fsync_dir == [bob.spaces_dir]  # the new entry is durable in spaces/
    # A prepared directory is not a space.
    assert bob.spaces.list_spaces() == []
    assert not bob.spaces.has_space(space_id)

    calls.reset()
    assert bob.spaces.import_space(world.entries, expected=space_id) == space_id
    assert calls.mkdir == []
    assert calls.fsync_dir == [prepared]  # only the log's own directory fsync

    calls.reset()
    assert carol.spaces.import_space(world.entries, expected=space_id) == space_id
    assert calls.mkdir[-1] == carol.space_dir(space_id)
    assert calls.fsync_dir == [carol.space_dir(space_id), carol.spaces_dir]

    bob_log = (prepared / SPACE_LOG).read_bytes()
    assert bob_log == (carol.space_dir(space_id) / SPACE_LOG).read_bytes()
    assert bob.spaces.list_spaces() == [space_id]
    bob.reopen()
    assert [m.name for m in bob.spaces.members(space_id)] == ["Alice", "g", "g"]


async def test_prepare_is_idempotent(world: World, calls: Calls) -> None:
    bob, space_id = world.bob, world.space_id
    bob.spaces.prepare_import(space_id)
    bob.spaces.prepare_import(space_id)
    assert [p.name for p in bob.spaces_dir.iterdir()] == [space_id.hex()]
    assert list(bob.space_dir(space_id).iterdir()) == []
    calls.reset()
    bob.spaces.import_space(world.entries, expected=space_id)
    assert calls.mkdir == []
    assert bob.spaces_dir not in calls.fsync_dir


async def test_unprepared_import_into_an_existing_directory_fsyncs_the_parent(
        world: World, calls: Calls) -> None:
    # What a process that died between its mkdir and its parent fsync leaves:
    # the directory entry may exist only in the page cache.
    bob, space_id = world.bob, world.space_id
    bob.space_dir(space_id).mkdir(mode=0o700)
    calls.reset()
    bob.spaces.import_space(world.entries, expected=space_id)
    assert bob.spaces_dir in calls.fsync_dir


async def test_prepared_directory_removed_meanwhile_is_made_again(
        world: World, calls: Calls) -> None:
    bob, space_id = world.bob, world.space_id
    bob.spaces.prepare_import(space_id)
    bob.space_dir(space_id).rmdir()
    calls.reset()
    bob.spaces.import_space(world.entries, expected=space_id)
    assert bob.space_dir(space_id) in calls.mkdir
    assert bob.spaces_dir in calls.fsync_dir
    assert bob.spaces.has_space(space_id)


async def test_discard_removes_an_empty_prepared_directory_only(world: World) -> None:
    bob, space_id = world.bob, world.space_id
    prepared = bob.space_dir(space_id)
    bob.spaces.prepare_import(space_id)
    bob.spaces.discard_prepared(space_id)
    assert not prepared.exists()
    bob.spaces.discard_prepared(space_id)  # nothing there: still no error
    assert bob.spaces_dir.is_dir()

    # A directory that holds anything is left alone.
    bob.spaces.prepare_import(space_id)
    (prepared / "something").write_bytes(b"x")
    bob.spaces.discard_prepared(space_id)
    assert (prepared / "something").exists()
    (prepared / "something").unlink()

    # An installed space is never touched, open or not.
    bob.spaces.import_space(world.entries, expected=space_id)
    bob.spaces.discard_prepared(space_id)
    bob.reopen()
    bob.spaces.discard_prepared(space_id)
    assert bob.spaces.open_space(space_id).log.count == len(world.entries)


async def test_refused_import_keeps_the_prepared_directory_until_discarded(
        world: World, tmp_path: Path, calls: Calls) -> None:
    dave = Device(tmp_path / "dave", "Dave")  # not admitted
    try:
        dave.spaces.prepare_import(world.space_id)
        with pytest.raises(CredentialError) as info:
            dave.spaces.import_space(world.entries, expected=world.space_id)
        assert info.value.rule == "not_admitted"
        prepared = dave.space_dir(world.space_id)
        assert list(prepared.iterdir()) == []  # refused before anything was written
        dave.spaces.discard_prepared(world.space_id)
        assert not prepared.exists()
        assert dave.spaces.list_spaces() == []
    finally:
        dave.close()


async def test_prepare_of_an_installed_space_is_harmless(world: World, calls: Calls) -> None:
    bob, space_id = world.bob, world.space_id
    bob.spaces.import_space(world.entries, expected=space_id)
    before = (bob.space_dir(space_id) / SPACE_LOG).read_bytes()
    for _ in range(2):  # open, then after a restart (not yet opened)
        calls.reset()
        bob.spaces.prepare_import(space_id)
        assert calls.mkdir == []
        assert calls.fsync_dir == []
        with pytest.raises(SpaceExists):
            bob.spaces.import_space(world.entries, expected=space_id)
        bob.reopen()
    assert (bob.space_dir(space_id) / SPACE_LOG).read_bytes() == before


async def test_bad_space_ids(world: World) -> None:
    bob = world.bob
    for bad in (b"", b"short", bytes(33)):
        with pytest.raises(LocalProtocolError):
            bob.spaces.prepare_import(bad)
        bob.spaces.discard_prepared(bad)  # must not rmdir spaces/ itself (it is empty)
    assert bob.spaces_dir.is_dir()


async def test_open_removes_empty_space_directories(world: World) -> None:
    bob, space_id = world.bob, world.space_id
    bob.spaces.import_space(world.entries, expected=space_id)
    empty = bob.space_dir(bytes(32))
    empty.mkdir(mode=0o700)
    busy = bob.space_dir(b"\x01" * 32)
    busy.mkdir(mode=0o700)
    (busy / f".{SPACE_LOG}.123.new.tmp").write_bytes(b"half")
    other = bob.spaces_dir / "not-a-space"
    other.mkdir(mode=0o700)
    bob.reopen()
    assert not empty.exists()
    assert busy.exists()
    assert other.exists()
    assert bob.spaces.list_spaces() == [space_id]


# -- identity ------------------------------------------------------------------------


async def test_prepared_join_skips_mkdir_and_home_fsync_and_writes_the_same_log(
        tmp_path: Path, calls: Calls) -> None:
    phone = Device(tmp_path / "phone", "Alice")
    laptop, tablet = Device(tmp_path / "laptop"), Device(tmp_path / "tablet")
    try:
        with trio.fail_after(10):
            for d in (laptop, tablet):
                await phone.identity.authorize_device(d.identity.device.device_public)
        entries = phone.identity.raw_entries()

        calls.reset()
        laptop.identity.prepare_join()
        laptop.identity.prepare_join()
        prepared = laptop.home / IDENTITY_DIR
        assert prepared.stat().st_mode & 0o777 == 0o700
        assert calls.fsync_dir == [laptop.home, laptop.home]
        assert not laptop.identity.has_identity

        calls.reset()
        assert laptop.identity.join_identity_from_entries(entries) == \
            phone.identity.identity_key
        assert calls.mkdir == []
        assert calls.fsync_dir == [prepared]

        calls.reset()
        tablet.identity.join_identity_from_entries(entries)
        assert tablet.home / IDENTITY_DIR in calls.mkdir
        assert tablet.home in calls.fsync_dir
        assert (prepared / IDENTITY_LOG).read_bytes() == \
            (tablet.home / IDENTITY_DIR / IDENTITY_LOG).read_bytes()

        # With an identity, prepare does nothing and discard leaves it alone.
        calls.reset()
        laptop.identity.prepare_join()
        laptop.identity.discard_prepared_join()
        assert calls.mkdir == []
        assert calls.fsync_dir == []
        laptop.reopen()
        assert laptop.identity.devices() == phone.identity.devices()
    finally:
        for d in (phone, laptop, tablet):
            d.close()


async def test_failed_join_discard_and_stale_identity_dir(tmp_path: Path) -> None:
    phone = Device(tmp_path / "phone", "Alice")
    laptop = Device(tmp_path / "laptop")
    try:
        ident_dir = laptop.home / IDENTITY_DIR
        laptop.identity.prepare_join()
        with pytest.raises(CredentialError) as info:  # the phone never authorized it
            laptop.identity.join_identity_from_entries(phone.identity.raw_entries())
        assert info.value.rule == "device_not_authorized"
        assert list(ident_dir.iterdir()) == []
        laptop.identity.discard_prepared_join()
        assert not ident_dir.exists()
        laptop.identity.discard_prepared_join()  # nothing there: still no error

        # A prepared directory left by a crash is swept on open.
        laptop.identity.prepare_join()
        laptop.reopen()
        assert not ident_dir.exists()
        assert not laptop.identity.has_identity
    finally:
        phone.close()
        laptop.close()
