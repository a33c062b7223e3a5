"""The member hello codec and the known-peers file."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite.errors import DecodeError
from p2pinvite.fsutil import ensure_private_dir
from p2pinvite.swarm.hello import MAX_ADDRS, Hello, decode_hello, encode_hello
from p2pinvite.swarm.peers import MAX_PEERS, KnownPeers
from p2pinvite.wire import pack

LOG = bytes(range(32))


def test_hellos_round_trip_for_both_kinds_of_log() -> None:
    device_log = Hello(LOG, (("10.0.0.1", 4000), ("fe80::1", 5)))
    space_log = Hello(LOG, (), identity=b"i" * 32, chain=(b"c1", b"c2"))
    for hello in (device_log, space_log):
        assert decode_hello(encode_hello(hello)) == hello
    assert encode_hello(device_log) == pack({"t": "hello", "v": 1, "log": LOG,
                                             "addrs": [["10.0.0.1", 4000], ["fe80::1", 5]]})


@pytest.mark.parametrize("m", [
    {"t": "hi", "v": 1, "log": LOG, "addrs": []},
    {"t": "hello", "v": 2, "log": LOG, "addrs": []},
    {"t": "hello", "v": 1, "log": LOG[:31], "addrs": []},
    {"t": "hello", "v": 1, "log": LOG, "addrs": [], "extra": 1},
    {"t": "hello", "v": 1, "log": LOG, "addrs": [], "identity": b"i" * 32},  # no chain
    {"t": "hello", "v": 1, "log": LOG, "addrs": [], "identity": b"i" * 32, "chain": []},
    {"t": "hello", "v": 1, "log": LOG, "addrs": [["example.org", 1]]},
    {"t": "hello", "v": 1, "log": LOG, "addrs": [["0.0.0.0", 1]]},
    {"t": "hello", "v": 1, "log": LOG, "addrs": [["224.0.0.251", 5353]]},
    {"t": "hello", "v": 1, "log": LOG, "addrs": [["10.0.0.1", 0]]},
    {"t": "hello", "v": 1, "log": LOG, "addrs": [["10.0.0.1", 1]] * (MAX_ADDRS + 1)},
])
def test_malformed_hellos_are_refused(m: dict[str, object]) -> None:
    with pytest.raises(DecodeError):
        decode_hello(pack(m))


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_any_bytes_give_a_hello_or_a_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_hello(data)


def test_known_peers_keep_the_latest_addresses_and_survive_a_reopen(tmp_path: Path) -> None:
    path = ensure_private_dir(tmp_path / "swarm") / f"{LOG.hex()}.peers"
    peers = KnownPeers(path)
    assert peers.addresses() == []
    assert peers.seen(b"a" * 32, (("10.0.0.1", 1),), 100.0) is True
    assert peers.seen(b"b" * 32, (("10.0.0.2", 2), ("10.0.0.1", 1)), 200.0) is True
    assert not peers.is_news(b"a" * 32, (("10.0.0.1", 1),))
    assert peers.is_news(b"a" * 32, (("10.0.0.9", 1),))
    assert peers.seen(b"a" * 32, (("10.0.0.1", 1),), 300.0) is False  # nothing new to write
    assert peers.addresses() == [("10.0.0.1", 1), ("10.0.0.2", 2)]
    assert peers.addresses(exclude=b"a" * 32) == [("10.0.0.2", 2), ("10.0.0.1", 1)]
    again = KnownPeers(path)
    assert set(again.addresses()) == {("10.0.0.1", 1), ("10.0.0.2", 2)}
    again.forget(b"b" * 32)
    assert KnownPeers(path).addresses() == [("10.0.0.1", 1)]


def test_known_peers_remember_the_keys_a_rotation_seals_to(tmp_path: Path) -> None:
    path = ensure_private_dir(tmp_path / "swarm") / f"{LOG.hex()}.peers"
    peers = KnownPeers(path)
    addrs = (("10.0.0.1", 1),)
    peers.seen(b"a" * 32, addrs, 1.0)
    assert peers.is_news(b"a" * 32, addrs, static=b"s" * 32, member=b"m" * 32)
    assert peers.seen(b"a" * 32, addrs, 2.0, static=b"s" * 32, member=b"m" * 32) is True
    assert peers.seen(b"a" * 32, addrs, 3.0) is False  # keys not repeated: kept
    [p] = KnownPeers(path).peers()
    assert (p.device, p.addrs, p.static, p.member) == (b"a" * 32, addrs, b"s" * 32, b"m" * 32)
    # A version 1 file (no keys) is read: the keys come with the next hello.
    path.write_bytes(pack({"v": 1, "peers": [[b"b" * 32, [["10.0.0.2", 2]], 5.0]]}))
    [old] = KnownPeers(path).peers()
    assert (old.device, old.static, old.member) == (b"b" * 32, None, None)


def test_known_peers_are_bounded_and_a_damaged_file_is_ignored(tmp_path: Path) -> None:
    path = ensure_private_dir(tmp_path / "swarm") / "x.peers"
    peers = KnownPeers(path)
    for i in range(MAX_PEERS + 5):
        peers.seen(os.urandom(32), ((f"10.0.{i // 250}.{i % 250 + 1}", 1),), float(i))
    assert len(KnownPeers(path).addresses()) == MAX_PEERS
    path.write_bytes(b"garbage")
    assert KnownPeers(path).addresses() == []
    # Well-formed around damaged addresses: only the good one is kept.
    bad = [["h", 1], ["10.0.0.1", "x"], ["10.0.0.1", 0], ["10.0.0.1", True], [1, 2],
           "10.0.0.1", ["10.0.0.1", 70000], ["10.0.0.2", 7]]
    path.write_bytes(pack({"v": 1, "peers": [[bytes(32), bad, 1]]}))
    assert KnownPeers(path).addresses() == [("10.0.0.2", 7)]


_MSGPACK = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=8)
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=20)


@settings(max_examples=500, deadline=None)
@given(peers=_MSGPACK, version=st.sampled_from([1, 2, "1"]))
def test_any_known_peers_file_opens_or_is_ignored(tmp_path_factory: pytest.TempPathFactory,
                                                  peers: object, version: object) -> None:
    path = ensure_private_dir(tmp_path_factory.mktemp("kp") / "swarm") / "x.peers"
    path.write_bytes(pack({"v": version, "peers": peers}))
    for host, port in KnownPeers(path).addresses():  # never raises
        assert isinstance(host, str)
        assert 1 <= port <= 65535
