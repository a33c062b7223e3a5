"""Child process for test_store_journal: count attempts on one invitation until killed.

Usage: ``python store_writer_child.py DIR INVITATION_HEX``. Opens the store in
DIR and loops: ``begin_attempt``, ``attempt_succeeded`` (durable), and
``reserve_use`` + ``commit_use`` every third time; after each
call returns it prints ``<failed_attempts> <uses>`` as the store now holds
them on disk. The parent kills it with SIGKILL at a random moment.
"""

from __future__ import annotations

import sys
from pathlib import Path

from p2pinvite.invitations.model import Invitation
from p2pinvite.invitations.store import InvitationStore

NOW = 1_700_000_000.0
GUEST = b"g" * 32


def report(inv: Invitation) -> None:
    # One write per line: a kill can cut the output only between lines or
    # leave a last line without its newline, which the parent ignores.
    sys.stdout.write(f"{inv.failed_attempts} {inv.uses}\n")
    sys.stdout.flush()


def main() -> None:
    store = InvitationStore.open(Path(sys.argv[1]))
    inv_id = bytes.fromhex(sys.argv[2])
    n = 0
    while True:
        n += 1
        store.begin_attempt(inv_id, NOW)
        inv = store.get(inv_id)
        report(inv)
        inv = store.attempt_succeeded(inv_id)
        report(inv)
        if n % 3 == 0:
            inv = store.commit_use(store.reserve_use(inv_id, NOW), GUEST, NOW)
            report(inv)


if __name__ == "__main__":
    main()
