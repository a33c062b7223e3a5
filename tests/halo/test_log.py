"""halo/log.py: appends, group commit, reopen, checkpoints, torn tails, import, poisoning."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path

import hypothesis.strategies as st
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings

from p2pinvite import wire
from p2pinvite.errors import (
    CredentialError,
    DecodeError,
    LocalProtocolError,
    LogCorrupted,
    StorageError,
)
from p2pinvite.halo import log as logmod
from p2pinvite.halo.log import (
    GENESIS_PREV_HASH,
    MAX_CREDENTIAL,
    CheckpointError,
    InvalidEntries,
    LogClosed,
    LogEntry,
    LogLocked,
    LogPoisoned,
    SpaceLog,
    decode_entry,
    encode_entry,
    entries_from_credentials,
    entry_hash,
    frame_record,
)

from .log_writer_child import OTHER_KEY, TOY_KEY, ToyValidator, make_credential

HEADER = 16  # file header bytes (docs/PROTOCOL.md Part 9)
REC = 12  # record header bytes


def log_path(tmp_path: Path) -> Path:
    return tmp_path / "space.log"


async def fill(path: Path, count: int, *, checkpoint_every: int = 1024) -> list[bytes]:
    """Create a log with entries n = 0..count-1 and close it; return the credentials."""
    creds = [make_credential(n) for n in range(count)]
    with SpaceLog.open(path, ToyValidator(), create=True,
                       checkpoint_every=checkpoint_every) as log:
        for c in creds:
            await log.append(c)
    return creds


def record_offsets(data: bytes) -> list[tuple[int, int]]:
    """(offset, end) of each framed record in a file image."""
    out, off = [], HEADER
    while off + REC <= len(data):
        length = int.from_bytes(data[off : off + 4], "big")
        out.append((off, off + REC + length))
        off += REC + length
    return out


# -- encoding ----------------------------------------------------------------


def test_entry_encoding_is_wire_pack_and_round_trips() -> None:
    body = encode_entry(5, bytes(range(32)), b"cred")
    assert body == wire.pack({"seq": 5, "prev_hash": bytes(range(32)), "credential": b"cred"})
    assert decode_entry(body) == (5, bytes(range(32)), b"cred")
    assert entry_hash(body) == hashlib.blake2b(body, digest_size=32).digest()
    rec = frame_record(body)
    assert int.from_bytes(rec[:4], "big") == len(body)
    assert rec[12:] == body


@settings(max_examples=300)
@given(seq=st.one_of(st.integers(0, 70_000), st.integers(0, 2**63 - 1)),
       prev=st.binary(min_size=32, max_size=32),
       cred=st.one_of(st.binary(max_size=600), st.binary(min_size=250, max_size=MAX_CREDENTIAL)))
def test_encode_is_wire_pack_and_decode_inverts_it(seq: int, prev: bytes, cred: bytes) -> None:
    body = encode_entry(seq, prev, cred)
    assert body == wire.pack({"seq": seq, "prev_hash": prev, "credential": cred})
    assert decode_entry(body) == (seq, prev, cred)


@pytest.mark.parametrize("seq", [0, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0xFFFFFFFF,
                                 0x100000000, 2**63 - 1])
@pytest.mark.parametrize("size", [0, 0xFF, 0x100, MAX_CREDENTIAL])
def test_encoding_boundaries(seq: int, size: int) -> None:
    body = encode_entry(seq, bytes(32), b"c" * size)
    assert body == wire.pack({"seq": seq, "prev_hash": bytes(32), "credential": b"c" * size})
    assert decode_entry(body) == (seq, bytes(32), b"c" * size)


@settings(max_examples=300)
@given(st.binary(max_size=120))
def test_decode_entry_accepts_only_canonical_wire_maps(data: bytes) -> None:
    # The fast parser must never accept what the strict generic decoder + canonical
    # re-encoding would not: the two agree on every accepted input.
    prefix = encode_entry(1, bytes(32), b"")[:5]
    for body in (data, prefix + data):
        try:
            seq, prev, cred = decode_entry(body)
        except DecodeError:
            continue
        m = wire.unpack(body)
        assert m == {"seq": seq, "prev_hash": prev, "credential": cred}
        assert wire.pack(m) == body


@pytest.mark.parametrize("body", [
    wire.pack({"seq": 1, "prev_hash": bytes(32)}),
    wire.pack({"seq": 1, "prev_hash": bytes(32), "credential": b"x", "extra": 1}),
    wire.pack({"seq": -1, "prev_hash": bytes(32), "credential": b"x"}),
    wire.pack({"seq": 1, "prev_hash": bytes(31), "credential": b"x"}),
    wire.pack({"seq": 1, "prev_hash": bytes(32), "credential": "x"}),
    # non-shortest integer (0xcd 0x0001) and bin16 header for a 1-byte credential
    b"\x83\xa3seq\xcd\x00\x01" + encode_entry(1, bytes(32), b"x")[6:],
    encode_entry(1, bytes(32), b"x")[:-3] + b"\xc5\x00\x01x",
    encode_entry(1, bytes(32), b"x") + b"\x00",
    b"",
])
def test_decode_entry_refuses_non_canonical(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_entry(body)


# -- append and reopen -----------------------------------------------------------


async def test_append_reopen_round_trip_and_chain(tmp_path: Path) -> None:
    path = log_path(tmp_path)
    creds = await fill(path, 10)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    v = ToyValidator()
    with SpaceLog.open(path, v) as log:
        assert log.length == 10
        assert v.ns == list(range(10))
        entries = log.entries()
        assert [e.seq for e in entries] == list(range(10))
        assert [e.credential for e in entries] == creds
        prev = GENESIS_PREV_HASH
        for e in entries:
            assert e.prev_hash == prev
            assert e.hash == entry_hash(encode_entry(e.seq, e.prev_hash, e.credential))
            prev = e.hash
        assert log.head_hash == prev
        assert log.raw_entries(7) == [encode_entry(e.seq, e.prev_hash, e.credential)
                                      for e in entries[7:]]
        assert log.entries(10) == []
        with pytest.raises(LocalProtocolError):
            log.entries(11)


async def test_append_returns_seq_in_order_and_survives_reopen(tmp_path: Path) -> None:
    path = log_path(tmp_path)
    with SpaceLog.open(path, ToyValidator(), create=True) as log:
        assert log.length == 0
        assert log.head_hash == GENESIS_PREV_HASH
        assert [await log.append(make_credential(n)) for n in (3, 7, 9)] == [0, 1, 2]
    v = ToyValidator()
    with SpaceLog.open(path, v) as log:
        assert await log.append(make_credential(10)) == 3
        assert v.ns == [3, 7, 9, 10]
    with SpaceLog.open(path, ToyValidator()) as log:
        assert [e.seq for e in log.entries()] == [0, 1, 2, 3]


async def test_open_missing_without_create_fails(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        SpaceLog.open(log_path(tmp_path), ToyValidator())


async def test_second_open_is_locked_out(tmp_path: Path) -> None:
    path = log_path(tmp_path)
    with SpaceLog.open(path, ToyValidator(), create=True), pytest.raises(LogLocked):
        SpaceLog.open(path, ToyValidator())
    SpaceLog.open(path, ToyValidator()).close()  # released on close


async def test_refuses_a_log_readable_by_others(tmp_path: Path) -> None:
    path = log_path(tmp_path)
    await fill(path, 1)
    os.chmod(path, 0o644)
    with pytest.raises(StorageError, match="0600"):
        SpaceLog.open(path, ToyValidator())


async def test_bad_file_header(tmp_path: Path) -> None:
    path = log_path(tmp_path)
    await fill(path, 2)
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(LogCorrupted) as exc:
        SpaceLog.open(path, ToyValidator())
    assert exc.value.offset == 0


async def test_unsupported_version(tmp_path: Path) -> None:
    path = log_path(tmp_path)
    await fill(path, 1)
    data = bytearray(path.read_bytes())
    data[9] = 2
    path.write_bytes(bytes(data))
    with pytest.raises(StorageError, match="version"):
        SpaceLog.open(path, ToyValidator())


async def test_closed_log_refuses_appends(tmp_path: Path) -> None:
    log = SpaceLog.open(log_path(tmp_path), ToyValidator(), create=True)
    log.close()
    log.close()  # idempotent
    with pytest.raises(LogClosed):
        await log.append(make_credential(1))
    with pytest.raises(LogClosed):
        log.entries()


# -- refusals ------------------------------------------------------------------------


async def test_refusal_leaves_log_and_state_unchanged(tmp_path: Path) -> None:
    path = log_path(tmp_path)
    v = ToyValidator()
    with SpaceLog.open(path, v, create=True) as log:
        await log.append(make_credential(5))
        before = path.read_bytes()
        for bad, rule in [(make_credential(5), "n_not_increasing"),
                          (make_credential(9, OTHER_KEY), "unknown_signer"),
                          (b"\x01garbage", "malformed")]:
            with pytest.raises(CredentialError) as exc:
                await log.append(bad)
            assert exc.value.rule == rule
        forged = wire.unpack(make_credential(9))
        forged["sig"] = bytes(64)
        with pytest.raises(CredentialError) as exc:
            await log.append(wire.pack(forged))
        assert exc.value.rule == "signature"
        assert path.read_bytes() == before
        assert log.length == 1
        assert v.ns == [5]
        assert await log.append(make_credential(6)) == 1


async def test_oversized_credential_refused_before_the_validator(tmp_path: Path) -> None:
    v = ToyValidator()
    with SpaceLog.open(log_path(tmp_path), v, create=True) as log:
        with pytest.raises(CredentialError) as exc:
            await log.append(b"\x00" * (MAX_CREDENTIAL + 1))
        assert exc.value.rule == "too_large"
        assert v.signature_checks == 0
        assert log.length == 0


async def test_cancelled_before_admission_admits_nothing(tmp_path: Path) -> None:
    v = ToyValidator()
    with SpaceLog.open(log_path(tmp_path), v, create=True) as log:
        with trio.CancelScope() as scope:
            scope.cancel()
            await log.append(make_credential(1))
        assert scope.cancelled_caught
        assert log.length == 0
        assert v.ns == []


async def test_cancel_after_admission_still_commits(tmp_path: Path) -> None:
    path = log_path(tmp_path)
    v = ToyValidator()
    with SpaceLog.open(path, v, create=True) as log:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log.append, make_credential(1))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()  # the append is waiting on its fsync
        assert v.ns == [1]
        assert log.length == 1
    with SpaceLog.open(path, ToyValidator()) as log:
        assert log.length == 1


# -- group commit -----------------------------------------------------------------------


async def test_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    v = ToyValidator()
    path = log_path(tmp_path)
    with SpaceLog.open(path, v, create=True) as log:
        results: list[int] = []

        async def one() -> None:
            n = v.last + 1  # no await before append: each task takes the next n
            results.append(await log.append(make_credential(n)))

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for _ in range(32):
                    nursery.start_soon(one)
        assert sorted(results) == list(range(32))  # each learned its own seq
        assert 1 <= log.commit_count < 32  # ... and they shared fsyncs
        assert log.length == 32
    v2 = ToyValidator()
    with SpaceLog.open(path, v2, full_verify=True) as log:
        assert v2.ns == list(range(32))


async def test_single_use_race_admits_exactly_one(tmp_path: Path) -> None:
    with SpaceLog.open(log_path(tmp_path), ToyValidator(), create=True) as log:
        outcomes: list[str] = []

        async def redeem() -> None:
            try:
                await log.append(make_credential(42))
                outcomes.append("ok")
            except CredentialError:
                outcomes.append("refused")

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(redeem)
        assert sorted(outcomes) == ["ok"] + ["refused"] * 7
        assert log.length == 1


# -- poisoning ---------------------------------------------------------------------------


async def test_write_failure_poisons_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    path = log_path(tmp_path)
    v = ToyValidator()
    log = SpaceLog.open(path, v, create=True)
    await log.append(make_credential(0))
    good_size = path.stat().st_size
    real_write = logmod.fsutil.pwrite_all

    def failing_write(fd: int, data: bytes, offset: int) -> None:
        real_write(fd, data[: len(data) // 2], offset)  # half a batch reaches the file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(logmod.fsutil, "pwrite_all", failing_write)
    errors: list[BaseException] = []

    async def one() -> None:
        n = v.last + 1
        try:
            await log.append(make_credential(n))
        except LogPoisoned as exc:
            errors.append(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(one)
    assert len(errors) == 5  # nobody was acknowledged
    assert isinstance(errors[0].__cause__, OSError)
    assert log.poisoned
    assert log.length == 1
    monkeypatch.setattr(logmod.fsutil, "pwrite_all", real_write)
    with pytest.raises(LogPoisoned):
        await log.append(make_credential(100))  # later appends too, even if disk is fine
    assert path.stat().st_size == good_size  # the half batch was cut off again
    log.close()
    v2 = ToyValidator()
    with SpaceLog.open(path, v2) as log2:
        assert log2.length == 1
        assert v2.ns == [0]
        assert await log2.append(make_credential(1)) == 1


async def test_fsync_failure_poisons_and_reopen_keeps_acknowledged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = log_path(tmp_path)
    log = SpaceLog.open(path, ToyValidator(), create=True)
    assert await log.append(make_credential(0)) == 0

    def failing_sync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(logmod, "_sync", failing_sync)
    with pytest.raises(LogPoisoned):
        await log.append(make_credential(1))
    log.close()
    monkeypatch.undo()
    with SpaceLog.open(path, ToyValidator()) as log2:
        assert [e.seq for e in log2.entries()] == [0]


# -- checkpoints ------------------------------------------------------------------------------


async def test_checkpoint_restore_equals_full_replay(tmp_path: Path) -> None:
    path = log_path(tmp_path)
    await fill(path, 50, checkpoint_every=8)
    assert (tmp_path / "space.log.checkpoint").exists()
    fast, full = ToyValidator(), ToyValidator()
    with SpaceLog.open(path, fast) as log:
        assert log.report.from_checkpoint == 50  # close wrote a final checkpoint
        assert log.report.verified_signatures == 0
        assert fast.signature_checks == 0
    with SpaceLog.open(path, full, full_verify=True) as log:
        assert log.report.from_checkpoint == 0
        assert log.report.verified_signatures == 50 == full.signature_checks
    assert fast.snapshot() == full.snapshot()
    assert fast.ns == list(range(50))


async def test_crash_image_replays_tail_after_periodic_checkpoint(tmp_path: Path) -> None:
    path = log_path(tmp_path)
    crash = tmp_path / "crash"
    crash.mkdir(mode=0o700)
    with SpaceLog.open(path, ToyValidator(), create=True, checkpoint_every=16) as log:
        for n in range(37):
            await log.append(make_credential(n))
        # A crash now: the files as they are, without close()'s checkpoint.
        shutil.copy2(path, crash / "space.log")
        shutil.copy2(tmp_path / "space.log.checkpoint", crash / "space.log.checkpoint")
    v = ToyValidator()
    with SpaceLog.open(crash / "space.log", v) as log:
        assert log.report.entries == 37
        assert log.report.from_checkpoint == 32
        assert log.report.verified_signatures == 5 == v.signature_checks
        assert v.ns == list(range(37))
    # opening wrote a checkpoint for the whole log
    with SpaceLog.open(crash / "space.log", ToyValidator()) as log:
        assert log.report.from_checkpoint == 37


async def test_without_checkpoint_only_the_last_signature_is_checked(tmp_path: Path) -> None:
    path = log_path(tmp_path)
    await fill(path, 20)
    (tmp_path / "space.log.checkpoint").unlink()
    v = ToyValidator()
    with SpaceLog.open(path, v) as log:
        assert log.report.from_checkpoint == 0
        assert log.report.verified_signatures == 1 == v.signature_checks
        assert v.ns == list(range(20))


async def test_damaged_checkpoint_is_ignored_and_rewritten(tmp_path: Path) -> None:
    path = log_path(tmp_path)
    cp = tmp_path / "space.log.checkpoint"
    await fill(path, 20)
    data = bytearray(cp.read_bytes())
    data[-1] ^= 0xFF
    cp.write_bytes(bytes(data))
    v = ToyValidator()
    with SpaceLog.open(path, v) as log:
        assert log.report.from_checkpoint == 0
        assert v.ns == list(range(20))
    with SpaceLog.open(path, ToyValidator()) as log:
        assert log.report.from_checkpoint == 20


async def test_checkpoint_of_another_log_is_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(mode=0o700)
    b.mkdir(mode=0o700)
    await fill(a / "space.log", 10)
    creds = [make_credential(n) for n in range(0, 20, 2)]
    with SpaceLog.open(b / "space.log", ToyValidator(), create=True) as log:
        for c in creds:
            await log.append(c)
    shutil.copy2(a / "space.log.checkpoint", b / "space.log.checkpoint")
    with pytest.raises(LogCorrupted, match="checkpoint"):
        SpaceLog.open(b / "space.log", ToyValidator())


async def test_log_shorter_than_checkpoint_is_refused(tmp_path: Path) -> None:
    path = log_path(tmp_path)
    await fill(path, 10)
    data = path.read_bytes()
    offsets = record_offsets(data)
    path.write_bytes(data[: offsets[-1][0]])  # the last whole record is gone
    with pytest.raises(LogCorrupted, match="checkpoint") as exc:
        SpaceLog.open(path, ToyValidator())
    assert exc.value.offset == offsets[-1][0]


async def test_snapshot_the_validator_refuses(tmp_path: Path) -> None:
    path = log_path(tmp_path)
    await fill(path, 3)
    v = ToyValidator()
    v.refuse_restore = True
    with pytest.raises(CheckpointError):
        SpaceLog.open(path, v)
    v2 = ToyValidator()
    v2.refuse_restore = True
    with SpaceLog.open(path, v2, full_verify=True) as log:
        assert log.length == 3


# -- torn tails --------------------------------------------------------------------------------


async def test_truncation_at_every_offset_inside_the_last_record(tmp_path: Path) -> None:
    path = log_path(tmp_path)
    await fill(path, 5)
    (tmp_path / "space.log.checkpoint").unlink()  # a crash before any checkpoint
    data = path.read_bytes()
    last_start, last_end = record_offsets(data)[-1]
    assert last_end == len(data)
    for cut in range(last_start + 1, last_end):
        path.write_bytes(data[:cut])
        v = ToyValidator()
        log = SpaceLog.open(path, v)
        try:
            assert log.report.entries == 4
            assert log.report.truncated_bytes == cut - last_start
            assert v.ns == [0, 1, 2, 3]
        finally:
            log.close()
        assert path.stat().st_size == last_start
        (tmp_path / "space.log.checkpoint").unlink()


@pytest.fixture(scope="module")
def ten_record_image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("img") / "space.log"

    async def build() -> None:
        await fill(path, 10)

    trio.run(build)
    return path.read_bytes()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_truncation_reopens_to_the_written_prefix(
        tmp_path: Path, ten_record_image: bytes, data: st.DataObject) -> None:
    image = ten_record_image
    cut = data.draw(st.integers(HEADER, len(image)))
    ends = [end for _, end in record_offsets(image)]
    whole = sum(1 for end in ends if end <= cut)
    d = tmp_path / f"t{cut}"
    d.mkdir(mode=0o700, exist_ok=True)
    path = d / "space.log"
    path.write_bytes(image[:cut])
    os.chmod(path, 0o600)
    v = ToyValidator()
    with SpaceLog.open(path, v) as log:
        assert log.length == whole
        assert v.ns == list(range(whole))
    keep = ends[whole - 1] if whole else HEADER
    assert path.stat().st_size == keep


async def test_zero_filled_tail_is_torn(tmp_path: Path) -> None:
    path = log_path(tmp_path)
    await fill(path, 3)
    (tmp_path / "space.log.checkpoint").unlink()
    size = path.stat().st_size
    with path.open("ab") as f:
        f.write(bytes(4096))  # size extended, data never written
    with SpaceLog.open(path, ToyValidator()) as log:
        assert log.length == 3
        assert log.report.truncated_bytes == 4096
    assert path.stat().st_size == size


async def test_truncation_inside_the_checkpointed_range_is_corruption(tmp_path: Path) -> None:
    path = log_path(tmp_path)
    await fill(path, 5)  # close() checkpointed all 5
    data = path.read_bytes()
    last_start, _ = record_offsets(data)[-1]
    path.write_bytes(data[:-3])
    with pytest.raises(LogCorrupted) as exc:
        SpaceLog.open(path, ToyValidator())
    assert exc.value.offset == last_start


# -- import ---------------------------------------------------------------------------------------


async def test_import_round_trip(tmp_path: Path) -> None:
    src, dst = tmp_path / "src.log", tmp_path / "dst.log"
    await fill(src, 12)
    with SpaceLog.open(src, ToyValidator()) as log:
        raw = log.raw_entries()
        head = log.head_hash
    v = ToyValidator()
    with SpaceLog.import_entries(dst, raw, v) as imported:
        assert imported.length == 12
        assert imported.head_hash == head
        assert v.signature_checks == 12
        assert imported.report.verified_signatures == 12
        assert v.ns == list(range(12))
        assert await imported.append(make_credential(12)) == 12
    assert stat.S_IMODE(dst.stat().st_mode) == 0o600
    with SpaceLog.open(dst, ToyValidator()) as log:
        assert log.length == 13
        assert log.raw_entries()[:12] == raw


async def test_import_refuses_existing_path(tmp_path: Path) -> None:
    path = log_path(tmp_path)
    await fill(path, 1)
    with pytest.raises(StorageError, match="exists"):
        SpaceLog.import_entries(path, [], ToyValidator())


@pytest.fixture
async def raw_five(tmp_path: Path) -> list[bytes]:
    src = tmp_path / "src.log"
    await fill(src, 5)
    with SpaceLog.open(src, ToyValidator()) as log:
        return log.raw_entries()


def _resign_chain(bodies: list[bytes], start: int) -> list[bytes]:
    """Recompute seq/prev_hash links from *start* on (what a forger would do)."""
    out = bodies[:start]
    prev = entry_hash(out[-1]) if out else GENESIS_PREV_HASH
    for i, b in enumerate(bodies[start:], start):
        _, _, cred = decode_entry(b)
        body = encode_entry(i, prev, cred)
        out.append(body)
        prev = entry_hash(body)
    return out


def _flip_sig(body: bytes) -> bytes:
    seq, prev, cred = decode_entry(body)
    m = wire.unpack(cred)
    m["sig"] = bytes([m["sig"][0] ^ 1]) + m["sig"][1:]
    return encode_entry(seq, prev, wire.pack(m))


async def test_import_refuses_tampered_lists(tmp_path: Path, raw_five: list[bytes]) -> None:
    forged = encode_entry(5, entry_hash(raw_five[-1]), make_credential(5, OTHER_KEY))
    cases: list[tuple[str, list[bytes], int, type[Exception]]] = [
        ("flipped signature", [*raw_five[:2], _flip_sig(raw_five[2]), *raw_five[3:]], 2,
         CredentialError),
        ("flipped signature, chain recomputed",
         _resign_chain([*raw_five[:2], _flip_sig(raw_five[2]), *raw_five[3:]], 2), 2,
         CredentialError),
        ("reordered", [raw_five[0], raw_five[2], raw_five[1], *raw_five[3:]], 1, DecodeError),
        ("reordered, chain recomputed",
         _resign_chain([raw_five[0], raw_five[2], raw_five[1], *raw_five[3:]], 1), 2,
         CredentialError),
        ("deleted", [raw_five[0], *raw_five[2:]], 1, DecodeError),
        ("duplicated", [*raw_five[:3], raw_five[2], *raw_five[3:]], 3, DecodeError),
        ("forged signer", [*raw_five, forged], 5, CredentialError),
        ("garbage", [*raw_five[:2], b"\x81\xa1a\x01", *raw_five[2:]], 2, DecodeError),
        ("not canonical", [*raw_five[:1], raw_five[1] + b"\x00"], 1, DecodeError),
    ]
    for i, (what, entries, index, cause) in enumerate(cases):
        dst = tmp_path / f"dst{i}.log"
        with pytest.raises(InvalidEntries) as exc:
            SpaceLog.import_entries(dst, entries, ToyValidator())
        assert exc.value.index == index, what
        assert isinstance(exc.value.__cause__, cause), what
        assert not dst.exists(), what  # nothing written


# -- random operation sequences ------------------------------------------------------------------


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.integers(0, 30), st.sampled_from(["ok", "badsig", "stranger"]),
                              st.booleans()), max_size=25))
def test_random_valid_and_invalid_appends(tmp_path: Path,
                                          ops: list[tuple[int, str, bool]]) -> None:
    d = tmp_path / f"r{abs(hash(tuple(ops)))}"
    d.mkdir(mode=0o700)
    path = d / "space.log"
    model: list[int] = []

    async def run() -> None:
        log = SpaceLog.open(path, ToyValidator(), create=True, checkpoint_every=4)
        for n, kind, reopen in ops:
            cred = make_credential(n, OTHER_KEY if kind == "stranger" else TOY_KEY)
            if kind == "badsig":
                m = wire.unpack(cred)
                m["sig"] = bytes(64)
                cred = wire.pack(m)
            accept = kind == "ok" and (not model or n > model[-1])
            try:
                seq = await log.append(cred)
            except CredentialError:
                assert not accept
            else:
                assert accept
                assert seq == len(model)
                model.append(n)
            if reopen:
                log.close()
                log = SpaceLog.open(path, ToyValidator())
            assert log.length == len(model)
        log.close()

    trio.run(run)
    v = ToyValidator()
    with SpaceLog.open(path, v, full_verify=True) as log:
        assert v.ns == model
        assert [e.seq for e in log.entries()] == list(range(len(model)))
        assert all(isinstance(e, LogEntry) for e in log.entries())


# -- with HALO's real credentials and MembershipState --------------------------------------------


async def test_real_space_log_import_append_reopen(tmp_path: Path) -> None:
    from p2pinvite.halo.credentials import Role
    from p2pinvite.halo.state import LogKind, MembershipState

    from .strategies import IdentityBuilder, SpaceBuilder

    owner = IdentityBuilder.create("owner", seed=b"owner-01")
    space = SpaceBuilder.create(owner)
    for i in range(6):
        space.admit(owner, bytes([i]) * 32, Role.READER, name=f"m{i}")
    path = tmp_path / "space.log"
    state = MembershipState(kind=LogKind.SPACE, key=space.public)
    with SpaceLog.import_entries(path, entries_from_credentials(space.entries), state) as log:
        assert log.length == 8
        bob = IdentityBuilder.create("bob", seed=b"bob-0001")
        seq = await log.append(space.admit(owner, bob.public, Role.EDITOR, name="bob",
                                           invitation=b"inv-1"))
        assert seq == 8
        with pytest.raises(CredentialError) as exc:  # already a member
            await log.append(space.admit(owner, bob.public, Role.EDITOR, name="bob"))
        assert exc.value.rule == "already_member"
        assert state.role_of(bob.public) is Role.EDITOR
    fast = MembershipState(kind=LogKind.SPACE, key=space.public)
    full = MembershipState(kind=LogKind.SPACE, key=space.public)
    with SpaceLog.open(path, fast) as log:
        assert log.report.from_checkpoint == 9
    with SpaceLog.open(path, full, full_verify=True) as log:
        assert log.report.verified_signatures == 9
    assert fast.snapshot() == full.snapshot() == state.snapshot()
    assert fast.redeemed(b"inv-1") == 1


async def test_real_concurrent_admission_of_one_identity_admits_once(tmp_path: Path) -> None:
    from p2pinvite.halo.credentials import Role
    from p2pinvite.halo.state import LogKind, MembershipState

    from .strategies import IdentityBuilder, SpaceBuilder

    owner = IdentityBuilder.create("owner", seed=b"owner-02")
    space = SpaceBuilder.create(owner)
    state = MembershipState(kind=LogKind.SPACE)
    guest = IdentityBuilder.create("guest", seed=b"guest-01")
    creds = [space.admit(owner, guest.public, Role.READER, name=f"g{i}") for i in range(6)]
    with SpaceLog.import_entries(tmp_path / "s.log", entries_from_credentials(space.entries[:2]),
                                 state) as log:
        outcomes: list[str] = []

        async def admit(cred: bytes) -> None:
            try:
                await log.append(cred)
                outcomes.append("ok")
            except CredentialError as exc:
                outcomes.append(exc.rule)

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for c in creds:
                    nursery.start_soon(admit, c)
        assert sorted(outcomes) == ["already_member"] * 5 + ["ok"]
        assert log.length == 3


async def test_real_import_refuses_a_tampered_signature(tmp_path: Path) -> None:
    from p2pinvite.halo.state import MembershipState

    from .strategies import build_space_log

    creds = build_space_log(4)
    bad = bytearray(creds[3])
    sig_at = creds[3].index(wire.unpack(creds[3])["sig"])
    bad[sig_at + 20] ^= 0x01  # one bit of the Ed25519 signature
    entries = entries_from_credentials([*creds[:3], bytes(bad), *creds[4:]])
    with pytest.raises(InvalidEntries) as exc:
        SpaceLog.import_entries(tmp_path / "s.log", entries, MembershipState())
    assert exc.value.index == 3
    assert isinstance(exc.value.__cause__, CredentialError)
    assert exc.value.__cause__.rule == "bad_signature"
    assert not (tmp_path / "s.log").exists()


def test_documented_example_bytes() -> None:
    # docs/PROTOCOL.md Part 9 section 2.4
    from p2pinvite.halo.log import _file_header

    assert _file_header().hex() == "897032706c6f670a00010000400594b1"
    b0 = encode_entry(0, GENESIS_PREV_HASH, b"ab")
    assert b0.hex() == ("83a373657100a9707265765f68617368c420" + "00" * 32
                        + "aa63726564656e7469616cc4026162")
    h0 = entry_hash(b0)
    assert h0.hex() == "e8af21efdcc0e2257621acb21add5d377d9b0ad4fe90bfc6ffa80c6eeb531b03"
    assert frame_record(b0)[:12].hex() == "000000419119c2449ec780eb"
    b1 = encode_entry(1, h0, b"cd")
    assert entry_hash(b1).hex() == (
        "4b8ef5fc6e722e22fadfa4bd0f5bf640a2b767757a8960dda01c0d3c7e9b6f10")
    assert frame_record(b1)[:12].hex() == "000000414b1e5f655ae72b9a"


async def test_close_while_an_append_is_in_flight_is_refused(tmp_path: Path) -> None:
    log = SpaceLog.open(log_path(tmp_path), ToyValidator(), create=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.append, make_credential(1))
        await trio.testing.wait_all_tasks_blocked()  # the leader is in its fsync thread
        with pytest.raises(LocalProtocolError):
            log.close()
    assert log.length == 1
    log.close()


class _ApplyFails(ToyValidator):
    def apply(self, checked: object) -> None:
        if len(self.ns) == 2:
            raise RuntimeError("bug in the rules")
        super().apply(checked)


async def test_a_failing_apply_poisons_the_log(tmp_path: Path) -> None:
    path = log_path(tmp_path)
    log = SpaceLog.open(path, _ApplyFails(), create=True)
    await log.append(make_credential(0))
    await log.append(make_credential(1))
    with pytest.raises(LogPoisoned) as exc:
        await log.append(make_credential(2))
    assert isinstance(exc.value.__cause__, RuntimeError)
    with pytest.raises(LogPoisoned):
        await log.append(make_credential(3))
    log.close()
    with SpaceLog.open(path, ToyValidator()) as reopened:
        assert reopened.length == 2
