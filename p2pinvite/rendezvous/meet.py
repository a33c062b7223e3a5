"""What every meeting at the mailbox does, whoever meets (docs/RENDEZVOUS.md §11-12).

An invitation's host and guest (:mod:`p2pinvite.invitations.meeting`) and a
pair of member devices (:mod:`p2pinvite.swarm.meeting`) meet the same way:
a session at the mailbox, retried with back-off (a crowded mailbox waited
out); the side that offers a relay answers each fresh relay request by
connecting there and serving what comes out; the other side asks with a
fresh attempt token. This module holds those steps; the callers decide when
to take them and what a stream is served by (the network manager, which
this layer does not import).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from ..errors import BadTag, DecodeError, MailboxCrowded, RendezvousError
from .candidates import PHASE, Candidates, seal_candidates
from .config import RELAY_WAIT, RendezvousStatus
from .mailbox import MailboxSession
from .names import RendezvousNames
from .requests import (
    MAX_REQUEST_AGE,
    RELAY_PHASE,
    RelayRequest,
    attempt_token,
    open_relay_request,
    seal_relay_request,
)
from .transit import format_relay_address, relay_connect

__all__ = [
    "BACKOFF",
    "CROWDED_WAIT",
    "RelayRequests",
    "ask_relay",
    "keep_meeting",
    "put_candidates",
    "serve_relayed",
]

log = logging.getLogger("p2pinvite.rendezvous")

#: Back-off between failed mailbox sessions (and relay attempts), doubling to the cap.
BACKOFF: Final = (1.0, 60.0)
#: A mailbox refused as crowded stays so until the server prunes it (about
#: 16 minutes after its last activity, docs/RENDEZVOUS.md §6): wait that out.
CROWDED_WAIT: Final = 17 * 60.0

Address = tuple[str, int]


async def keep_meeting(session: Callable[[], Awaitable[None]], status: RendezvousStatus, *,
                       who: str, level: int = logging.WARNING) -> None:
    """Run *session* again and again, until cancelled, with back-off after each failure.

    A crowded mailbox is waited out; other rendezvous failures are logged
    (at *level*) and recorded in *status*. *who* names the meeting in logs.
    """
    backoff = BACKOFF[0]
    while True:
        try:
            await session()
        except MailboxCrowded as exc:
            status.failed(str(exc))
            log.warning("%s: the rendezvous mailbox is crowded; waiting %d min", who,
                        int(CROWDED_WAIT // 60))
            await trio.sleep(CROWDED_WAIT)
            continue
        except (RendezvousError, DecodeError) as exc:
            status.failed(str(exc))
            log.log(level, "%s: rendezvous mailbox: %s; again in %g s", who, exc, backoff)
        await trio.sleep(backoff)
        backoff = min(backoff * 2, BACKOFF[1])


async def put_candidates(box: MailboxSession, names: RendezvousNames, side: int,
                         addrs: tuple[Address, ...], relay: Address | None) -> None:
    """Put our sealed candidates (*addrs*, and the *relay* we wait at) in the mailbox."""
    await box.add(PHASE, seal_candidates(names.sealing_key, Candidates(addrs, relay),
                                         sender_side=names.side(side)))


class RelayRequests:
    """The relay-offering side's reading of relay requests, one mailbox session long.

    :meth:`fresh` opens a request written by the other side and returns the
    token of its attempt, or None for one that does not open, was seen
    already, or is older than :data:`MAX_REQUEST_AGE` (the mailbox replays
    what it stored).
    """

    def __init__(self, names: RendezvousNames, from_side: int, *, who: str,
                 clock: Callable[[], float] = time.time) -> None:
        self._names = names
        self._from = names.side(from_side)
        self._who = who
        self._clock = clock
        self._seen: set[bytes] = set()

    def fresh(self, body: bytes) -> bytes | None:
        """The attempt token of the request in *body*, if it is one to answer."""
        try:
            request = open_relay_request(self._names.sealing_key, body, sender_side=self._from)
        except (DecodeError, BadTag) as exc:
            log.info("%s: a relay request that does not open: %s", self._who, exc)
            return None
        if request.nonce in self._seen or self._clock() - request.at > MAX_REQUEST_AGE:
            return None
        self._seen.add(request.nonce)
        return attempt_token(self._names.relay_token, request.nonce)


async def serve_relayed(relay: Address, token: bytes, side: str,
                        serve: Callable[[trio.abc.Stream], Awaitable[None]], *,
                        who: str) -> None:
    """Meet the other side at *relay* with *token*, then *serve* the stream (we answer)."""
    try:
        stream = await relay_connect(*relay, token, side, timeout=RELAY_WAIT)
    except RendezvousError as exc:
        log.info("%s: not met at the relay: %s", who, exc)
        return
    log.info("%s: reached us through the relay at %s", who, format_relay_address(*relay))
    await serve(stream)


async def ask_relay(box: MailboxSession, names: RendezvousNames, side: int,
                    clock: Callable[[], float] = time.time) -> bytes:
    """Put a fresh relay request in the mailbox; the token of its attempt."""
    request = RelayRequest.new(clock())
    await box.add(RELAY_PHASE, seal_relay_request(names.sealing_key, request,
                                                  sender_side=names.side(side)))
    return attempt_token(names.relay_token, request.nonce)
