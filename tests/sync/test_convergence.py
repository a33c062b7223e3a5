"""Property: replicas with random DAGs converge under any interleaving and duplication.

Two or three replicas share a random prefix, then each grows its own
concurrent branches (random parents: merges, forks, several roots). Every
pair of connected replicas runs one session per side. A hypothesis-driven
scheduler decides, step by step, which side writes its next step, which
message in flight is delivered, delivered twice, or replayed from the past
(stale heads included), when a connection breaks (what is in flight is lost
both ways; the replicas reconnect with new sessions at once) and when a
replica appends locally in the middle of it all. Streams keep their order (a
message is never delivered before an earlier one of the same direction, and
a lost message loses the connection), as TCP does. After quiescence (nothing
in flight, nothing to send) every replica holds the same entries.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pinvite.sync import session as session_mod

from .dag import MemoryReplica
from .harness import Node


@dataclass
class Link:
    """One connection: a session on each side and the messages in flight each way."""

    a: Node
    b: Node
    ab: deque[bytes] = field(default_factory=deque)
    ba: deque[bytes] = field(default_factory=deque)
    past_ab: list[bytes] = field(default_factory=list)
    past_ba: list[bytes] = field(default_factory=list)

    def way(self, forward: bool) -> tuple[deque[bytes], list[bytes], Node]:
        return (self.ab, self.past_ab, self.b) if forward else (self.ba, self.past_ba, self.a)

    def pump(self, forward: bool) -> bool:
        src = self.a if forward else self.b
        q = self.ab if forward else self.ba
        out = src.out()
        q.extend(out)
        return bool(out)

    def deliver(self, forward: bool, *, keep: bool = False) -> bool:
        q, past, dst = self.way(forward)
        if not q:
            return False
        data = q[0] if keep else q.popleft()
        if not keep:
            past.append(data)
        dst.feed(data)
        return True

    def close(self) -> None:
        for node in (self.a, self.b):
            node.session.close()
            node.unsubscribe()

    def replay(self, forward: bool, index: int) -> None:
        _, past, dst = self.way(forward)
        if past:
            dst.feed(past[index % len(past)])


def grow(draw: st.DrawFn, r: MemoryReplica, n: int, tag: bytes) -> None:
    """Append *n* entries with random parents drawn among the replica's entries."""
    for k in range(n):
        ids = sorted(r.ids())
        kind = draw(st.sampled_from(["heads", "heads", "random", "root"]))
        if kind == "heads" or not ids:
            parents = None
        elif kind == "root":
            parents = []
        else:
            parents = draw(st.lists(st.sampled_from(ids), min_size=1, max_size=3, unique=True))
        r.append(tag + b"%d" % k, parents=parents)


def quiesce(links: list[Link]) -> None:
    for _ in range(10_000):
        busy = False
        for link in links:
            busy |= link.pump(True)
            busy |= link.pump(False)
        for link in links:
            while link.deliver(True) | link.deliver(False):
                busy = True
        if not busy:
            return
    raise AssertionError("no quiescence")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_replicas_converge(data: st.DataObject) -> None:
    # Tiny batches make small DAGs travel in many batches, as large ones do: a peer's
    # heads then stay unknown across several ingests, appends land between batches.
    max_batch = data.draw(st.sampled_from([1, 2, 3, session_mod.MAX_BATCH]), label="batch")
    saved = session_mod.MAX_BATCH
    session_mod.MAX_BATCH = max_batch
    try:
        _converge(data)
    finally:
        session_mod.MAX_BATCH = saved


def _converge(data: st.DataObject) -> None:
    draw = data.draw
    n = draw(st.integers(2, 3), label="replicas")
    base = MemoryReplica("base")
    grow(draw, base, draw(st.integers(0, 8), label="shared prefix"), b"base")
    replicas = [base.copy(f"r{i}") for i in range(n)]
    for i, r in enumerate(replicas):
        grow(draw, r, draw(st.integers(0, 8)), b"r%d-" % i)
    if draw(st.booleans(), label="partial overlap"):
        # r1 already got a parents-first prefix of r0's entries (an earlier, cut-off sync)
        src = replicas[0].entries_in_order()
        replicas[1].ingest_now(src[: draw(st.integers(0, len(src)))])
    if n == 2:
        edges = [(0, 1)]
    else:
        edges = draw(st.sampled_from([[(0, 1), (1, 2)], [(0, 1), (1, 2), (0, 2)]]),
                     label="topology")
    links = [Link(Node(replicas[i]), Node(replicas[j])) for i, j in edges]
    replayed = False
    late = 0
    for _ in range(draw(st.integers(0, 60), label="scheduled steps")):
        link = draw(st.sampled_from(links))
        forward = draw(st.booleans())
        action = draw(st.sampled_from(
            ["pump", "pump", "deliver", "deliver", "deliver", "dup", "replay", "append",
             "break"]))
        if action == "pump":
            link.pump(forward)
        elif action == "deliver":
            link.deliver(forward)
        elif action == "dup":
            link.deliver(forward, keep=True)
        elif action == "break":
            link.close()
            links[links.index(link)] = Link(Node(link.a.replica), Node(link.b.replica))
        elif action == "replay":
            replayed = True
            link.replay(forward, draw(st.integers(0, 1000)))
        else:
            late += 1
            grow(draw, draw(st.sampled_from(replicas)), 1, b"late%d-" % late)
    quiesce(links)
    want = set().union(*(r.ids() for r in replicas))
    for r in replicas:
        assert r.ids() == want, f"{r} lacks {len(want - r.ids())} entries"
        assert r.held == 0
    if not replayed:  # a replayed stale heads may be the last a session saw of its peer
        for link in links:
            assert link.a.session.synced
            assert link.b.session.synced
