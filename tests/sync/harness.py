"""Sans-IO plumbing for the sync tests: sessions on memory replicas, messages moved by hand."""

from __future__ import annotations

from collections.abc import Sequence

from p2pinvite.sync import Message, SyncSession, decode_message

from .dag import MemoryReplica


class Node:
    """One side of one connection: a session on a replica, wired to its change callback."""

    def __init__(self, replica: MemoryReplica) -> None:
        self.replica = replica
        self.session = SyncSession(replica)
        self.unsubscribe = replica.subscribe(self.session.replica_changed)
        self.session.start()

    def out(self) -> list[bytes]:
        """One step's messages (checked: each is the canonical encoding of its message)."""
        sends = self.session.data_to_send()
        for s in sends:
            assert decode_message(s.data) == s.message
        return [s.data for s in sends]

    def feed(self, data: bytes) -> None:
        """Receive one message; ingest synchronously what the session asks to."""
        for ev in self.session.receive_message(data):
            self.session.ingested(self.replica.ingest_now(ev.entries))


def decoded(datas: Sequence[bytes]) -> list[Message]:
    return [decode_message(d) for d in datas]


def step(src: Node, dst: Node) -> list[Message]:
    """Send one step of *src* to *dst*; return the messages."""
    datas = src.out()
    for d in datas:
        dst.feed(d)
    return decoded(datas)


def settle(a: Node, b: Node, *, limit: int = 100_000) -> int:
    """Alternate steps until neither side has anything to send; return the steps taken."""
    for n in range(limit):
        if not step(a, b) and not step(b, a):
            return n
    raise AssertionError("no quiescence")


def exchange(a: Node, b: Node) -> tuple[list[Message], list[Message]]:
    """Both sides take one step at once (their messages cross), then both receive."""
    da, db = a.out(), b.out()
    for d in da:
        b.feed(d)
    for d in db:
        a.feed(d)
    return decoded(da), decoded(db)
