"""halo/log.py: appends, group commit, ingest, sync queries, reopen, checkpoints, torn tails."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path

import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings

from p2pinvite.errors import CredentialError, LocalProtocolError, LogCorrupted, StorageError
from p2pinvite.halo import log as logmod
from p2pinvite.halo import logfile
from p2pinvite.halo.credentials import Credential, Role, issue_space_member
from p2pinvite.halo.log import (
    MAX_CREDENTIAL,
    IngestResult,
    InvalidEntries,
    LogChange,
    LogClosed,
    LogLocked,
    LogPoisoned,
    SpaceLog,
    file_header,
    frame_record,
)
from p2pinvite.halo.state import LogKind

from .reference import canonical
from .strategies import T0, IdentityBuilder, SpaceBuilder

HEADER = 16  # file header bytes (docs/PROTOCOL.md Part 9)
REC = 12  # record header bytes
OWNER = IdentityBuilder.create("owner", seed=b"log-owner")
ADMIN = IdentityBuilder.create("admin", seed=b"log-admin")


def new_space() -> SpaceBuilder:
    """Genesis and owner membership of one fixed space (same bytes every time)."""
    return SpaceBuilder.create(OWNER, "log", seed=b"log-space")


def member(i: int) -> bytes:
    return hashlib.blake2b(i.to_bytes(8, "big"), digest_size=32).digest()


def issue(log: SpaceLog, i: int, *, role: Role = Role.READER, by: IdentityBuilder = OWNER,
          invitation: bytes | None = None) -> bytes:
    """An admission of member(i), issued on the log's current heads."""
    key = log.state.key
    assert key is not None
    return issue_space_member(
        by.device, issuer=by.public, space=key, member=member(i), role=role, name=f"m{i}",
        parents=log.append_parents(), chain=by.chain_of(), invitation=invitation,
        issued_at=T0).encode()


def create(path: Path, **kw: object) -> SpaceLog:
    space = new_space()
    return SpaceLog.create(path, space.entries, kind=LogKind.SPACE, key=space.public,
                           **kw)  # type: ignore[arg-type]


def reopen(path: Path, **kw: object) -> SpaceLog:
    return SpaceLog.open(path, kind=LogKind.SPACE, key=new_space().public,
                         **kw)  # type: ignore[arg-type]


async def fill(path: Path, count: int, *, checkpoint_every: int = 1024) -> list[bytes]:
    """A log with the space's 2 entries and *count* admissions, closed; its credentials."""
    with create(path, checkpoint_every=checkpoint_every) as log:
        for i in range(count):
            await log.append(issue(log, i))
        return log.raw_entries()


def record_offsets(data: bytes) -> list[tuple[int, int]]:
    """(offset, end) of each framed record in a file image."""
    out, off = [], HEADER
    while off + REC <= len(data):
        length = int.from_bytes(data[off : off + 4], "big")
        out.append((off, off + REC + length))
        off += REC + length
    return out


def same(a: SpaceLog, b: SpaceLog) -> None:
    """Two logs hold the same set and reach the same state and statuses."""
    assert set(a.raw_entries()) == set(b.raw_entries())
    assert canonical(a.state) == canonical(b.state)
    assert a.resolver.statuses() == b.resolver.statuses()
    assert a.resolver.order() == b.resolver.order()


# -- format -------------------------------------------------------------------------------


def test_documented_example_bytes() -> None:
    # docs/PROTOCOL.md Part 9 §2.4: the header and the first record of a log
    # whose genesis is the identity genesis of Part 8 §5.
    from .test_credentials import _all_types

    genesis = _all_types()[0]
    assert file_header().hex() == "897032706c6f670a0002000042432ae8"
    record = frame_record(genesis.id + genesis.encode())
    assert record[:12].hex() == "00000133dedfae3f8e43ce67"
    assert record[12:44] == genesis.id
    assert record[44:] == genesis.encode()
    assert len(record) == 12 + 32 + 275


