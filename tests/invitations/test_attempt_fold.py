"""Changes that wait in memory for the record's next write, and who writes them.

A wrong proof is counted in memory at once (it binds concurrent guests) and
written by ``flush`` before the refusal is sent; a right proof writes nothing.
A use is counted in memory before ``admitted`` is sent and written after it
(the log append is the durable admission; uses are recounted from it at
start). Whatever write of the record comes first -- a flush, a durable
commit, a revocation -- carries every pending change with it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from p2pinvite.errors import InvitationError, StorageError
from p2pinvite.fsutil import atomic_write
from p2pinvite.invitations import store as store_mod
from p2pinvite.invitations.codes import generate_pin
from p2pinvite.invitations.model import AuthMethod, Invitation, InvitationKind
from p2pinvite.invitations.protocol import State
from p2pinvite.invitations.store import InvitationStore

from .pairing_nodes import open_node
from .test_store_journal import _frames

ME = b"m" * 32
GUEST = b"g" * 32
T0 = 1_700_000_000.0
DAY = 86400.0


def _new(store: InvitationStore, **kw: int) -> bytes:
    return store.create(kind=InvitationKind.DEVICE, target=ME, created_by=ME, now=T0,
                        auth=AuthMethod.PIN, max_uses=kw.get("max_uses", 2),
                        max_attempts=kw.get("max_attempts", 3)).id


def _on_disk(directory: Path, inv_id: bytes) -> tuple[int, int]:
    inv = InvitationStore.open(directory).get(inv_id)
    return inv.failed_attempts, inv.uses


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every record write from now on, in order: "rewrite" (whole file) or "append"."""
    done: list[str] = []
    real_append = store_mod._append_frame

    def rewrite(path: Path, data: bytes) -> None:
        done.append("rewrite")
        atomic_write(path, data)

    def append(path: Path, frame: bytes, offset: int) -> None:
        done.append("append")
        real_append(path, frame, offset)

    monkeypatch.setattr(store_mod, "atomic_write", rewrite)
    monkeypatch.setattr(store_mod, "_append_frame", append)
    return done


def _commit(store: InvitationStore, inv_id: bytes) -> Invitation:
    return store.commit_use(store.reserve_use(inv_id, T0), GUEST, T0 + 1)


def _revoke(store: InvitationStore, inv_id: bytes) -> Invitation:
    return store.revoke(inv_id, by=ME, now=T0 + 1)


@pytest.mark.parametrize(("write", "kind", "uses"), [
    (_commit, "append", 1),
    (_revoke, "rewrite", 0),
])
def test_a_pending_count_is_written_by_the_next_write_of_the_record(
    tmp_path: Path, writes: list[str],
    write: Callable[[InvitationStore, bytes], Invitation], kind: str, uses: int,
) -> None:
    store = InvitationStore.open(tmp_path / "inv")
    inv_id = _new(store)
    writes.clear()  # the create
    assert store.count_failed_attempt(inv_id, T0 + 1) == 2
    assert writes == []  # counted in memory only
    assert store.get(inv_id).failed_attempts == 1  # memory: the budget others see
    assert store.is_dirty(inv_id)
    assert _on_disk(tmp_path / "inv", inv_id) == (0, 0)
    after = write(store, inv_id)  # e.g. another guest admitted before the flush ran
    assert after.failed_attempts == 1
    assert writes == [kind]  # one write for both changes
    assert not store.is_dirty(inv_id)
    assert _on_disk(tmp_path / "inv", inv_id) == (1, uses)
    assert store.flush(inv_id) is False  # the flush that follows has nothing left to do
    assert writes == [kind]


def test_a_non_durable_use_is_counted_at_once_and_written_by_flush(tmp_path: Path) -> None:
    store = InvitationStore.open(tmp_path / "inv")
    inv_id = store.create(kind=InvitationKind.DEVICE, target=ME, created_by=ME, now=T0).id
    res = store.reserve_use(inv_id, T0)
    store.commit_use(res, GUEST, T0, durable=False)
    assert store.get(inv_id).uses == 1
    assert store.reserved(inv_id) == 0
    with pytest.raises(InvitationError) as exc:  # single use: no one else gets it
        store.reserve_use(inv_id, T0)
    assert exc.value.reason == "exhausted"
    assert _on_disk(tmp_path / "inv", inv_id) == (0, 0)  # the log is the durable admission
    assert store.flush(inv_id) is True
    assert _on_disk(tmp_path / "inv", inv_id) == (0, 1)


def test_one_flush_writes_a_pending_count_and_a_pending_use(
    tmp_path: Path, writes: list[str],
) -> None:
    store = InvitationStore.open(tmp_path / "inv")
    inv_id = _new(store)
    store.count_failed_attempt(inv_id, T0 + 1)
    store.commit_use(store.reserve_use(inv_id, T0), GUEST, T0, durable=False)
    writes.clear()
    assert store.flush(inv_id) is True
    assert writes == ["append"]
    assert _on_disk(tmp_path / "inv", inv_id) == (1, 1)
    assert store.flush(inv_id) is False
    assert writes == ["append"]


