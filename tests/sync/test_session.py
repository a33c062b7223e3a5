"""The sans-IO sync session, message by message (h11 style: exact message lists)."""

from __future__ import annotations

import pytest

from p2pinvite.errors import DecodeError, FrameTooLarge, LocalProtocolError, RemoteProtocolError
from p2pinvite.sync import (
    MAX_ENTRY,
    MAX_HEADS,
    MAX_MESSAGE,
    EntriesMsg,
    HeadsMsg,
    IngestEntries,
    IngestResult,
    RefusedEntries,
    SyncSession,
    SyncState,
    SyncViolation,
    WantMsg,
    encode_message,
)
from p2pinvite.sync import session as session_mod
from p2pinvite.wire import pack

from .dag import MemoryReplica, chain, entry_id, make_entry
from .harness import Node, decoded, exchange, settle, step


def pair(ra: MemoryReplica | None = None, rb: MemoryReplica | None = None) -> tuple[Node, Node]:
    return Node(ra or MemoryReplica("a")), Node(rb or MemoryReplica("b"))


def test_start_sends_our_heads_once() -> None:
    a = Node(MemoryReplica())
    assert decoded(a.out()) == [HeadsMsg((), ())]
    assert a.out() == []
    assert a.session.state is SyncState.AWAIT_HEADS


def test_data_to_send_before_start_is_a_local_error() -> None:
    s = SyncSession(MemoryReplica())
    with pytest.raises(LocalProtocolError):
        s.data_to_send()
    with pytest.raises(LocalProtocolError):
        s.receive_message(encode_message(HeadsMsg(())))
    assert s.state is SyncState.IDLE


def test_two_empty_replicas_are_synced_after_heads() -> None:
    a, b = pair()
    assert step(a, b) == [HeadsMsg((), ())]
    assert step(b, a) == [HeadsMsg((), ())]
    assert a.out() == []
    assert b.out() == []
    assert a.session.synced
    assert b.session.synced


def test_one_side_ahead_exact_messages() -> None:
    ra = MemoryReplica("a")
    e0, e1, e2 = chain(ra, 3)
    a, b = pair(ra)
    E = ra.get
    # both announce at once: A its head and haves (positions n-2 and 0 of its order)
    assert step(a, b) == [HeadsMsg((e2,), (e1, e0))]
    assert step(b, a) == [HeadsMsg((), ())]
    # B has nothing A lacks; A pushes everything, parents first, in one batch
    assert step(b, a) == []
    assert step(a, b) == [EntriesMsg((E(e0), E(e1), E(e2)))]
    # B's heads changed: it announces them (the ack); A does not answer heads with heads
    assert step(b, a) == [HeadsMsg((e2,), (e1, e0))]
    assert step(a, b) == []
    assert a.session.synced
    assert b.session.synced
    assert b.replica.ids() == ra.ids()
    assert a.session.stats.entries_sent == 3
    assert b.session.stats.entries_received == 3
    assert b.session.stats.entries_new == 3


def test_ingest_is_an_event_and_waits_for_the_result() -> None:
    ra = MemoryReplica("a")
    (e0,) = chain(ra, 1)
    a, b = pair(ra)
    b.feed(a.out()[0])
    a.feed(b.out()[0])
    batch = a.out()
    events = b.session.receive_message(batch[0])
    assert events == [IngestEntries((ra.get(e0),))]
    assert b.session.state is SyncState.INGESTING
    # no message may be fed until the driver reports the ingest
    with pytest.raises(LocalProtocolError):
        b.session.receive_message(encode_message(HeadsMsg(())))
    assert b.session.ingested(b.replica.ingest_now(events[0].entries)) == []
    assert b.session.state is SyncState.ACTIVE
    # and ingested() out of turn is a local error too
    with pytest.raises(LocalProtocolError):
        b.session.ingested(IngestResult())
    assert b.session.state is SyncState.ACTIVE