# -- append, reopen --------------------------------------------------------------------------


async def test_append_reopen_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "space.log"
    with create(path) as log:
        ids = [await log.append(issue(log, i, invitation=b"inv")) for i in range(5)]
        assert log.count == len(log) == 7
        assert log.heads() == [ids[-1]] == log.append_parents()
        assert all(log.status(i).applied for i in ids)
        state = canonical(log.state)
        raw = log.raw_entries()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for how in ("checkpoint", "no checkpoint", "full"):
        if how == "no checkpoint":
            (tmp_path / "space.log.checkpoint").unlink()
        with reopen(path, full_verify=how == "full") as log:
            assert canonical(log.state) == state, how
            assert log.raw_entries() == raw
            assert log.heads() == [ids[-1]]
            assert log.state.redeemers(b"inv") == [member(i) for i in range(5)]
            restored = how == "checkpoint"
            assert log.report.from_checkpoint == (7 if restored else 0)
            assert log.report.verified == (0 if restored else 7)
        assert (tmp_path / "space.log.checkpoint").exists()  # open or close rewrote it


async def test_open_refusals(tmp_path: Path) -> None:
    path = tmp_path / "space.log"
    with pytest.raises(StorageError, match="does not exist"):
        reopen(path)
    log = create(path)
    with pytest.raises(LogLocked):
        reopen(path)
    log.close()
    with pytest.raises(FileExistsError):
        create(path)
    os.chmod(path, 0o644)
    with pytest.raises(StorageError):
        reopen(path)
    os.chmod(path, 0o600)
    with pytest.raises(LogCorrupted):
        SpaceLog.open(path, key=b"\x01" * 32, full_verify=True)  # another space's log
    data = bytearray(path.read_bytes())
    data[8:10] = b"\x00\x01"
    path.write_bytes(bytes(data))
    with pytest.raises(StorageError, match="unsupported"):
        reopen(path)
    data[0] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(LogCorrupted) as info:
        reopen(path)
    assert info.value.offset == 0


async def test_closed_log_refuses(tmp_path: Path) -> None:
    log = create(tmp_path / "space.log")
    cred = issue(log, 0)
    log.close()
    log.close()  # idempotent
    with pytest.raises(LogClosed):
        await log.append(cred)
    with pytest.raises(LogClosed):
        await log.ingest([cred])
    with pytest.raises(LogClosed):
        log.raw_entries()


async def test_refusals_leave_log_and_state_unchanged(tmp_path: Path) -> None:
    with create(tmp_path / "space.log") as log:
        await log.append(issue(log, 0, role=Role.EDITOR))
        editor = IdentityBuilder.create("e", seed=b"log-editor")
        key = log.state.key
        assert key is not None
        await log.append(issue_space_member(
            OWNER.device, issuer=OWNER.public, space=key, member=editor.public,
            role=Role.EDITOR, name="e", parents=log.append_parents(),
            chain=OWNER.chain_of()).encode())
        before = (log.raw_entries(), canonical(log.state), log.append_parents())
        good = Credential.decode(issue(log, 1))
        import dataclasses

        cases = {
            "not_admin": issue_space_member(
                editor.device, issuer=editor.public, space=key, member=member(9),
                role=Role.READER, name="", parents=log.append_parents(),
                chain=editor.chain_of()).encode(),
            "bad_signature": dataclasses.replace(good, signature=bytes(64)).encode(),
            "bad_chain": dataclasses.replace(good, chain=()).encode(),
            "malformed": b"\x00garbage",
            "too_large": b"\x00" * (MAX_CREDENTIAL + 1),
            "duplicate_genesis": new_space().entries[0],
            "same_role": issue(log, 0, role=Role.EDITOR),
        }
        for rule, cred in cases.items():
            with pytest.raises(CredentialError) as info:
                await log.append(cred)
            assert info.value.rule == rule
        stale = issue_space_member(
            OWNER.device, issuer=OWNER.public, space=key, member=member(5), role=Role.READER,
            name="", parents=new_space().heads, chain=OWNER.chain_of()).encode()
        with pytest.raises(LocalProtocolError):
            await log.append(stale)  # not issued on the current heads
        assert (log.raw_entries(), canonical(log.state), log.append_parents()) == before
        assert not log.poisoned