def test_a_record_with_a_pending_count_is_not_pruned(tmp_path: Path) -> None:
    store = InvitationStore.open(tmp_path / "inv")
    inv_id = _new(store, max_attempts=1)
    assert store.count_failed_attempt(inv_id, T0 + 1) == 0  # locked: finished, in memory
    late = T0 + 7 * DAY + 30 * DAY  # long after its expiry, the lock's "finished" time
    assert store.prune(late, retention=DAY) == []
    assert inv_id in store
    assert store.flush(inv_id) is True
    assert store.prune(late, retention=DAY) == [inv_id]
    assert inv_id not in InvitationStore.open(tmp_path / "inv")


async def test_pairing_leaves_the_record_right_on_disk(tmp_path: Path) -> None:
    async with open_node(tmp_path / "host", name="Alice") as host, \
            open_node(tmp_path / "guest") as guest:
        created = await host.manager.create(kind="device", auth="pin")
        with trio.fail_after(30):
            events = await guest.accept(created.code, pin=created.pin)
        assert events[-1].state is State.SUCCESS
        # In memory at once (the use was counted before `admitted` was sent)...
        inv = host.store.get(created.invitation.id)
        assert (inv.failed_attempts, inv.uses) == (0, 1)
        with trio.fail_after(10):
            while host.manager._ctx.active:  # ...on disk when the host's driver ends
                await trio.sleep(0.01)
        inv_id = created.invitation.id
        assert not host.store.is_dirty(inv_id)
        assert _on_disk(tmp_path / "host" / "invitations", inv_id) == (0, 1)
        # The create and the use: the right PIN wrote nothing.
        assert len(_frames(host.store.directory / f"{inv_id.hex()}.inv")) == 2


async def test_a_right_pin_then_a_refused_admission_writes_nothing(tmp_path: Path) -> None:
    async with open_node(tmp_path / "host", name="Alice") as host, \
            open_node(tmp_path / "guest", name="Bob") as guest:
        space = host.spaces.create_space("Team")
        first = await host.manager.create(kind="space", space_id=space)
        assert (await guest.accept(first.code))[-1].state is State.SUCCESS
        second = await host.manager.create(kind="space", space_id=space, auth="pin")
        guest.spaces.close()
        shutil.rmtree(guest.home / "spaces" / space.hex())
        inv_id = second.invitation.id
        path = host.store.directory / f"{inv_id.hex()}.inv"
        created = path.read_bytes()
        with trio.fail_after(30):
            events = await guest.accept(second.code, pin=second.pin)
            assert events[-1].reason == "already_member"
            while host.manager._ctx.active:  # the host driver's finally has run
                await trio.sleep(0.01)
        assert not host.store.is_dirty(inv_id)
        assert path.read_bytes() == created  # no attempt, no use: not a byte written
        # A wrong PIN is on disk by the time the guest hears it was wrong.
        wrong = next(p for p in iter(generate_pin, None) if p != second.pin)
        with trio.fail_after(30):
            events = await guest.accept(second.code, pin=wrong)
        assert (events[-1].reason, events[-1].attempts_left) == ("wrong_pin", 2)
        assert _on_disk(tmp_path / "host" / "invitations", inv_id) == (1, 0)


async def test_a_wrong_pin_that_cannot_be_written_gets_no_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The guess is not answered unless it is on disk; it still binds in memory."""
    async with open_node(tmp_path / "host", name="Alice") as host, \
            open_node(tmp_path / "guest") as guest:
        created = await host.manager.create(kind="device", auth="pin")
        inv_id = created.invitation.id
        real_flush = host.store.flush

        def failing_flush(i: bytes) -> bool:
            raise StorageError("disk full (test)")

        monkeypatch.setattr(host.store, "flush", failing_flush)
        wrong = next(p for p in iter(generate_pin, None) if p != created.pin)
        with trio.fail_after(30):
            events = await guest.accept(created.code, pin=wrong)
            while host.manager._ctx.active:
                await trio.sleep(0.01)
        assert events[-1].state is State.ERROR
        assert events[-1].reason == "connection lost"  # not wrong_pin: nothing was said
        assert events[-1].attempts_left is None
        assert host.store.get(inv_id).failed_attempts == 1  # binds in memory
        assert host.store.is_dirty(inv_id)
        assert _on_disk(tmp_path / "host" / "invitations", inv_id) == (0, 0)
        monkeypatch.setattr(host.store, "flush", real_flush)
        # The next guess is answered once written, and the disk then holds both.
        with trio.fail_after(30):
            events = await guest.accept(created.code, pin=wrong)
        assert (events[-1].reason, events[-1].attempts_left) == ("wrong_pin", 1)
        assert _on_disk(tmp_path / "host" / "invitations", inv_id) == (2, 0)