def test_concurrent_branches_send_only_about_what_is_missing() -> None:
    base = MemoryReplica("base")
    prefix = chain(base, 10, b"p")
    ra, rb = base.copy("a"), base.copy("b")
    a0, a1 = chain(ra, 2, b"a")
    b0, b1 = chain(rb, 2, b"b")
    a, b = pair(ra, rb)
    # A's haves: positions 10, 8, 4 and 0 of its order (a0, p8, p4, p0)
    assert exchange(a, b) == ([HeadsMsg((a1,), (a0, prefix[8], prefix[4], prefix[0]))],
                              [HeadsMsg((b1,), (b0, prefix[8], prefix[4], prefix[0]))])
    # neither knows the other's head; the haves bound what each sends to one extra entry
    assert exchange(a, b) == ([EntriesMsg((ra.get(prefix[9]), ra.get(a0), ra.get(a1)))],
                              [EntriesMsg((rb.get(prefix[9]), rb.get(b0), rb.get(b1)))])
    both = tuple(sorted((a1, b1)))
    ma, mb = exchange(a, b)
    assert [type(m) for m in ma + mb] == [HeadsMsg, HeadsMsg]
    assert ma[0].heads == mb[0].heads == both  # type: ignore[union-attr]
    assert exchange(a, b) == ([], [])
    assert ra.ids() == rb.ids() == base.ids() | {a0, a1, b0, b1}
    assert a.session.synced
    assert b.session.synced
    # 3 pushed each way: 2 new and 1 duplicate (the entry just above the newest shared have)
    assert a.session.stats.entries_sent == 3
    assert b.session.stats.entries_sent == 3


def test_without_haves_the_whole_history_goes_both_ways() -> None:
    # the control of the test above: what the haves save
    class NoHaves(MemoryReplica):
        def haves(self, limit: int) -> list[bytes]:
            return []

    base = NoHaves("base")
    chain(base, 10, b"p")
    ra, rb = NoHaves("a"), NoHaves("b")
    ra.ingest_now(base.entries_in_order())
    rb.ingest_now(base.entries_in_order())
    chain(ra, 2, b"a")
    chain(rb, 2, b"b")
    a, b = pair(ra, rb)
    exchange(a, b)
    exchange(a, b)
    settle(a, b)
    assert ra.ids() == rb.ids()
    assert a.session.stats.entries_sent == 12
    assert b.session.stats.entries_sent == 12


def test_local_append_sends_heads_then_the_entry() -> None:
    ra = MemoryReplica("a")
    chain(ra, 2)
    a, b = pair(ra)
    settle(a, b)
    new = ra.append(b"late")
    # heads first: B must know the entry is below our heads before it arrives
    haves = tuple(i for i in ra.haves(65) if i != new)
    assert decoded(a.out()) == [HeadsMsg((new,), haves), EntriesMsg((ra.get(new),))]
    assert b.out() == []


def test_heads_answered_with_heads_only_after_a_change() -> None:
    ra = MemoryReplica("a")
    chain(ra, 2)
    a, b = pair(ra)
    settle(a, b)
    head = encode_message(HeadsMsg(tuple(ra.heads())))
    for _ in range(3):  # the same heads again and again: nothing
        b.feed(head)
        a.feed(head)
        assert a.out() == []
        assert b.out() == []


def test_local_append_is_pushed_and_acked() -> None:
    ra = MemoryReplica("a")
    chain(ra, 2)
    a, b = pair(ra)
    settle(a, b)
    new = ra.append(b"late")
    step(a, b)
    assert step(b, a) == [HeadsMsg((new,), tuple(i for i in b.replica.haves(65) if i != new))]
    assert a.out() == []
    assert b.out() == []
    assert b.replica.has(new)
    assert a.session.synced
    assert b.session.synced


