"""Retention of finished invitation records: InvitationStore.prune and the manager's passes."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from trio.testing import MockClock

from p2pinvite.errors import InvitationError, LocalProtocolError, StorageError
from p2pinvite.halo.identity import IdentityService
from p2pinvite.halo.spaces import SpaceService
from p2pinvite.halo.swarm_secrets import SwarmSecrets
from p2pinvite.invitations import store as store_module
from p2pinvite.invitations.manager import (
    DEFAULT_RETENTION,
    HOSTING_GRACE,
    PRUNE_INTERVAL,
    InvitationManager,
)
from p2pinvite.invitations.model import (
    AuthMethod,
    Invitation,
    InvitationKind,
    InvitationStatus,
)
from p2pinvite.invitations.store import (
    InvitationPruneFailed,
    InvitationStore,
    finished_at,
)
from p2pinvite.net.manager import open_network_manager

# The records of test_model_store.py: one base invitation, varied per test.
from .test_model_store import DAY, GUEST, ME, SPACE, T0, record, spend_attempt

R = 10 * DAY  # retention used by the store tests


def open_store(tmp_path: Path) -> InvitationStore:
    return InvitationStore.open(tmp_path / "invitations")


def invite(store: InvitationStore, *, now: float = T0, **kw: Any) -> Invitation:
    args: dict[str, Any] = {"kind": InvitationKind.SPACE, "target": SPACE, "role": "editor",
                            "created_by": ME, "now": now, "expires_at": now + DAY}
    args.update(kw)
    return store.create(**args)


def path_of(store: InvitationStore, inv_id: bytes) -> Path:
    return store.directory / (inv_id.hex() + ".inv")


def use_up(store: InvitationStore, inv_id: bytes, now: float) -> None:
    res = store.reserve_use(inv_id, now)
    store.commit_use(res, GUEST, now)


# -- when a record finished ------------------------------------------------------------


@pytest.mark.parametrize(("fields", "expected"), [
    ({}, None),  # pending
    ({"max_uses": 3, "uses": 1, "accepted_by": ((GUEST, T0 + 5),)}, None),  # accepted
    ({"revoked_at": T0 + 7, "revoked_by": ME}, T0 + 7),
    ({"expires_at": T0 + 100}, T0 + 100),  # at now = T0 + DAY it has expired
    ({"uses": 1, "accepted_by": ((GUEST, T0 + 9),)}, T0 + 9),  # exhausted: the last use
    ({"uses": 1}, T0 + DAY),  # exhausted naming no one: its expiry
    ({"failed_attempts": 3, "locked_at": T0 + 11}, T0 + 11),  # locked: when it locked
    # A use committed after the invitation finished keeps the record that much longer.
    ({"revoked_at": T0 + 7, "revoked_by": ME, "uses": 1,
      "accepted_by": ((GUEST, T0 + 20),)}, T0 + 20),
    ({"expires_at": T0 + 100, "max_uses": 2, "uses": 1,
      "accepted_by": ((GUEST, T0 + 101),)}, T0 + 101),
])
def test_finished_at(fields: dict[str, Any], expected: float | None) -> None:
    inv = record(**fields)
    now = T0 + DAY if "expires_at" in fields else T0 + 50
    assert finished_at(inv, now) == expected


# -- the store ----------------------------------------------------------------------------


def _finish(store: InvitationStore, status: str) -> tuple[Invitation, float]:
    """A new invitation driven to *status*; returns it and when it finished."""
    if status == "revoked":
        inv = invite(store)
        store.revoke(inv.id, by=ME, now=T0 + 60)
        return inv, T0 + 60
    if status == "expired":
        inv = invite(store)
        return inv, inv.expires_at
    if status == "exhausted":
        inv = invite(store)
        use_up(store, inv.id, T0 + 120)
        return inv, T0 + 120
    assert status == "locked"
    inv = invite(store, auth=AuthMethod.PIN, max_attempts=2)
    spend_attempt(store, inv.id, T0 + 1)
    spend_attempt(store, inv.id, T0 + 2)
    return inv, T0 + 2


@pytest.mark.parametrize("status", ["revoked", "expired", "exhausted", "locked"])
def test_finished_record_pruned_only_after_retention(tmp_path: Path, status: str) -> None:
    store = open_store(tmp_path)
    inv, since = _finish(store, status)
    keeper = invite(store, now=T0 + 1, expires_at=T0 + 1000 * DAY)
    assert store.get(inv.id).status(since + R).value == status

    assert store.prune(since + R - 1, retention=R) == []
    assert inv.id in store
    assert path_of(store, inv.id).exists()
    assert store.list(since + R - 1, include_all=True)[0].id == inv.id

    assert store.prune(since + R, retention=R) == [inv.id]
    assert inv.id not in store
    assert not path_of(store, inv.id).exists()
    with pytest.raises(InvitationError) as err:
        store.get(inv.id)
    assert err.value.reason == "unknown"
    assert [i.id for i in store.list(since + R, include_all=True)] == [keeper.id]
    assert store.prune(since + 2 * R, retention=R) == []  # nothing left to do

    reopened = open_store(tmp_path)
    assert inv.id not in reopened
    assert [i.id for i in reopened.list(since + R, include_all=True)] == [keeper.id]
    assert sorted(p.name for p in reopened.directory.iterdir()) == [keeper.id.hex() + ".inv"]


def test_usable_invitations_never_pruned(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    pending = invite(store, expires_at=T0 + 1000 * DAY)
    multi = invite(store, expires_at=T0 + 1000 * DAY, max_uses=3)
    use_up(store, multi.id, T0 + 1)
    now = T0 + 999 * DAY
    assert store.get(pending.id).status(now) is InvitationStatus.PENDING
    assert store.get(multi.id).status(now) is InvitationStatus.ACCEPTED
    assert store.prune(now, retention=0) == []
    assert len(open_store(tmp_path)) == 2


def test_record_with_a_reserved_use_is_kept(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    inv = invite(store, max_uses=2)
    res = store.reserve_use(inv.id, T0 + 1)
    store.revoke(inv.id, by=ME, now=T0 + 2)
    assert store.prune(T0 + 2 + R, retention=R) == []
    assert store.reserved(inv.id) == 1
    # The admission decided before the revocation may still commit.
    assert store.commit_use(res, GUEST, T0 + 3).uses == 1
    assert store.prune(T0 + 3 + R - 1, retention=R) == []  # kept R after its last use
    assert store.prune(T0 + 3 + R, retention=R) == [inv.id]


def test_record_with_an_unwritten_change_is_kept(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    inv = invite(store)
    res = store.reserve_use(inv.id, T0 + 1)
    store.commit_use(res, GUEST, T0 + 1, durable=False)
    assert store.is_dirty(inv.id)
    assert store.reserved(inv.id) == 0
    assert store.prune(T0 + 100 * DAY, retention=R) == []
    assert path_of(store, inv.id).exists()
    assert store.flush(inv.id)
    assert store.prune(T0 + 100 * DAY, retention=R) == [inv.id]


def test_skip_is_honoured(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    a, b = invite(store), invite(store, now=T0 + 1)
    for inv in (a, b):
        store.revoke(inv.id, by=ME, now=T0 + 10)
    assert store.prune(T0 + 10 + R, retention=R, skip=[a.id]) == [b.id]
    assert a.id in store
    assert path_of(store, a.id).exists()
    assert store.prune(T0 + 10 + R, retention=R, skip={b.id}) == [a.id]
    assert len(store) == 0


def test_pruned_in_creation_order(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    made = [invite(store, now=T0 + n) for n in (3, 1, 2)]
    expected = [made[1].id, made[2].id, made[0].id]
    assert store.prune(T0 + 2 * DAY + R, retention=R) == expected


def test_file_already_gone_is_forgotten(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    inv = invite(store)
    path_of(store, inv.id).unlink()
    assert store.prune(inv.expires_at + R, retention=R) == [inv.id]
    assert inv.id not in store


def _failing_unlink(monkeypatch: pytest.MonkeyPatch, victim: Path) -> list[Path]:
    """Make ``os.unlink`` (as the store calls it) fail for *victim* only."""
    real = os.unlink
    tried: list[Path] = []

    def unlink(path: Any, *args: Any, **kw: Any) -> None:
        tried.append(Path(path))
        if Path(path) == victim:
            raise PermissionError(13, "Permission denied")
        real(path, *args, **kw)

    monkeypatch.setattr(store_module.os, "unlink", unlink)
    return tried


def test_failed_unlink_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(tmp_path)
    a, b = invite(store), invite(store, now=T0 + 1)
    tried = _failing_unlink(monkeypatch, path_of(store, a.id))
    with pytest.raises(InvitationPruneFailed) as err:
        store.prune(T0 + 2 * DAY + R, retention=R)
    assert isinstance(err.value, StorageError)
    assert err.value.removed == ()
    assert "Permission denied" in str(err.value)
    assert tried == [path_of(store, a.id)]  # the pass stopped at the failure
    assert a.id in store
    assert b.id in store
    assert path_of(store, a.id).exists()
    assert path_of(store, b.id).exists()
    monkeypatch.undo()
    assert store.prune(T0 + 2 * DAY + R, retention=R) == [a.id, b.id]


def test_failed_unlink_reports_what_was_removed(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(tmp_path)
    a, b, c = (invite(store, now=T0 + n) for n in range(3))
    _failing_unlink(monkeypatch, path_of(store, b.id))
    with pytest.raises(InvitationPruneFailed) as err:
        store.prune(T0 + 3 * DAY + R, retention=R)
    assert err.value.removed == (a.id,)
    assert a.id not in store
    assert not path_of(store, a.id).exists()
    for inv in (b, c):
        assert inv.id in store
        assert path_of(store, inv.id).exists()
    monkeypatch.undo()
    assert sorted(i.id for i in open_store(tmp_path).list(T0, include_all=True)) == sorted(
        [b.id, c.id])


def test_failed_directory_sync_is_reported(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(tmp_path)
    inv = invite(store)

    def fail(path: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store_module, "fsync_dir", fail)
    with pytest.raises(InvitationPruneFailed) as err:
        store.prune(inv.expires_at + R, retention=R)
    # The unlink happened: memory follows the directory, not the failed sync.
    assert err.value.removed == (inv.id,)
    assert inv.id not in store
    assert not path_of(store, inv.id).exists()


@pytest.mark.parametrize("retention", [-1.0, float("nan"), float("inf"), True])
def test_prune_rejects_a_bad_retention(tmp_path: Path, retention: float) -> None:
    store = open_store(tmp_path)
    invite(store)
    with pytest.raises(LocalProtocolError):
        store.prune(T0 + 1000 * DAY, retention=retention)
    assert len(store) == 1


# -- the manager -----------------------------------------------------------------------------
#
# These tests run on trio's MockClock *without* autojump (the ``mock_clock`` fixture) and
# move time by hand. The manager prunes in a worker thread, and autojump_clock jumps to
# the next deadline whenever every task is blocked -- including while that thread works
# -- so it would fire the daily pass (or a fail_after) at arbitrary points. With manual
# jumps the passes happen exactly when the test says; the only wait (for the worker
# thread) is bounded in real time.


@asynccontextmanager
async def open_manager(home: Path, clock: Callable[[], float], *,
                       store: InvitationStore | None = None,
                       **kw: Any) -> AsyncIterator[InvitationManager]:
    """A manager over loopback (no mDNS) with *clock*, as tests/invitations/pairing_nodes."""
    identity = IdentityService.open(home)
    if not identity.has_identity:
        identity.create_identity("Alice")
    spaces = SpaceService.open(identity)
    if store is None:
        store = InvitationStore.open(home / "invitations")
    keys = identity.device
    try:
        async with open_network_manager(static_key=keys.static_private,
                                        payload=keys.binding_proof(),
                                        listen=("127.0.0.1", 0)) as network:
            manager = InvitationManager(home, keys, identity, spaces, network, store,
                                        clock=clock, secrets=SwarmSecrets.open(home), **kw)
            async with manager:
                yield manager
    finally:
        spaces.close()
        identity.close()


def seed(home: Path, *, revoked_at: float) -> tuple[InvitationStore, bytes, bytes]:
    """*home*'s store holding a revoked and a long-lived pending invitation (their ids)."""
    store = InvitationStore.open(home / "invitations")
    gone = invite(store)
    store.revoke(gone.id, by=ME, now=revoked_at)
    kept = invite(store, now=T0 + 1, expires_at=T0 + 1000 * DAY)
    return store, gone.id, kept.id


