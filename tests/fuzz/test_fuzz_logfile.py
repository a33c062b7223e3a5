"""Log files and their checkpoints, damaged in any way.

Proves: :meth:`SpaceLog.open` on a file made of random bytes, or of a real
log with any edits (byte edits, and credentials edited inside records whose
CRCs were then made good, so the edit reaches the credential checks), raises
only :class:`~p2pinvite.errors.StorageError` (``LogCorrupted`` and kin) or
opens (a torn tail is cut); a damaged
checkpoint, even one whose CRC was recomputed over an edited payload (so it
reaches the resolver snapshot's own checks), is ignored or refused with a
``StorageError``, never a bare exception; :meth:`Checkpoint.decode` raises
only ``DecodeError``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import msgpack
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite.errors import CredentialError, DecodeError, StorageError
from p2pinvite.halo import logfile
from p2pinvite.halo.credentials import decode_credential
from p2pinvite.halo.log import SpaceLog
from p2pinvite.halo.logfile import Checkpoint, checkpoint_path, file_header
from tests.halo.test_log import fill, new_space, record_offsets

from .strategies import CHEAP, MEDIUM, byte_mutations, map_mutations, mutations

pytestmark = pytest.mark.slow


def _images() -> tuple[bytes, bytes]:
    """A real log of 8 records and its checkpoint (written every 2 entries)."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "space.log"
        trio.run(lambda: fill(path, 6, checkpoint_every=2))
        return path.read_bytes(), checkpoint_path(path).read_bytes()


LOG, CKPT = _images()
_HEAD = logfile._CKPT_HEADER


@contextmanager
def _files(log: bytes, ckpt: bytes | None) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o700)
        path = Path(d) / "space.log"
        path.write_bytes(log)
        os.chmod(path, 0o600)
        if ckpt is not None:
            cp = checkpoint_path(path)
            cp.write_bytes(ckpt)
            os.chmod(cp, 0o600)
        yield path


def _open(log: bytes, ckpt: bytes | None, *, pinned: bool) -> None:
    """Open like the daemon does (genesis pinned) or like a tool (not); typed errors only."""
    with _files(log, ckpt) as path:
        space = new_space()
        try:
            opened = (SpaceLog.open(path, kind=None, key=space.public) if pinned
                      else SpaceLog.open(path))
        except StorageError:
            return
        with opened as log_:
            assert log_.count >= 1


@st.composite
def _reframed(draw: st.DrawFn) -> bytes:
    """The log with one record's credential edited and its record CRCs made good again,
    so the edit gets past the framing into the id, decode and signature checks."""
    records = [(off, end) for off, end in record_offsets(LOG)]
    k = draw(st.integers(0, len(records) - 1))
    off, end = records[k]
    body = LOG[off + logfile.REC_LEN : end]
    rid, cred = body[: logfile.ID_SIZE], body[logfile.ID_SIZE :]
    edited = draw(mutations(cred))
    with contextlib.suppress(DecodeError, CredentialError):
        rid = draw(st.sampled_from([rid, decode_credential(edited).id]))
    new = rid + edited
    if not logfile.MIN_BODY <= len(new) <= logfile.MAX_BODY:
        return LOG
    return LOG[:off] + logfile.frame_record(new) + LOG[end:]


def _recrc(payload: bytes) -> bytes:
    """A checkpoint around *payload* with a correct header and CRC."""
    return _HEAD.pack(logfile.CHECKPOINT_MAGIC, logfile.FORMAT_VERSION, 0, len(payload),
                      zlib.crc32(payload)) + payload


@settings(max_examples=MEDIUM)
@given(st.one_of(byte_mutations(LOG), _reframed(), _reframed(),
                 st.binary(max_size=600).map(lambda b: file_header() + b),
                 st.binary(max_size=200)),
       st.booleans())
def test_damaged_log_opens_or_raises_storage_error(log: bytes, pinned: bool) -> None:
    _open(log, None, pinned=pinned)


@settings(max_examples=MEDIUM)
@given(st.one_of(byte_mutations(CKPT), map_mutations(CKPT[_HEAD.size :]).map(_recrc)),
       st.booleans())
def test_damaged_checkpoint_is_ignored_or_raises_storage_error(ckpt: bytes, full: bool) -> None:
    with _files(LOG, ckpt) as path:
        try:
            opened = SpaceLog.open(path, full_verify=full)
        except StorageError:
            return
        with opened as log_:
            assert log_.count == 8  # the log itself is authoritative


def _resolver_edits() -> st.SearchStrategy[bytes]:
    """Checkpoints whose resolver snapshot (only) was edited, with a valid CRC."""
    m = msgpack.unpackb(CKPT[_HEAD.size :], raw=False)
    snapshot = msgpack.packb(m["resolver"], use_bin_type=True)

    def wrap(edited: bytes) -> bytes:
        return _recrc(msgpack.packb({**m, "resolver": msgpack.unpackb(edited, raw=False)},
                                    use_bin_type=True))
    return map_mutations(snapshot).map(wrap)


@settings(max_examples=MEDIUM)
@given(_resolver_edits())
def test_edited_resolver_snapshot_is_ignored_or_raises_storage_error(ckpt: bytes) -> None:
    # The digest still matches the log, so the snapshot's own checks are all that stand
    # between a damaged checkpoint and the state the log is opened with.
    with _files(LOG, ckpt) as path:
        try:
            opened = SpaceLog.open(path)
        except StorageError:
            return
        with opened as log_:
            assert log_.count == 8


@settings(max_examples=CHEAP)
@given(st.one_of(byte_mutations(CKPT), st.binary(max_size=300),
                 map_mutations(CKPT[_HEAD.size :]).map(_recrc)))
def test_checkpoint_decode_raises_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        Checkpoint.decode(data)
