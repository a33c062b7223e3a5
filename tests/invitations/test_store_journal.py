"""The invitation store's record files: appended frames, torn tails, compaction, kill -9.

A record file is a magic header and frames, the last intact frame being the
record (docs/PROTOCOL.md Part 3 §5.5). Counters are appended (one fdatasync):
a failed attempt when it is flushed, a use when it is committed; create,
revoke and compaction rewrite the file atomically.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2pinvite.errors import StorageError
from p2pinvite.invitations import store as store_mod
from p2pinvite.invitations.model import AuthMethod, InvitationKind
from p2pinvite.invitations.store import FILE_MAGIC, InvitationStore

from .test_model_store import spend_attempt

ME = b"m" * 32
GUEST = b"g" * 32
T0 = 1_700_000_000.0
CHILD = Path(__file__).with_name("store_writer_child.py")


def _new(store: InvitationStore, **kw: object) -> bytes:
    args: dict[str, object] = {"kind": InvitationKind.DEVICE, "target": ME, "created_by": ME,
                               "now": T0, "auth": AuthMethod.PIN, "max_uses": None,
                               "max_attempts": 1000}
    args.update(kw)
    return store.create(**args).id  # type: ignore[arg-type]


def _path(directory: Path, inv_id: bytes) -> Path:
    return directory / f"{inv_id.hex()}.inv"


def _frames(path: Path) -> list[int]:
    """Offsets where each intact frame ends (an independent reading of the format)."""
    data, off, ends = path.read_bytes(), len(FILE_MAGIC), []
    while off + 8 <= len(data):
        n = int.from_bytes(data[off:off + 4], "big")
        off += 8 + n
        ends.append(off)
    return ends


def test_counters_are_appended_and_create_revoke_rewrite(tmp_path: Path) -> None:
    store = InvitationStore.open(tmp_path)
    inv_id = _new(store)
    path = _path(tmp_path, inv_id)
    assert len(_frames(path)) == 1
    spend_attempt(store, inv_id, T0)
    store.commit_use(store.reserve_use(inv_id, T0), GUEST, T0)
    assert len(_frames(path)) == 3
    assert _frames(path)[-1] == path.stat().st_size
    again = InvitationStore.open(tmp_path).get(inv_id)
    assert (again.failed_attempts, again.uses) == (1, 1)
    store.revoke(inv_id, by=ME, now=T0 + 1)
    assert len(_frames(path)) == 1  # a revoke is never an appended frame
    assert InvitationStore.open(tmp_path).get(inv_id).revoked_at == T0 + 1


def test_long_files_are_compacted(tmp_path: Path) -> None:
    store = InvitationStore.open(tmp_path)
    inv_id = _new(store)
    path = _path(tmp_path, inv_id)
    sizes = []
    for _ in range(200):
        spend_attempt(store, inv_id, T0)
        sizes.append(path.stat().st_size)
    assert max(sizes) <= store_mod._COMPACT_BYTES
    assert len(_frames(path)) <= store_mod._COMPACT_FRAMES
    assert min(sizes[100:]) < max(sizes)  # it shrank at least once
    assert InvitationStore.open(tmp_path).get(inv_id).failed_attempts == 200


def test_a_torn_append_at_every_byte_leaves_the_previous_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    store = InvitationStore.open(tmp_path / "a")
    inv_id = _new(store)
    spend_attempt(store, inv_id, T0)
    path = _path(tmp_path / "a", inv_id)
    before = path.read_bytes()
    spend_attempt(store, inv_id, T0)  # the frame we tear
    whole = path.read_bytes()
    assert whole.startswith(before)
    for cut in range(len(before), len(whole)):
        for filler in (b"", b"\x00" * (len(whole) - cut)):  # short file, or zeroed blocks
            path.write_bytes(whole[:cut] + filler)
            with caplog.at_level(logging.WARNING, logger="p2pinvite.invitations.store"):
                caplog.clear()
                reopened = InvitationStore.open(tmp_path / "a")
            assert reopened.get(inv_id).failed_attempts == 1, cut
            assert reopened.quarantined == ()
            if cut + len(filler) > len(before):
                assert "torn" in caplog.text
            assert path.read_bytes() == before  # truncated back to the intact frames
    # And the next append follows the intact frames.
    reopened = InvitationStore.open(tmp_path / "a")
    spend_attempt(reopened, inv_id, T0)
    assert InvitationStore.open(tmp_path / "a").get(inv_id).failed_attempts == 2


def test_a_damaged_first_frame_is_quarantined(tmp_path: Path) -> None:
    store = InvitationStore.open(tmp_path)
    inv_id = _new(store)
    spend_attempt(store, inv_id, T0)
    path = _path(tmp_path, inv_id)
    data = bytearray(path.read_bytes())
    data[len(FILE_MAGIC) + 10] ^= 0x01  # inside the first frame's record
    path.write_bytes(bytes(data))
    reopened = InvitationStore.open(tmp_path)
    assert inv_id not in reopened  # no record: the invitation admits nobody
    assert reopened.quarantined == (path.with_name(path.name + ".corrupt"),)


def test_a_failed_append_makes_the_next_write_a_rewrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = InvitationStore.open(tmp_path)
    inv_id = _new(store)
    path = _path(tmp_path, inv_id)
    real = store_mod._append_frame

    def half_then_fail(p: Path, frame: bytes, offset: int) -> None:
        real(p, frame[: len(frame) // 2], offset)  # some bytes reached the file
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store_mod, "_append_frame", half_then_fail)
    store.count_failed_attempt(inv_id, T0 + 1)
    with pytest.raises(StorageError, match="cannot write"):
        store.flush(inv_id)
    assert store.is_dirty(inv_id)  # still pending: the next flush retries
    monkeypatch.undo()
    assert store.flush(inv_id) is True
    assert len(_frames(path)) == 1  # rewritten whole, the half frame is gone
    assert _frames(path)[-1] == path.stat().st_size
    assert InvitationStore.open(tmp_path).get(inv_id).failed_attempts == 1


@pytest.mark.slow
def test_kill_9_never_loses_an_acknowledged_count(tmp_path: Path) -> None:
    """Every value a killed writer reported is on disk, or the one after it (in flight)."""
    rng = random.Random(0x1A7E)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    for _ in range(12):
        # A fresh invitation each round: failed attempts only ever grow.
        inv_id = _new(InvitationStore.open(tmp_path))
        proc = subprocess.Popen([sys.executable, str(CHILD), str(tmp_path), inv_id.hex()],
                                stdout=subprocess.PIPE, env=env)
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()  # started and wrote once
            assert first, "child died before its first write"
            time.sleep(rng.uniform(0.0, 0.15))
            os.kill(proc.pid, signal.SIGKILL)
            out = first + proc.stdout.read()
        finally:
            proc.kill()
            proc.wait()
        text = out.decode()
        complete = text[: text.rfind("\n") + 1]  # the kill may cut the last line short
        lines = [line.split() for line in complete.splitlines()]
        last = (int(lines[-1][0]), int(lines[-1][1]))
        inv = InvitationStore.open(tmp_path).get(inv_id)
        got = (inv.failed_attempts, inv.uses)
        # Either the last reported state, or one more operation that completed
        # on disk without its line being printed.
        assert got == last or _one_step(last, got), (last, got)


def _one_step(before: tuple[int, int], after: tuple[int, int]) -> bool:
    attempts, uses = before
    return after in {(attempts + 1, uses), (attempts, uses + 1)}