def record_passes(store: InvitationStore) -> list[float]:
    """Wrap *store*.prune to record the ``now`` of every pass."""
    calls: list[float] = []
    real = store.prune

    def prune(now: float, **kw: Any) -> list[bytes]:
        calls.append(now)
        return real(now, **kw)

    store.prune = prune  # type: ignore[method-assign]
    return calls


async def wait_until(cond: Callable[[], bool]) -> None:
    for _ in range(2000):  # at most ~4 s of real time
        if cond():
            return
        await trio.to_thread.run_sync(time.sleep, 0.002)
    raise AssertionError("the pass in the worker thread did not finish")


async def test_manager_prunes_at_start(tmp_path: Path, mock_clock: MockClock,
                                       caplog: pytest.LogCaptureFixture) -> None:
    store, gone, kept = seed(tmp_path, revoked_at=T0)
    passes = record_passes(store)
    caplog.set_level(logging.INFO, logger="p2pinvite.invitations")
    start = T0 + DEFAULT_RETENTION  # the default: 30 days after the revocation
    async with open_manager(tmp_path, lambda: start + trio.current_time(),
                            store=store) as manager:
        assert passes == [start]
        assert [i.id for i in manager.list(include_all=True)] == [kept]
        assert list(manager._hosted) == [kept]
    assert not (tmp_path / "invitations" / (gone.hex() + ".inv")).exists()
    assert InvitationStore.open(tmp_path / "invitations").list(start, include_all=True)[0].id \
        == kept
    assert f"pruned 1 finished invitation record(s) older than 30 days: {gone.hex()[:8]}" \
        in caplog.text
    assert gone.hex() not in caplog.text  # ids are shortened in the log