def test_duplicate_messages_change_nothing() -> None:
    ra = MemoryReplica("a")
    chain(ra, 5)
    a, b = pair(ra)
    b.feed(a.out()[0])
    a.feed(b.out()[0])
    batch = a.out()
    assert len(batch) == 1
    b.feed(batch[0])
    ack = b.out()
    b.feed(batch[0])  # again
    b.feed(batch[0])
    assert b.out() == []  # nothing new: no second announcement
    assert b.replica.ingest_calls == [5, 5, 5]
    a.feed(ack[0])
    a.feed(ack[0])
    assert a.out() == []
    assert a.session.synced


def test_missing_parents_are_wanted_once() -> None:
    ra = MemoryReplica("a")
    e0, e1, e2 = chain(ra, 3)
    a, b = pair(ra)
    b.feed(a.out()[0])
    a.feed(b.out()[0])
    a.out()  # A's push, lost (say the peer's replica dropped it)
    # a peer that sends the tip without its parents: B holds it and asks for e1
    b.feed(encode_message(EntriesMsg((ra.get(e2),))))
    assert b.replica.held == 1
    assert not b.replica.has(e2)
    assert decoded(b.out()) == [WantMsg((e1,))]
    # the same gap again: not asked twice
    b.feed(encode_message(EntriesMsg((ra.get(e2),))))
    assert b.out() == []
    # A answers the want with exactly the wanted entry
    a.feed(encode_message(WantMsg((e1,))))
    assert decoded(a.out()) == [EntriesMsg((ra.get(e1),))]
    b.feed(encode_message(EntriesMsg((ra.get(e1),))))
    assert decoded(b.out()) == [WantMsg((e0,))]
    b.feed(encode_message(EntriesMsg((ra.get(e0),))))
    assert b.replica.ids() == {e0, e1, e2}
    assert b.replica.held == 0
    assert decoded(b.out()) == [HeadsMsg((e2,), (e1, e0))]


def test_want_of_unknown_ids_is_ignored() -> None:
    ra = MemoryReplica("a")
    (e0,) = chain(ra, 1)
    a, b = pair(ra)
    a.feed(b.out()[0])
    a.out()
    a.feed(encode_message(WantMsg((b"\x01" * 32, e0))))
    assert decoded(a.out()) == [EntriesMsg((ra.get(e0),))]
    assert a.session.stats.wants_received == 2


def test_want_flood_is_a_violation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_mod, "MAX_PENDING_WANTS", 3)
    ra = MemoryReplica("a")
    ids = chain(ra, 5)
    a, _ = pair(ra)
    a.feed(encode_message(HeadsMsg(tuple(sorted(ra.heads())))))
    a.feed(encode_message(WantMsg(tuple(ids[:3]))))
    with pytest.raises(SyncViolation):
        a.feed(encode_message(WantMsg(tuple(ids[3:]))))
    assert a.session.state is SyncState.ERROR


def test_own_wants_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_mod, "MAX_PENDING_WANTS", 2)
    parents = [b"\x01" * 32, b"\x02" * 32, b"\x03" * 32]
    b = Node(MemoryReplica("b"))
    b.feed(encode_message(HeadsMsg(())))
    b.out()
    b.feed(encode_message(EntriesMsg((make_entry(parents, b"orphan"),))))
    assert decoded(b.out()) == [WantMsg((parents[0], parents[1]))]


@pytest.mark.parametrize("msg", [EntriesMsg((b"x",)), WantMsg((b"\x00" * 32,))],
                         ids=["entries", "want"])
def test_anything_before_the_peers_heads_is_a_violation(msg: EntriesMsg | WantMsg) -> None:
    b = Node(MemoryReplica())
    with pytest.raises(SyncViolation, match="before the peer's heads"):
        b.feed(encode_message(msg))
    assert b.session.state is SyncState.ERROR
    assert b.out() == []
    with pytest.raises(LocalProtocolError):
        b.feed(encode_message(HeadsMsg(())))


