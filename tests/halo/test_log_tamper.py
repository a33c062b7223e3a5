"""halo/log.py: edits to a closed log file are refused on open, naming the offset.

Each test builds a real log with the toy validator, edits the file the way an
attacker or a faulty disk would, and checks that opening raises LogCorrupted at
the offset of the first bad record -- in the trusted reopen path (checkpoint
present, checkpoint absent) and with full verification.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from p2pinvite import wire
from p2pinvite.errors import LogCorrupted
from p2pinvite.halo.log import (
    SpaceLog,
    decode_entry,
    encode_entry,
    entry_hash,
    frame_record,
)

from .log_writer_child import OTHER_KEY, ToyValidator, make_credential

HEADER, REC = 16, 12
COUNT = 8

# How the log is opened after the edit: the trusted path with the checkpoint
# close() wrote, the trusted path with no checkpoint, and full verification.
MODES = ["checkpoint", "no_checkpoint", "full_verify"]


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "space.log"

    async def build() -> None:
        with SpaceLog.open(path, ToyValidator(), create=True) as log:
            for n in range(COUNT):
                await log.append(make_credential(n))

    trio.run(build)
    return path


def split(data: bytes) -> list[bytes]:
    """The framed records of a file image."""
    out, off = [], HEADER
    while off < len(data):
        length = int.from_bytes(data[off : off + 4], "big")
        out.append(data[off : off + REC + length])
        off += REC + length
    return out


def offset_of(records: list[bytes], i: int) -> int:
    return HEADER + sum(len(r) for r in records[:i])


def join(data: bytes, records: list[bytes]) -> bytes:
    return data[:HEADER] + b"".join(records)


def flip_sig_bit(record: bytes, *, fix_crc: bool) -> bytes:
    """Flip one bit of the credential's signature; optionally recompute both CRCs."""
    body = record[REC:]
    seq, prev, cred = decode_entry(body)
    m = wire.unpack(cred)
    m["sig"] = m["sig"][:10] + bytes([m["sig"][10] ^ 0x04]) + m["sig"][11:]
    new_body = encode_entry(seq, prev, wire.pack(m))
    assert len(new_body) == len(body)
    if fix_crc:
        return frame_record(new_body)
    return record[:REC] + new_body


def reopen(path: Path, mode: str) -> None:
    if mode == "no_checkpoint":
        path.with_name(path.name + ".checkpoint").unlink()
    SpaceLog.open(path, ToyValidator(), full_verify=mode == "full_verify").close()


def expect_refused(path: Path, mode: str, offset: int) -> LogCorrupted:
    with pytest.raises(LogCorrupted) as exc:
        reopen(path, mode)
    assert exc.value.offset == offset
    assert f"offset {offset}" in str(exc.value)
    return exc.value


def edit(path: Path, fn: Callable[[list[bytes]], list[bytes]]) -> list[bytes]:
    data = path.read_bytes()
    records = split(data)
    path.write_bytes(join(data, fn(list(records))))
    return records


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fix_crc", [False, True])
def test_flipped_signature_bit_in_the_middle(log_file: Path, mode: str, fix_crc: bool) -> None:
    def tamper(r: list[bytes]) -> list[bytes]:
        r[3] = flip_sig_bit(r[3], fix_crc=fix_crc)
        return r

    records = edit(log_file, tamper)
    expect_refused(log_file, mode, offset_of(records, 3))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fix_crc", [False, True])
def test_flipped_signature_bit_in_the_last_record(log_file: Path, mode: str,
                                                  fix_crc: bool) -> None:
    def tamper(r: list[bytes]) -> list[bytes]:
        r[-1] = flip_sig_bit(r[-1], fix_crc=fix_crc)
        return r

    records = edit(log_file, tamper)
    if mode == "no_checkpoint" and not fix_crc:
        # Nothing vouches for the last record and its checksum fails: exactly what
        # a crash mid-write leaves, so it is a torn tail (documented limit).
        reopen(log_file, mode)
        with SpaceLog.open(log_file, ToyValidator()) as log:
            assert log.length == COUNT - 1
        return
    expect_refused(log_file, mode, offset_of(records, COUNT - 1))


def test_tampered_last_record_after_a_crash_is_caught_by_its_signature(
        log_file: Path) -> None:
    # Crash image: the checkpoint vouches for entries 0..5 only; 6 and 7 are the
    # unanchored tail, whose signatures are verified on reopen.
    cp = log_file.with_name(log_file.name + ".checkpoint")
    data = log_file.read_bytes()
    records = split(data)
    cut = offset_of(records, 6)
    log_file.write_bytes(data[:cut])
    cp.unlink()
    SpaceLog.open(log_file, ToyValidator()).close()  # checkpoint for 6 entries
    log_file.write_bytes(data[:cut] + records[6] + flip_sig_bit(records[7], fix_crc=True))
    v = ToyValidator()
    with pytest.raises(LogCorrupted) as exc:
        SpaceLog.open(log_file, v)
    assert exc.value.offset == offset_of(records, 7)
    assert v.signature_checks == 2