async def test_manager_prunes_daily(tmp_path: Path, mock_clock: MockClock) -> None:
    # Revoked 29.5 days before the manager starts: kept at start, gone a day later.
    store, gone, kept = seed(tmp_path, revoked_at=T0)
    passes = record_passes(store)
    start = T0 + DEFAULT_RETENTION - DAY / 2
    async with open_manager(tmp_path, lambda: start + trio.current_time(),
                            store=store) as manager:
        assert passes == [start]
        assert gone in store
        mock_clock.jump(PRUNE_INTERVAL - 3600)
        await trio.testing.wait_all_tasks_blocked()
        assert gone in store  # past its retention, but the next pass is an hour away
        mock_clock.jump(3600)
        await wait_until(lambda: gone not in store)
        assert passes == [start, start + PRUNE_INTERVAL]
        assert [i.id for i in manager.list(include_all=True)] == [kept]
    assert not (tmp_path / "invitations" / (gone.hex() + ".inv")).exists()


async def test_manager_skips_handshakes_in_progress(tmp_path: Path,
                                                    mock_clock: MockClock) -> None:
    now = [T0]
    async with open_manager(tmp_path, lambda: now[0], retention=DAY) as manager:
        inv_id = (await manager.create(kind="device")).invitation.id
        await manager.revoke(inv_id)
        now[0] = T0 + 2 * DAY  # the owner's clock: retention over (trio's does not move)
        manager._ctx.active[inv_id] = {trio.CancelScope()}  # a handshake in progress
        assert await manager.prune() == []
        assert inv_id in manager._store
        manager._ctx.active[inv_id] = set()  # no handshake left
        assert await manager.prune() == [inv_id]
        assert inv_id not in manager._store