@pytest.mark.parametrize("data", [
    b"\x00\x01garbage",
    pack({"t": "heads", "v": 1, "heads": [b"\x00" * 31], "have": []}),
    pack({"t": "entries", "entries": [b"x" * (MAX_ENTRY + 1)]}),
    pack({"t": "bye"}),
], ids=["garbage", "short id", "entry too large", "unknown type"])
def test_malformed_message_is_a_decode_error(data: bytes) -> None:
    a, _ = pair()
    a.feed(encode_message(HeadsMsg(())))
    with pytest.raises(DecodeError):
        a.feed(data)
    assert a.session.state is SyncState.ERROR
    assert a.session.reason


def test_oversized_message_is_refused() -> None:
    a, _ = pair()
    with pytest.raises(FrameTooLarge):
        a.feed(b"\x00" * (MAX_MESSAGE + 1))
    assert a.session.state is SyncState.ERROR


def test_refused_entries_drop_the_peer() -> None:
    ra = MemoryReplica("a")
    (e0,) = chain(ra, 1)
    b = Node(MemoryReplica("b"))
    b.feed(encode_message(HeadsMsg((e0,))))
    forged = make_entry([], b"forged", secret=b"x" * 32)
    with pytest.raises(RefusedEntries) as info:
        b.feed(encode_message(EntriesMsg((ra.get(e0), forged))))
    assert info.value.refused == ((1, "bad mac"),)
    assert isinstance(info.value, RemoteProtocolError)
    assert b.session.state is SyncState.ERROR
    assert b.out() == []


def test_version_is_the_peers_highest_and_cannot_change() -> None:
    a, _ = pair()
    a.feed(encode_message(HeadsMsg((), (), 3)))
    assert a.session.peer_version == 3
    a.feed(encode_message(HeadsMsg((), (), 3)))
    with pytest.raises(SyncViolation):
        a.feed(encode_message(HeadsMsg((), (), 1)))


def test_session_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session_mod, "MAX_SESSION_ENTRIES", 4)
    ra = MemoryReplica("a")
    ids = chain(ra, 3)
    b = Node(MemoryReplica("b"))
    b.feed(encode_message(HeadsMsg(())))
    batch = encode_message(EntriesMsg(tuple(ra.get(i) for i in ids)))
    b.feed(batch)
    with pytest.raises(SyncViolation, match="more entries"):
        b.feed(batch)  # 6 > 4, duplicates or not


def test_batches_respect_the_byte_and_count_limits() -> None:
    ra = MemoryReplica("a")
    for k in range(9):
        ra.append(bytes([k]) * (MAX_ENTRY - 200))
    a, b = pair(ra)
    step(a, b)
    step(b, a)
    sizes = []
    while out := a.out():
        assert all(len(d) <= MAX_MESSAGE for d in out)
        sizes.append(len(decoded(out)[-1].entries))  # type: ignore[union-attr]
        for d in out:
            b.feed(d)
    assert sizes == [4, 4, 1]  # 4 x (64 KiB - 200 + overhead) fit 256 KiB
    settle(a, b)
    assert b.replica.ids() == ra.ids()


def test_many_small_entries_go_in_batches_of_at_most_4096() -> None:
    class Tiny(MemoryReplica):  # the session never parses entries: 1-byte ones hit the count
        def get(self, entry_id: bytes) -> bytes:
            return b"t"

    ra = Tiny("a")
    chain(ra, 5000)
    a, b = pair(ra)
    step(a, b)
    step(b, a)
    first = decoded(a.out())
    assert len(first) == 1
    assert len(first[0].entries) == 4096
    assert len(decoded(a.out())[0].entries) == 5000 - 4096  # type: ignore[union-attr]


