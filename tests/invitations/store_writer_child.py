"""Child process for test_store_journal: count attempts on one invitation until killed.

Usage: ``python store_writer_child.py DIR INVITATION_HEX``. Opens the store in
DIR and loops as a host does for a wrong proof: ``check_usable``,
``count_failed_attempt`` and ``flush``; and every third time ``reserve_use``
+ ``commit_use`` (durable). After each write returns it prints
``<failed_attempts> <uses>`` as the store now holds them on disk. With one
attempt left it stops counting (a locked invitation reserves no use) and
commits a use every time instead, so it writes until killed; the invitation
needs ``max_uses=None``. The parent kills it with SIGKILL at a random moment.
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
        if store.check_usable(inv_id, NOW).attempts_left > 1:
            store.count_failed_attempt(inv_id, NOW)
            store.flush(inv_id)
            report(store.get(inv_id))
        if n % 3 == 0 or store.get(inv_id).attempts_left == 1:
            report(store.commit_use(store.reserve_use(inv_id, NOW), GUEST, NOW))


if __name__ == "__main__":
    main()