async def test_a_pruned_invitation_is_no_longer_hosted(tmp_path: Path,
                                                      mock_clock: MockClock) -> None:
    now = [T0]
    async with open_manager(tmp_path, lambda: now[0], retention=60) as manager:
        inv_id = (await manager.create(kind="device", expires_in=3600)).invitation.id
        # Expired two minutes ago: within its hosting grace, past a one-minute retention.
        now[0] = T0 + 3600 + 120
        assert HOSTING_GRACE > 120
        assert inv_id in manager._hosted
        assert await manager.prune() == [inv_id]
        assert inv_id not in manager._hosted


@pytest.mark.parametrize("retention", [0, -1.0, float("nan"), float("inf")])
def test_manager_rejects_a_bad_retention(tmp_path: Path, retention: float) -> None:
    with pytest.raises(LocalProtocolError):
        InvitationManager(tmp_path, None, None, None, None, None,  # type: ignore[arg-type]
                          secrets=None, retention=retention)  # type: ignore[arg-type]


async def test_manager_starts_when_pruning_fails(tmp_path: Path, mock_clock: MockClock,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    store, gone, kept = seed(tmp_path, revoked_at=T0)
    _failing_unlink(monkeypatch, path_of(store, gone))
    caplog.set_level(logging.INFO, logger="p2pinvite.invitations")
    start = T0 + DEFAULT_RETENTION
    async with open_manager(tmp_path, lambda: start, store=store) as manager:
        assert list(manager._hosted) == [kept]  # housekeeping failed; hosting did not
        assert gone in store
        monkeypatch.undo()
        assert await manager.prune() == [gone]  # the next pass retries
    assert "could not prune finished invitation records" in caplog.text
    assert "Permission denied" in caplog.text


async def test_manager_without_invitations_arms_no_timer(tmp_path: Path,
                                                         mock_clock: MockClock) -> None:
    store = InvitationStore.open(tmp_path / "invitations")
    passes = record_passes(store)
    async with open_manager(tmp_path, lambda: T0 + trio.current_time(), store=store,
                            retention=DAY) as manager:
        assert passes == [T0]  # the start pass
        mock_clock.jump(3 * PRUNE_INTERVAL)
        await trio.testing.wait_all_tasks_blocked()
        assert passes == [T0]  # an empty store: no daily pass was due
        inv_id = (await manager.create(kind="device")).invitation.id
        created = T0 + trio.current_time()
        await manager.revoke(inv_id)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(PRUNE_INTERVAL - 1)
        await trio.testing.wait_all_tasks_blocked()
        assert passes == [T0]  # the timer starts at the first invitation
        mock_clock.jump(1)
        await wait_until(lambda: inv_id not in store)
        assert passes == [T0, created + PRUNE_INTERVAL]