@pytest.mark.parametrize("mode", MODES)
def test_record_moved(log_file: Path, mode: str) -> None:
    def tamper(r: list[bytes]) -> list[bytes]:
        r[2], r[5] = r[5], r[2]
        return r

    records = edit(log_file, tamper)
    expect_refused(log_file, mode, offset_of(records, 2))


@pytest.mark.parametrize("mode", MODES)
def test_record_deleted_from_the_middle(log_file: Path, mode: str) -> None:
    records = edit(log_file, lambda r: r[:4] + r[5:])
    expect_refused(log_file, mode, offset_of(records, 4))


@pytest.mark.parametrize("mode", MODES)
def test_record_duplicated(log_file: Path, mode: str) -> None:
    records = edit(log_file, lambda r: [*r[:4], r[3], *r[4:]])
    expect_refused(log_file, mode, offset_of(records, 4))


@pytest.mark.parametrize("mode", MODES)
def test_last_record_duplicated(log_file: Path, mode: str) -> None:
    records = edit(log_file, lambda r: [*r, r[-1]])
    expect_refused(log_file, mode, offset_of(records, COUNT))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("garbage", [b"\x00" * 40, b"\xff" * 13, bytes(range(200)), b"\x07"])
def test_garbage_in_the_middle(log_file: Path, mode: str, garbage: bytes) -> None:
    records = edit(log_file, lambda r: [*r[:5], garbage, *r[5:]])
    expect_refused(log_file, mode, offset_of(records, 5))


@pytest.mark.parametrize("mode", MODES)
def test_bit_flip_in_a_length_field(log_file: Path, mode: str) -> None:
    def tamper(r: list[bytes]) -> list[bytes]:
        r[2] = bytes([r[2][0] ^ 0x01]) + r[2][1:]  # claims 16 MiB more: past EOF
        return r

    records = edit(log_file, tamper)
    expect_refused(log_file, mode, offset_of(records, 2))


@pytest.mark.parametrize("mode", MODES)
def test_prev_hash_of_the_last_record_changed(log_file: Path, mode: str) -> None:
    def tamper(r: list[bytes]) -> list[bytes]:
        seq, _, cred = decode_entry(r[-1][REC:])
        r[-1] = frame_record(encode_entry(seq, bytes(32), cred))
        return r

    records = edit(log_file, tamper)
    expect_refused(log_file, mode, offset_of(records, COUNT - 2))


@pytest.mark.parametrize("mode", MODES)
def test_forged_record_appended_with_a_valid_chain(log_file: Path, mode: str) -> None:
    # A well-formed record with a correct link and checksums, signed by a key the
    # rules do not know: only the credential check can catch it.
    data = log_file.read_bytes()
    records = split(data)
    body = encode_entry(COUNT, entry_hash(records[-1][REC:]), make_credential(99, OTHER_KEY))
    log_file.write_bytes(data + frame_record(body))
    # In every mode the extra record is unanchored and replayed with its signature.
    exc = expect_refused(log_file, mode, len(data))
    assert "refused" in str(exc)


def test_resealed_middle_record_with_recomputed_checksums_and_chain(log_file: Path) -> None:
    # A deliberate rewrite: change record 3's signature, recompute every later
    # link and CRC. The checkpoint's head hash no longer matches.
    data = log_file.read_bytes()
    records = split(data)
    records[3] = flip_sig_bit(records[3], fix_crc=True)
    prev = entry_hash(records[3][REC:])
    for i in range(4, COUNT):
        _, _, cred = decode_entry(records[i][REC:])
        body = encode_entry(i, prev, cred)
        records[i] = frame_record(body)
        prev = entry_hash(body)
    log_file.write_bytes(join(data, records))
    expect_refused(log_file, "checkpoint", offset_of(records, COUNT - 1))
    expect_refused(log_file, "full_verify", offset_of(records, COUNT - 1))
    # Deleting the checkpoint too defeats the trusted path (the documented limit
    # of a trusted reopen); full verification still finds the bad signature.
    log_file.with_name(log_file.name + ".checkpoint").unlink()
    expect_refused(log_file, "full_verify", offset_of(records, 3))


def test_header_crc_recomputed_on_a_wrong_length_is_corruption(log_file: Path) -> None:
    data = log_file.read_bytes()
    records = split(data)
    r = records[4]
    head = (0x7FFFFFFF).to_bytes(4, "big") + r[4:8]
    records[4] = head + zlib.crc32(head).to_bytes(4, "big") + r[REC:]
    log_file.write_bytes(join(data, records))
    expect_refused(log_file, "no_checkpoint", offset_of(records, 4))
