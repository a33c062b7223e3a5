"""halo/log.py: edits to a closed log file are refused on open, naming the offset.

Each test builds a real log (genesis, owner, six admissions), edits the file
the way an attacker or a faulty disk would, and checks that opening raises
LogCorrupted at the offset of the first bad record -- with the checkpoint
close() wrote (its digest no longer matches), without a checkpoint (every
record verified), and with full verification (the digest still anchors).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from p2pinvite.errors import LogCorrupted
from p2pinvite.halo.credentials import Credential, Role, issue_space_member
from p2pinvite.halo.log import SpaceLog, frame_record

from .strategies import T0, IdentityBuilder
from .test_log import OWNER, fill

HEADER, REC, ID = 16, 12, 32
COUNT = 8

# How the log is opened after the edit: the trusted path with the checkpoint
# close() wrote, no checkpoint, and full verification (checkpoint present).
MODES = ["checkpoint", "no_checkpoint", "full_verify"]


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "space.log"
    trio.run(fill, path, COUNT - 2)
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


def credential(record: bytes) -> Credential:
    return Credential.decode(record[REC + ID :])


def reseal(cred: Credential) -> bytes:
    """A record for *cred* with its id and both CRCs recomputed."""
    return frame_record(cred.id + cred.encode())


def flip_sig_bit(record: bytes, *, fix_crc: bool) -> bytes:
    """Flip one bit of the credential's signature; optionally recompute id and CRCs."""
    cred = credential(record)
    sig = cred.signature[:10] + bytes([cred.signature[10] ^ 0x04]) + cred.signature[11:]
    changed = dataclasses.replace(cred, signature=sig)
    if fix_crc:
        return reseal(changed)
    return record[: REC + ID] + changed.encode()


def reopen(path: Path, mode: str) -> SpaceLog:
    if mode == "no_checkpoint":
        path.with_name(path.name + ".checkpoint").unlink(missing_ok=True)
    return SpaceLog.open(path, full_verify=mode == "full_verify")


def expect_refused(path: Path, mode: str, offset: int) -> LogCorrupted:
    with pytest.raises(LogCorrupted) as exc:
        reopen(path, mode).close()
    assert exc.value.offset == offset, str(exc.value)
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
        with reopen(log_file, mode) as log:
            assert log.count == COUNT - 1
        return
    expect_refused(log_file, mode, offset_of(records, COUNT - 1))


def test_tampered_last_record_after_a_crash_is_caught_by_its_signature(
        log_file: Path) -> None:
    # Crash image: the checkpoint vouches for records 0..5 only; 6 and 7 are the
    # tail, verified in full on reopen.
    data = log_file.read_bytes()
    records = split(data)
    cut = offset_of(records, 6)
    log_file.write_bytes(data[:cut])
    log_file.with_name(log_file.name + ".checkpoint").unlink()
    SpaceLog.open(log_file).close()  # a checkpoint for 6 records
    log_file.write_bytes(data[:cut] + records[6] + flip_sig_bit(records[7], fix_crc=True))
    with pytest.raises(LogCorrupted, match="bad signature") as exc:
        SpaceLog.open(log_file)
    assert exc.value.offset == offset_of(records, 7)


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
def test_a_stored_id_that_is_not_the_credentials(log_file: Path, mode: str) -> None:
    def tamper(r: list[bytes]) -> list[bytes]:
        body = r[4][REC:]
        r[4] = frame_record(bytes(32) + body[ID:])  # CRCs right, id wrong
        return r

    records = edit(log_file, tamper)
    expect_refused(log_file, mode, offset_of(records, 4))


@pytest.mark.parametrize("mode", MODES)
def test_a_re_parented_last_record(log_file: Path, mode: str) -> None:
    # Parents are signed: naming other parents breaks the signature, even with
    # the id and every checksum recomputed.
    def tamper(r: list[bytes]) -> list[bytes]:
        cred = credential(r[-1])
        r[-1] = reseal(dataclasses.replace(cred, parents=credential(r[-3]).parents))
        return r

    records = edit(log_file, tamper)
    expect_refused(log_file, mode, offset_of(records, COUNT - 1))


@pytest.mark.parametrize("mode", MODES)
def test_a_well_signed_record_from_a_stranger_is_kept_without_effect(
        log_file: Path, mode: str) -> None:
    # A structurally valid entry (good signature, parents present) appended by
    # anyone with write access is a signed fact like any other: it is kept,
    # and the membership rules give it no effect. Only forgeries are corrupt.
    data = log_file.read_bytes()
    records = split(data)
    head = credential(records[-1])
    stranger = IdentityBuilder.create("mallory", seed=b"mallory")
    forged = issue_space_member(
        stranger.device, issuer=stranger.public, space=head.assertion.space,  # type: ignore[union-attr]
        member=stranger.public, role=Role.OWNER, name="m", parents=[head.id],
        chain=stranger.chain_of(), issued_at=T0)
    log_file.write_bytes(data + reseal(forged))
    with reopen(log_file, mode) as log:
        assert log.count == COUNT + 1
        assert log.status(forged.id).rule == "issuer_not_member"
        assert not log.state.is_member(stranger.public)
        assert log.state.is_member(OWNER.public)


def test_header_crc_recomputed_on_a_wrong_length_is_corruption(log_file: Path) -> None:
    data = log_file.read_bytes()
    records = split(data)
    r = records[4]
    head = (0x7FFFFFFF).to_bytes(4, "big") + r[4:8]
    records[4] = head + zlib.crc32(head).to_bytes(4, "big") + r[REC:]
    log_file.write_bytes(join(data, records))
    expect_refused(log_file, "no_checkpoint", offset_of(records, 4))
