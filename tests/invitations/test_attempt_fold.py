"""One record write per admission: the taken-back attempt rides on the use commit.

The use itself is counted in memory before ``admitted`` is sent and written
after it (the log append is the durable admission; uses are recounted from it
at start).

The failed attempt is on disk before the proof is checked (no free guesses);
taking it back is in memory at once and on disk with the next write of the
record, so the disk only ever errs on the safe side (more attempts spent).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from p2pinvite.errors import InvitationError
from p2pinvite.invitations import store as store_mod
from p2pinvite.invitations.codes import generate_pin
from p2pinvite.invitations.model import AuthMethod, InvitationKind
from p2pinvite.invitations.protocol import State
from p2pinvite.invitations.store import InvitationStore

from .pairing_nodes import open_node

ME = b"m" * 32
GUEST = b"g" * 32
T0 = 1_700_000_000.0


def _new(store: InvitationStore) -> bytes:
    return store.create(kind=InvitationKind.DEVICE, target=ME, created_by=ME, now=T0,
                        auth=AuthMethod.PIN, max_uses=2).id


def _on_disk(directory: Path, inv_id: bytes) -> tuple[int, int]:
    inv = InvitationStore.open(directory).get(inv_id)
    return inv.failed_attempts, inv.uses


def test_non_durable_undo_is_written_by_commit_use(tmp_path: Path,
                                                    monkeypatch: object) -> None:
    store = InvitationStore.open(tmp_path / "inv")
    inv_id = _new(store)
    writes: list[str] = []
    real_rewrite, real_append = store_mod.atomic_write, store_mod._append_frame

    def rewrite(path: Path, data: bytes, **kw: object) -> None:
        writes.append("rewrite")
        real_rewrite(path, data, **kw)  # type: ignore[arg-type]

    def append(path: Path, frame: bytes, offset: int) -> None:
        writes.append("append")
        real_append(path, frame, offset)

    monkeypatch.setattr(store_mod, "atomic_write", rewrite)  # type: ignore[attr-defined]
    monkeypatch.setattr(store_mod, "_append_frame", append)  # type: ignore[attr-defined]
    assert store.begin_attempt(inv_id, T0) == 2
    assert len(writes) == 1
    assert _on_disk(tmp_path / "inv", inv_id) == (1, 0)
    store.attempt_succeeded(inv_id, durable=False)
    assert len(writes) == 1
    assert store.get(inv_id).failed_attempts == 0  # memory: the budget others see
    assert store.is_dirty(inv_id)
    assert _on_disk(tmp_path / "inv", inv_id) == (1, 0)  # disk: the safe, higher count
    res = store.reserve_use(inv_id, T0)
    store.commit_use(res, GUEST, T0)
    assert writes == ["append", "append"]  # one write for the use and the undo
    assert not store.is_dirty(inv_id)
    assert _on_disk(tmp_path / "inv", inv_id) == (0, 1)
    assert store.flush(inv_id) is False
    assert len(writes) == 2


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


def test_flush_persists_an_undo_no_commit_wrote(tmp_path: Path) -> None:
    store = InvitationStore.open(tmp_path / "inv")
    inv_id = _new(store)
    store.begin_attempt(inv_id, T0)
    store.attempt_succeeded(inv_id, durable=False)
    assert _on_disk(tmp_path / "inv", inv_id) == (1, 0)
    assert store.flush(inv_id) is True
    assert _on_disk(tmp_path / "inv", inv_id) == (0, 0)
    assert not store.is_dirty(inv_id)


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
        assert not host.store.is_dirty(created.invitation.id)
        assert _on_disk(tmp_path / "host" / "invitations", created.invitation.id) == (0, 1)


async def test_right_pin_then_refused_admission_flushes_the_undo(tmp_path: Path) -> None:
    async with open_node(tmp_path / "host", name="Alice") as host, \
            open_node(tmp_path / "guest", name="Bob") as guest:
        space = host.spaces.create_space("Team")
        first = await host.manager.create(kind="space", space_id=space)
        assert (await guest.accept(first.code))[-1].state is State.SUCCESS
        second = await host.manager.create(kind="space", space_id=space, auth="pin")
        guest.spaces.close()
        import shutil
        shutil.rmtree(guest.home / "spaces" / space.hex())
        with trio.fail_after(30):
            events = await guest.accept(second.code, pin=second.pin)
            assert events[-1].reason == "already_member"
            while host.manager._ctx.active:  # the host driver's finally has run
                await trio.sleep(0.01)
        inv_id = second.invitation.id
        assert not host.store.is_dirty(inv_id)
        assert _on_disk(tmp_path / "host" / "invitations", inv_id) == (0, 0)
        # A wrong PIN is still counted on disk before anything else happens.
        wrong = next(p for p in iter(generate_pin, None) if p != second.pin)
        events = await guest.accept(second.code, pin=wrong)
        assert (events[-1].reason, events[-1].attempts_left) == ("wrong_pin", 2)
        assert _on_disk(tmp_path / "host" / "invitations", inv_id) == (1, 0)