async def test_cancelled_before_admission_admits_nothing(tmp_path: Path) -> None:
    with create(tmp_path / "space.log") as log:
        cred = issue(log, 0)
        with trio.CancelScope() as scope:
            scope.cancel()
            await log.append(cred)
        assert log.count == 2
        assert not log.state.is_member(member(0))


async def test_cancel_after_admission_still_commits(tmp_path: Path) -> None:
    path = tmp_path / "space.log"
    with create(path) as log:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log.append, issue(log, 0))
            await trio.testing.wait_all_tasks_blocked()  # admitted, waiting for its fsync
            nursery.cancel_scope.cancel()
        assert log.count == 3
    with reopen(path, full_verify=True) as log:
        assert log.state.is_member(member(0))


# -- group commit -----------------------------------------------------------------------------


async def test_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    path = tmp_path / "space.log"
    with create(path) as log:
        got: list[bytes] = []
        counter = iter(range(32))

        async def one() -> None:
            # Issue on the heads and append with no await in between.
            got.append(await log.append(issue(log, next(counter))))

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for _ in range(32):
                    nursery.start_soon(one)
        assert len(set(got)) == 32
        assert 1 <= log.commit_count < 32  # they shared fsyncs
        assert log.count == 34
        order = log.raw_entries()
    with reopen(path, full_verify=True) as log:
        assert log.raw_entries() == order
        assert len(log.state.members()) == 33
        assert len(log.heads()) == 1


# -- poisoning ---------------------------------------------------------------------------


