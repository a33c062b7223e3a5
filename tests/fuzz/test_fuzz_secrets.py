"""Sealed secrets, swarm secret files and the known-peers file.

Proves:

* :func:`open_sealed` raises only ``DecodeError``/``BadTag``/``InvalidPoint``
  (all ``RemoteProtocolError``) for any box, including real boxes with edits
  and low-order ephemeral keys;
* :func:`open_handover` the same, for any box, log and epoch;
* a ``.swarm`` file of random bytes, or a real one edited, makes
  :meth:`SwarmSecrets.open` raise only :class:`~p2pinvite.errors.StorageError`;
* a damaged known-peers file is ignored: :class:`KnownPeers` never raises and
  keeps only well-formed peers.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite.crypto.noise import generate_private_key, public_key
from p2pinvite.crypto.seal import open_sealed, seal
from p2pinvite.errors import RemoteProtocolError, StorageError
from p2pinvite.halo.swarm_secrets import (
    SwarmSecret,
    SwarmSecrets,
    open_handover,
    seal_for_device,
)
from p2pinvite.swarm.peers import KnownPeers
from p2pinvite.wire import pack

from .strategies import CHEAP, MEDIUM, byte_mutations, fuzz_inputs
from .test_fuzz_noise import LOW_ORDER

#: Each target runs for seconds at CI size (thousands of examples).
pytestmark = pytest.mark.slow

_PRIVATE = generate_private_key()
_CONTEXT = b"fuzz-context"
_BOXES = [seal(public_key(_PRIVATE), p, context=_CONTEXT) for p in (b"", b"x" * 32, b"y" * 300)]
_LOG = b"\x11" * 32
_SECRET = SwarmSecret(_LOG, 3, b"\x22" * 32)
_HANDOVER = seal_for_device(_SECRET, public_key(_PRIVATE))


@st.composite
def _boxes(draw: st.DrawFn, valid: list[bytes]) -> bytes:
    box = draw(st.sampled_from(valid))
    how = draw(st.sampled_from(["mutate", "low_order", "random"]))
    if how == "mutate":
        return draw(byte_mutations(box))
    if how == "low_order":
        return draw(st.sampled_from(LOW_ORDER)) + box[32:]
    return draw(st.binary(max_size=120))


@settings(max_examples=CHEAP)
@given(_boxes(_BOXES), st.sampled_from([_CONTEXT, b"", b"other"]))
def test_open_sealed_raises_only_remote_errors(box: bytes, context: bytes) -> None:
    try:
        plain = open_sealed(_PRIVATE, box, context=context)
    except RemoteProtocolError:
        return
    # Only an untouched box opens, under the context it was sealed with.
    assert box in _BOXES
    assert context == _CONTEXT
    assert len(plain) == len(box) - 48


@settings(max_examples=CHEAP)
@given(_boxes([_HANDOVER]), st.sampled_from([_LOG, b"\x12" * 32, b"", b"\x11" * 33]),
       st.sampled_from([3, 0, 1, 2**32 - 1, 2**32, -1, 2**63]))
def test_open_handover_raises_only_remote_errors(box: bytes, log: bytes, epoch: int) -> None:
    try:
        got = open_handover(_PRIVATE, log, epoch, box)
    except RemoteProtocolError:
        return
    assert got == _SECRET


def _real_swarm_file() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        store = SwarmSecrets.open(Path(d))
        store.create(_LOG)
        store.install(SwarmSecret(_LOG, 2, b"\x33" * 32))  # a rotation: a previous secret
        (name,) = os.listdir(Path(d) / "swarm")
        return (Path(d) / "swarm" / name).read_bytes()


_SWARM_FILE = _real_swarm_file()


@settings(max_examples=MEDIUM)
@given(fuzz_inputs([_SWARM_FILE, pack({"v": 1, "log": _LOG, "epoch": 1,
                                        "secret": b"\x01" * 32})], max_size=1100))
def test_swarm_file_opens_or_raises_storage_error(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        home = Path(d)
        os.chmod(home, 0o700)
        (home / "swarm").mkdir(mode=0o700)
        path = home / "swarm" / f"{_LOG.hex()}.swarm"
        path.write_bytes(data)
        os.chmod(path, 0o600)
        try:
            store = SwarmSecrets.open(home)
        except StorageError:
            return
        for secret in store.all():
            assert len(secret.secret) == 32
            assert 1 <= secret.epoch <= 2**32 - 1
            for old in store.previous(secret.log):
                assert len(old.secret) == 32


def _real_peers_file() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "peers"
        peers = KnownPeers(path)
        peers.seen(b"\x01" * 32, (("192.168.1.2", 4000), ("fe80::2", 1)), 1.5e9)
        peers.seen(b"\x02" * 32, (("10.0.0.1", 65535),), 1.6e9)
        return path.read_bytes()


_PEERS_FILE = _real_peers_file()


@settings(max_examples=MEDIUM)
@given(fuzz_inputs([_PEERS_FILE], max_size=600))
def test_damaged_known_peers_file_is_ignored(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o700)
        path = Path(d) / "peers"
        path.write_bytes(data)
        os.chmod(path, 0o600)
        peers = KnownPeers(path)  # must not raise, whatever the file holds
        for peer in peers.peers():
            assert len(peer.device) == 32
            assert all(1 <= port <= 65535 for _, port in peer.addrs) or not peer.addrs
        peers.addresses()


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\xff" * 300_000])
def test_extreme_known_peers_files_are_ignored(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "peers"
    path.write_bytes(data)
    os.chmod(path, 0o600)
    assert KnownPeers(path).peers() == []