def test_sent_set_is_pruned_by_acks() -> None:
    ra = MemoryReplica("a")
    chain(ra, 3000)
    for k in range(300):  # large entries: many batches
        ra.append(bytes([k % 256]) * 8000)
    a, b = pair(ra)
    settle(a, b)
    assert b.replica.ids() == ra.ids()
    ra.append(b"one more")
    settle(a, b)
    assert len(a.session._sent) <= 1  # only what the last ack did not cover yet
    assert a.session.queued == 0
    # the list was computed a handful of times, not once per batch
    assert ra.not_below_calls <= 6


def test_too_many_heads_announces_the_smallest() -> None:
    ra = MemoryReplica("a")
    roots = [ra.append(b"root %d" % k, parents=[]) for k in range(MAX_HEADS + 6)]
    a, b = pair(ra)
    first = decoded(a.out())[0]
    assert isinstance(first, HeadsMsg)
    assert first.heads == tuple(sorted(roots)[:MAX_HEADS])
    b.feed(encode_message(first))
    settle(a, b)
    assert b.replica.ids() == ra.ids()


def test_an_oversized_local_entry_is_a_local_error() -> None:
    class Fat(MemoryReplica):
        def get(self, entry_id: bytes) -> bytes:
            return b"x" * (MAX_ENTRY + 1)

    ra = Fat("a")
    chain(ra, 1)
    a, b = pair(ra)
    b.feed(a.out()[0])
    a.feed(b.out()[0])
    with pytest.raises(LocalProtocolError):
        a.out()


def test_close_forgets_everything() -> None:
    ra = MemoryReplica("a")
    chain(ra, 10)
    a, b = pair(ra)
    step(a, b)
    step(b, a)
    a.session.close()
    assert a.session.state is SyncState.CLOSED
    assert a.out() == []
    ra.append(b"after")  # a change after the end is harmless
    assert a.out() == []
    a.session.close()  # idempotent
    with pytest.raises(LocalProtocolError):
        a.feed(encode_message(HeadsMsg(())))


def test_entry_ids_are_blake2b_of_the_bytes() -> None:
    ra = MemoryReplica("a")
    (e0,) = chain(ra, 1)
    assert entry_id(ra.get(e0)) == e0


def test_a_long_transfer_is_never_sent_back() -> None:
    # The sender's head arrives last; until then the receiver must still know the sender
    # has what it sent (IngestResult.ids), or it would push those entries back to it.
    ra = MemoryReplica("a")
    chain(ra, 3000, b"x" * 200)
    a, b = pair(ra)
    seen = []
    for _ in range(10):
        seen += step(a, b) + step(b, a)
    assert [type(m) for m in seen if not isinstance(m, HeadsMsg)] == [EntriesMsg] * 4
    assert b.replica.ids() == ra.ids()
    assert b.session.stats.entries_sent == 0
    # one walk of the DAG for the whole transfer, on the sender; none on the receiver
    assert ra.not_below_calls == 1
    assert b.replica.not_below_calls == 0


def test_truncated_heads_never_count_as_equal() -> None:
    # Both sides have the same smallest 1024 roots and one root the other lacks: the
    # announcements are equal, the DAGs are not. Neither may conclude it is in sync.
    base = MemoryReplica("base")
    for k in range(MAX_HEADS):
        base.append(b"root %d" % k, parents=[])
    ra, rb = base.copy("a"), base.copy("b")
    top = max(ra.heads())

    def root_above(tag: bytes) -> bytes:  # a root whose id sorts after all the shared ones
        k = 0
        while entry_id(make_entry([], tag + b"%d" % k)) <= top:
            k += 1
        return tag + b"%d" % k

    xa = ra.append(root_above(b"a"), parents=[])
    xb = rb.append(root_above(b"b"), parents=[])
    a, b = pair(ra, rb)
    ma, mb = exchange(a, b)
    assert ma[0] == mb[0]  # the same 1024 smallest heads (and the same haves)
    assert not a.session.synced
    assert not b.session.synced
    settle(a, b)
    assert ra.ids() == rb.ids()
    assert xa in rb.ids()
    assert xb in ra.ids()