async def test_write_failure_poisons_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    path = tmp_path / "space.log"
    log = create(path)
    await log.append(issue(log, 0))
    good_size = path.stat().st_size
    real_write = logmod.fsutil.pwrite_all

    def failing_write(fd: int, data: bytes, offset: int) -> None:
        real_write(fd, data[: len(data) // 2], offset)  # half a batch reaches the file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(logmod.fsutil, "pwrite_all", failing_write)
    errors: list[BaseException] = []
    counter = iter(range(1, 100))

    async def one() -> None:
        try:
            await log.append(issue(log, next(counter)))
        except LogPoisoned as exc:
            errors.append(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(one)
    assert len(errors) == 5  # nobody was acknowledged
    assert isinstance(errors[0].__cause__, OSError)
    assert log.poisoned
    assert log.count == 3
    monkeypatch.setattr(logmod.fsutil, "pwrite_all", real_write)
    with pytest.raises(LogPoisoned):
        await log.append(b"anything")  # later appends too, even if the disk is fine
    with pytest.raises(LogPoisoned):
        await log.ingest([])
    assert path.stat().st_size == good_size  # the half batch was cut off again
    log.close()
    with reopen(path) as log2:
        assert log2.count == 3
        assert [m.identity for m in log2.state.members()] == [OWNER.public, member(0)]
        await log2.append(issue(log2, 1))


async def test_fsync_failure_poisons_and_reopen_keeps_acknowledged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "space.log"
    log = create(path)
    first = await log.append(issue(log, 0))

    def failing_sync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(logfile, "sync", failing_sync)
    with pytest.raises(LogPoisoned):
        await log.append(issue(log, 1))
    log.close()
    monkeypatch.undo()
    with reopen(path) as log2:
        assert log2.heads() == [first]


async def test_a_failing_queue_poisons_the_log(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    log = create(tmp_path / "space.log", checkpoint_every=1)

    def broken() -> dict[str, object]:
        raise RuntimeError("snapshot failed")

    monkeypatch.setattr(log.resolver, "snapshot_fields", broken)
    with pytest.raises(LogPoisoned):
        await log.append(issue(log, 0))  # a checkpoint snapshot is due at every entry
    assert log.poisoned
    log.close()


async def test_close_while_an_append_is_in_flight_is_refused(tmp_path: Path) -> None:
    log = create(tmp_path / "space.log")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.append, issue(log, 0))
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(LocalProtocolError):
            log.close()
    log.close()


# -- ingest: entries from peers ---------------------------------------------------------------


def fork(space: SpaceBuilder, n: int, *, by: IdentityBuilder, start: int,
         parents: list[bytes] | None = None) -> list[Credential]:
    """*n* admissions by *by* on a branch from *parents* (default: the builder's heads)."""
    out = []
    for i in range(start, start + n):
        c = space.admit(by, member(i), Role.READER, name=f"m{i}", parents=parents)
        parents = [c.id]
        out.append(c)
    return out


async def test_ingest_a_branch_from_a_peer(tmp_path: Path) -> None:
    space = new_space()
    space.admit(OWNER, ADMIN.public, Role.ADMIN, name="admin")
    base = sorted(space.heads)
    ours = fork(space, 3, by=OWNER, start=100, parents=base)
    theirs = fork(space, 4, by=ADMIN, start=200, parents=base)
    with SpaceLog.create(tmp_path / "a.log", space.entries[:3] + [c.encode() for c in ours]
                         ) as log:
        seen: list[LogChange] = []
        log.subscribe(seen.append)
        event = log.next_change()
        commits = log.commit_count
        result = await log.ingest([c.encode() for c in theirs])
        ids = tuple(c.id for c in theirs)
        assert result == IngestResult(ids, (), 0, (), ids)
        assert log.commit_count == commits + 1  # one batch, one fsync
        assert event.is_set()
        assert seen == [LogChange(tuple(c.id for c in theirs),
                                  tuple(sorted([ours[-1].id, theirs[-1].id])), 10)]
        assert len(log.state.members()) == 2 + 3 + 4
        assert log.heads() == sorted([ours[-1].id, theirs[-1].id])
        # The same again changes nothing.
        again = await log.ingest([c.encode() for c in reversed(theirs + ours)])
        assert (again.added, again.duplicates) == ((), 7)
        # Our next entry merges both branches.
        merge = await log.append(issue(log, 300))
        assert set(Credential.decode(log.get(merge)).parents) == {ours[-1].id, theirs[-1].id}
        assert log.heads() == [merge]


async def test_an_ingest_bigger_than_one_commit_is_written_in_bounded_commits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A crash tears at most one commit, and reopening accepts a torn tail of at
    # most one commit: an ingest that completes many held entries must not
    # become one oversized write. (The bound is lowered so a small log shows it.)
    limit = 4096
    monkeypatch.setattr(logmod, "MAX_COMMIT_BYTES", limit)
    written: list[int] = []
    real = logmod.fsutil.pwrite_all

    def spy(fd: int, data: bytes, offset: int) -> None:
        written.append(len(data))
        real(fd, data, offset)

    monkeypatch.setattr(logmod.fsutil, "pwrite_all", spy)
    space = new_space()
    branch = fork(space, 60, by=OWNER, start=0)
    with SpaceLog.create(tmp_path / "a.log", space.entries[:2]) as log:
        held = await log.ingest([c.encode() for c in branch[1:]])
        assert held.added == ()
        before = len(written)
        done = await log.ingest([branch[0].encode()])
        assert done.added == tuple(c.id for c in branch)
        assert len(written) - before >= 2
        assert max(written[before:]) <= limit
        assert log.count == 62
    with SpaceLog.open(tmp_path / "a.log") as again:
        assert again.count == 62


async def test_ingest_holds_orphans_and_reports_missing_parents(tmp_path: Path) -> None:
    space = new_space()
    branch = fork(space, 5, by=OWNER, start=0)
    with SpaceLog.create(tmp_path / "a.log", space.entries[:2]) as log:
        late = await log.ingest([c.encode() for c in branch[2:]])
        assert late.added == ()
        assert late.missing == (branch[1].id,)  # branch[2] waits for it; the rest are held
        assert log.count == 2
        assert not log.has(branch[4].id)
        early = await log.ingest([branch[1].encode(), branch[0].encode()])
        assert early.added == tuple(c.id for c in branch)  # parents first, in file order
        assert early.missing == ()
        assert log.ids_not_below([space.creds[1].id]) == [c.id for c in branch]


async def test_ingest_refuses_what_does_not_verify_and_keeps_the_rest(tmp_path: Path) -> None:
    space = new_space()
    branch = fork(space, 3, by=OWNER, start=0)
    import dataclasses

    forged = dataclasses.replace(branch[1], signature=bytes(64)).encode()
    other_genesis = SpaceBuilder.create(OWNER, "other").entries[0]
    with SpaceLog.create(tmp_path / "a.log", space.entries[:2]) as log:
        result = await log.ingest([branch[0].encode(), forged, b"\x01", other_genesis,
                                   space.entries[0], branch[2].encode()])
        assert [(r.index, r.rule) for r in result.refused] == [
            (1, "bad_signature"), (2, "malformed"), (3, "duplicate_genesis")]
        assert result.added == (branch[0].id,)
        assert result.duplicates == 1  # our own genesis
        assert result.missing == (branch[1].id,)  # the forged one is not held
        with pytest.raises(LocalProtocolError):
            await log.ingest([b"x"] * (logmod.MAX_INGEST + 1))


async def test_ingest_refuses_beyond_the_dag_limit(tmp_path: Path) -> None:
    space = new_space()
    branch = fork(space, 3, by=OWNER, start=0)
    with SpaceLog.create(tmp_path / "a.log", space.entries[:2]) as log:
        log.resolver.max_entries = 4
        result = await log.ingest([c.encode() for c in branch])
        assert len(result.added) == 2
        assert [r.rule for r in result.refused] == ["log_full"]
        assert log.count == 4


async def test_entries_a_removed_member_issued_are_stored_but_have_no_effect(
        tmp_path: Path) -> None:
    space = new_space()
    space.admit(OWNER, ADMIN.public, Role.ADMIN, name="admin")
    base = sorted(space.heads)
    removal = space.remove(OWNER, ADMIN.public, parents=base)
    sneaky = fork(space, 2, by=ADMIN, start=50, parents=base)
    with SpaceLog.create(tmp_path / "a.log", space.entries[:4]) as log:
        await log.ingest([c.encode() for c in sneaky])
        assert log.has(sneaky[0].id)
        assert [log.status(c.id).rule for c in sneaky] == ["issuer_removed"] * 2
        assert log.status(removal.id).applied
        assert not log.state.is_member(member(50))
        path = log.path
    with reopen(path, full_verify=True) as log:
        assert [log.status(c.id).rule for c in sneaky] == ["issuer_removed"] * 2


@pytest.fixture(scope="module")
def forked_history() -> tuple[list[bytes], list[bytes]]:
    """A space log with three branches and a merge: (first two entries, the rest)."""
    space = new_space()
    space.admit(OWNER, ADMIN.public, Role.ADMIN, name="admin")
    base = sorted(space.heads)
    fork(space, 3, by=OWNER, start=0, parents=base)
    fork(space, 3, by=ADMIN, start=10, parents=base)
    space.remove(OWNER, ADMIN.public, parents=base)
    space.admit(OWNER, member(99))  # the merge of all heads
    fork(space, 2, by=ADMIN, start=20)  # after the removal: no effect
    return space.entries[:2], space.entries[2:]


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32))
def test_ingest_in_any_order_with_duplicates_converges(
        tmp_path: Path, forked_history: tuple[list[bytes], list[bytes]], seed: int) -> None:
    start, rest = forked_history
    rnd = random.Random(seed)
    d = tmp_path / str(seed)
    d.mkdir(mode=0o700)

    async def run() -> None:
        with SpaceLog.create(d / "ref.log", start + rest) as ref, \
                SpaceLog.create(d / "b.log", start) as log:
            pool = rest + rnd.choices(rest, k=4)
            rnd.shuffle(pool)
            while pool:
                k = rnd.randint(1, 4)
                await log.ingest(pool[:k])
                pool = pool[k:]
            same(log, ref)
            path = log.path
        with reopen(path) as again, SpaceLog.open(d / "ref.log") as ref2:
            same(again, ref2)  # and from its own file

    trio.run(run)


# -- sync queries -------------------------------------------------------------------------------


async def test_sync_queries_see_durable_entries_only(tmp_path: Path) -> None:
    with create(tmp_path / "space.log") as log:
        genesis, owner_m = (log.resolver.dag.ids[i] for i in range(2))
        assert log.has(genesis)
        assert not log.has(b"\x00" * 32)
        with pytest.raises(KeyError):
            log.get(b"\x00" * 32)
        assert Credential.decode(log.get(owner_m)).id == owner_m
        assert log.ids_not_below([owner_m]) == []
        assert log.ids_not_below([genesis]) == [owner_m]
        assert log.ids_not_below([b"\x07" * 32]) == [genesis, owner_m]  # unknown: ignored
        in_flight: list[bool] = []
        cred = issue(log, 0)
        entry = Credential.decode(cred).id

        async def appender() -> None:
            await log.append(cred)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(appender)
            await trio.testing.wait_all_tasks_blocked()
            # Admitted (the state has it), not yet durable (sync does not).
            in_flight.append(log.state.is_member(member(0)))
            in_flight.append(log.has(entry))
            in_flight.append(entry in log.ids_not_below([genesis]))
        assert in_flight == [True, False, False]
        assert log.has(entry)
        assert log.ids_not_below([genesis]) == [owner_m, entry]


async def test_a_record_changed_on_disk_is_noticed_when_read(tmp_path: Path) -> None:
    path = tmp_path / "space.log"
    with create(path) as log:
        await log.append(issue(log, 0))
        data = bytearray(path.read_bytes())
        start, end = record_offsets(bytes(data))[-1]
        data[end - 3] ^= 1
        with path.open("r+b") as f:
            f.write(bytes(data))
        with pytest.raises(LogCorrupted) as info:
            log.raw_entries()
        assert info.value.offset == start


# -- checkpoints ------------------------------------------------------------------------------


async def test_checkpoint_restores_what_full_verification_rebuilds(tmp_path: Path) -> None:
    path = tmp_path / "space.log"
    await fill(path, 50, checkpoint_every=8)
    with reopen(path) as fast:
        assert fast.report.from_checkpoint == 52
        fast_state = canonical(fast.state)
        fast_status = fast.resolver.statuses()
    with reopen(path, full_verify=True) as full:
        assert full.report.from_checkpoint == 0
        assert full.report.verified == 52
        assert canonical(full.state) == fast_state
        assert full.resolver.statuses() == fast_status


async def test_crash_image_verifies_the_tail_after_a_periodic_checkpoint(tmp_path: Path
                                                                          ) -> None:
    path = tmp_path / "space.log"
    crash = tmp_path / "crash"
    crash.mkdir(mode=0o700)
    with create(path, checkpoint_every=16) as log:
        for i in range(37):
            await log.append(issue(log, i))
        # A crash now: the files as they are, without close()'s checkpoint.
        shutil.copy2(path, crash / "space.log")
        shutil.copy2(tmp_path / "space.log.checkpoint", crash / "space.log.checkpoint")
        state = canonical(log.state)
    with reopen(crash / "space.log") as log:
        assert log.report.entries == 39
        assert log.report.from_checkpoint == 34  # snapshots at 2 + 16, 2 + 32 entries
        assert log.report.verified == 5
        assert canonical(log.state) == state
        # A fork arriving now needs facts of restored entries: read from the file.
        space = new_space()
        branch = fork(space, 2, by=OWNER, start=500)
        await log.ingest([c.encode() for c in branch])
        assert log.resolver.recomputes == 1
        assert len(log.state.members()) == 1 + 37 + 2
    with reopen(crash / "space.log") as log:  # opening and closing wrote checkpoints
        assert log.report.from_checkpoint == 41


async def test_damaged_checkpoints_are_ignored_and_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "space.log"
    cp = tmp_path / "space.log.checkpoint"
    await fill(path, 20)
    data = bytearray(cp.read_bytes())
    data[-1] ^= 0xFF  # the CRC fails
    cp.write_bytes(bytes(data))
    with reopen(path) as log:
        assert log.report.from_checkpoint == 0
        assert log.report.verified == 22
    with reopen(path) as log:
        assert log.report.from_checkpoint == 22
    # A checkpoint whose CRC holds but whose snapshot does not restore: verify all.
    good = logfile.Checkpoint.decode(cp.read_bytes())
    bad = logfile.Checkpoint(good.count, good.offset, good.digest, good.offsets,
                             {**good.resolver, "order": good.resolver["order"][:-4]})
    cp.write_bytes(bad.encode())
    with reopen(path) as log:
        assert log.report.from_checkpoint == 0
        assert log.state.is_member(member(19))


async def test_checkpoint_of_another_log_is_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(mode=0o700)
    b.mkdir(mode=0o700)
    await fill(a / "space.log", 10)
    with create(b / "space.log") as log:
        for i in range(100, 110):
            await log.append(issue(log, i))
    shutil.copy2(a / "space.log.checkpoint", b / "space.log.checkpoint")
    with pytest.raises(LogCorrupted, match="checkpoint") as info:
        reopen(b / "space.log")
    # The first record that differs: the first admission (genesis and owner agree).
    assert info.value.offset == record_offsets((b / "space.log").read_bytes())[2][0]


async def test_truncation_inside_the_checkpointed_range_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "space.log"
    await fill(path, 5)  # close() checkpointed all 7
    data = path.read_bytes()
    last_start, _ = record_offsets(data)[-1]
    path.write_bytes(data[:-3])
    with pytest.raises(LogCorrupted, match="checkpoint") as info:
        reopen(path)
    assert info.value.offset == last_start


# -- torn tails --------------------------------------------------------------------------------


async def test_truncation_at_every_offset_inside_the_last_record(tmp_path: Path) -> None:
    path = tmp_path / "space.log"
    await fill(path, 3)
    (tmp_path / "space.log.checkpoint").unlink()  # a crash before any checkpoint
    data = path.read_bytes()
    last_start, last_end = record_offsets(data)[-1]
    assert last_end == len(data)
    for cut in range(last_start + 1, last_end, 7):
        path.write_bytes(data[:cut])
        with reopen(path) as log:
            assert log.report.entries == 4
            assert log.report.truncated_bytes == cut - last_start
            assert log.state.is_member(member(1))
            assert not log.state.is_member(member(2))
        assert path.stat().st_size == last_start
        (tmp_path / "space.log.checkpoint").unlink()


@pytest.fixture(scope="module")
def eight_record_image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("img") / "space.log"

    async def build() -> None:
        await fill(path, 6)

    trio.run(build)
    return path.read_bytes()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_truncation_reopens_to_the_written_prefix(
        tmp_path: Path, eight_record_image: bytes, data: st.DataObject) -> None:
    image = eight_record_image
    ends = [end for _, end in record_offsets(image)]
    cut = data.draw(st.integers(ends[0], len(image)))  # the genesis is never torn away
    whole = sum(1 for end in ends if end <= cut)
    d = tmp_path / f"t{cut}"
    d.mkdir(mode=0o700, exist_ok=True)
    path = d / "space.log"
    path.write_bytes(image[:cut])
    os.chmod(path, 0o600)
    with SpaceLog.open(path) as log:
        assert log.count == whole
        assert len(log.state.members()) == max(whole - 1, 0)
    assert path.stat().st_size == ends[whole - 1]


async def test_zero_filled_tail_is_torn(tmp_path: Path) -> None:
    path = tmp_path / "space.log"
    await fill(path, 3)
    size = path.stat().st_size
    with path.open("ab") as f:
        f.write(bytes(4096))  # size extended, data never written
    with reopen(path) as log:
        assert log.count == 5
        assert log.report.truncated_bytes == 4096
    assert path.stat().st_size == size


# -- create (import) ---------------------------------------------------------------------------


async def test_create_from_a_peers_log_round_trip(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.log", tmp_path / "dst.log"
    raw = await fill(src, 12)
    accepted: list[int] = []
    with SpaceLog.create(dst, raw, kind=LogKind.SPACE,
                         accept=lambda r: accepted.append(len(r))) as imported:
        assert accepted == [14]
        assert imported.count == 14
        assert imported.report.verified == 14
        assert imported.raw_entries() == raw
        await imported.append(issue(imported, 12))
    assert stat.S_IMODE(dst.stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".*tmp"))


def _list_cases(raw: list[bytes]) -> Iterator[tuple[str, list[bytes], int, str | None]]:
    """(name, bad list, index of the first bad entry, rule of its cause or None)."""
    flipped = bytearray(raw[3])
    flipped[20] ^= 1  # inside the signature
    yield "bad signature", [*raw[:3], bytes(flipped), *raw[4:]], 3, "bad_signature"
    yield "child before parent", [raw[0], raw[2], raw[1], *raw[3:]], 1, None
    yield "duplicate", [*raw, raw[2]], len(raw), None
    yield "second genesis", [*raw, new_space().entries[0]], len(raw), "duplicate_genesis"
    yield "garbage", [*raw[:2], b"\x93\x01"], 2, "malformed"
    yield "not a genesis first", raw[1:], 0, None
    other = SpaceBuilder.create(OWNER, "other").entries[0]
    yield "wrong space", [other, *raw[1:]], 0, "wrong_genesis"


async def test_create_refuses_bad_lists_and_writes_nothing(tmp_path: Path) -> None:
    raw = await fill(tmp_path / "src.log", 4)
    dst = tmp_path / "dst.log"
    for name, bad, index, rule in _list_cases(raw):
        with pytest.raises(InvalidEntries) as info:
            SpaceLog.create(dst, bad, kind=LogKind.SPACE, key=new_space().public)
        assert info.value.index == index, name
        if rule is not None:
            cause = info.value.__cause__
            assert isinstance(cause, CredentialError), name
            assert cause.rule == rule, name
        assert not dst.exists(), name
    with pytest.raises(InvalidEntries):
        SpaceLog.create(dst, [])

    def refuse(r: object) -> None:
        raise CredentialError("no", rule="not_admitted")

    with pytest.raises(CredentialError, match="no"):
        SpaceLog.create(dst, raw, accept=refuse)
    assert not dst.exists()
    assert not list(tmp_path.glob(".*tmp"))


def test_stale_temporary_files_are_removed_on_open(tmp_path: Path) -> None:
    path = tmp_path / "space.log"
    create(path).close()
    for name in (".space.log.checkpoint.123.tmp", ".space.log.456.new.tmp"):
        (tmp_path / name).write_bytes(b"x")
    reopen(path).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.log", "space.log.checkpoint"]


def test_record_framing_crc() -> None:
    body = b"\x01" * 40
    rec = frame_record(body)
    assert rec[:4] == (40).to_bytes(4, "big")
    assert rec[4:8] == zlib.crc32(body).to_bytes(4, "big")
    assert rec[8:12] == zlib.crc32(rec[:8]).to_bytes(4, "big")
    with pytest.raises(LocalProtocolError):
        frame_record(b"\x01" * 32)  # an id and no credential
