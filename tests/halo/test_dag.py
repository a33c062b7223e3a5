"""halo.dag: heads, cut points, ancestor walks and what a peer lacks, against brute force."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite.errors import LocalProtocolError
from p2pinvite.halo.dag import Dag, Orphans
from p2pinvite.halo.state import SnapshotError


def _id(i: int) -> bytes:
    return hashlib.blake2b(i.to_bytes(4, "big"), digest_size=32).digest()


@st.composite
def dags(draw: st.DrawFn, max_size: int = 40) -> Dag:
    """Random DAGs: mostly linear stretches, some forks and merges."""
    d = Dag()
    d.add(_id(0), [], None)
    for i in range(1, draw(st.integers(1, max_size))):
        if draw(st.booleans()):
            parents = sorted(d.heads)  # on the heads: the common case
        else:
            k = draw(st.integers(1, min(3, i)))
            parents = sorted(draw(st.sets(st.integers(0, i - 1), min_size=1, max_size=k)))
        d.add(_id(i), parents, None)
    return d


def _ancestors_or_self(d: Dag, heads: list[int]) -> set[int]:
    out: set[int] = set()
    stack = list(heads)
    while stack:
        i = stack.pop()
        if i not in out:
            out.add(i)
            stack.extend(d.parents(i))
    return out


@settings(max_examples=150, deadline=None)
@given(dags(), st.data())
def test_walks_agree_with_brute_force(d: Dag, data: st.DataObject) -> None:
    n = len(d)
    named = {p for i in range(n) for p in d.parents(i)}
    assert d.heads == set(range(n)) - named
    for i in range(n):
        # A cut point: everything before it is below it.
        assert d.is_cut(i) == (_ancestors_or_self(d, [i]) == set(range(i + 1)))
    picks = data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=3))
    mask, count = d.ancestors(picks)
    expected = _ancestors_or_self(d, picks)
    assert {i for i in range(n) if mask[i]} == expected
    assert count == len(expected)
    limit = data.draw(st.integers(0, n))
    peer = [h for h in picks if h < limit]
    below = _ancestors_or_self(d, peer)
    assert d.not_below(peer, limit) == [i for i in range(limit) if i not in below]
    start, kids = d.children()
    for i in range(n):
        assert sorted(kids[start[i] : start[i + 1]]) == sorted(
            c for c in range(n) if i in d.parents(c))
    back = Dag.restore(d.snapshot())
    assert back.ids == d.ids
    assert back.heads == d.heads
    assert [list(back.parents(i)) for i in range(n)] == [list(d.parents(i)) for i in range(n)]
    assert [back.is_cut(i) for i in range(n)] == [d.is_cut(i) for i in range(n)]


def test_a_linear_dag_walks_only_what_a_peer_lacks() -> None:
    d = Dag()
    d.add(_id(0), [], None)
    for i in range(1, 10_000):
        d.add(_id(i), [i - 1], None)
    assert d.heads == {9_999}
    assert d.not_below([9_990], 10_000) == list(range(9_991, 10_000))
    assert d.not_below([], 3) == [0, 1, 2]
    mask, count = d.ancestors([5_000])
    assert count == 5_001
    assert mask[5_000]
    assert not mask[5_001]


def test_add_refuses_bad_structure() -> None:
    d = Dag()
    with pytest.raises(LocalProtocolError):
        d.add(_id(0), [0], None)  # a parent that is not there
    d.add(_id(0), [], None)
    with pytest.raises(LocalProtocolError):
        d.add(_id(1), [], None)  # a second root
    with pytest.raises(LocalProtocolError):
        d.add(_id(0), [0], None)  # the same id twice
    with pytest.raises(LocalProtocolError):
        d.fact(0)  # no fact, no loader


def test_restore_refuses_inconsistent_snapshots() -> None:
    d = Dag()
    d.add(_id(0), [], None)
    d.add(_id(1), [0], None)
    good = d.snapshot()
    for bad in (b"", good[:-2], good.replace(_id(1), _id(0))):
        with pytest.raises(SnapshotError):
            Dag.restore(bad)


def test_orphans_release_in_order_and_stay_bounded() -> None:
    o: Orphans[str] = Orphans(limit=3)
    o.hold(b"c", [b"a", b"b"], "c")
    o.hold(b"d", [b"c"], "d")
    assert o.missing() == {b"a", b"b"}
    assert o.release(b"a") == []
    assert o.release(b"b") == [(b"c", "c")]
    assert o.release(b"c") == [(b"d", "d")]
    assert len(o) == 0
    for x in (b"1", b"2", b"3", b"4"):
        o.hold(x, [b"p"], x.decode())
    assert len(o) == 3
    assert b"1" not in o  # the oldest went first
    assert [k for k, _ in o.release(b"p")] == [b"2", b"3", b"4"]
