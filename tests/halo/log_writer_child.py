"""The child process of the kill -9 test (test_log_crash.py).

Run as ``python log_writer_child.py LOG`` it opens LOG (creating it as a
space log of the test owner), prints ``ready <entries>``, then appends
admissions forever from 4 concurrent tasks, printing ``<n> <id hex>``
(flushed) after each ``append`` returns -- until the parent kills it with
SIGKILL. Member ``n`` is ``member(n)``; n continues from the entry count, so
every durable admission has its own n.
"""

from __future__ import annotations

import hashlib
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from p2pinvite.halo.credentials import Role, issue_space_member
from p2pinvite.halo.log import SpaceLog
from tests.halo.strategies import IdentityBuilder, SpaceBuilder

OWNER = IdentityBuilder.create("owner", seed=b"crash-owner")


def member(n: int) -> bytes:
    """The identity key admitted as member *n*."""
    return hashlib.blake2b(n.to_bytes(8, "big"), digest_size=32).digest()


def open_log(path: Path) -> SpaceLog:
    """Open the test log at *path*, creating it on first use."""
    if path.exists():
        return SpaceLog.open(path, checkpoint_every=16)
    space = SpaceBuilder.create(OWNER, "crash", seed=b"crash-space")
    return SpaceLog.create(path, space.entries, checkpoint_every=16)


async def _child(path: Path) -> None:
    import trio

    log = open_log(path)
    print(f"ready {log.count}", flush=True)
    counter = itertools.count(log.count)
    key = log.state.key
    assert key is not None

    async def writer() -> None:
        while True:
            n = next(counter)
            # Issued on the heads and appended with no await in between.
            cred = issue_space_member(
                OWNER.device, issuer=OWNER.public, space=key, member=member(n),
                role=Role.READER, name=f"m{n}", parents=log.append_parents(),
                chain=OWNER.chain_of()).encode()
            entry = await log.append(cred)
            print(f"{n} {entry.hex()}", flush=True)

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(writer)


if __name__ == "__main__":
    import trio

    trio.run(_child, Path(sys.argv[1]))
