"""Meeting an invitation's guests beyond the LAN, at a rendezvous mailbox (docs/RENDEZVOUS.md §5).

Both parties derive the same names from the link code's secret
(:func:`~p2pinvite.rendezvous.names.for_invitation`): a mailbox, a sealing
key, a relay token. The host (side 0) keeps the mailbox open while the
invitation is hosted and puts its sealed candidates there: its direct
addresses and the transit relay it will meet guests at. A guest (side 1)
reads them, dials the addresses at once (raced with mDNS and the code's
hints), and, if nothing has connected after :data:`RELAY_HEAD_START`
seconds, puts a sealed relay request in the mailbox and dials the relay;
the host connects to the relay when it reads the request, and serves what
comes out of it as a connection accepted on its listener.

Over whichever path wins, the preamble, Noise and CPace run end to end,
unchanged: the mailbox and the relay see derived names and ciphertext only.
A lying mailbox can withhold or alter boxes (they then do not open), which
can make a join fail, never succeed wrongly.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Final

import trio

from ..errors import BadTag, DecodeError, MailboxCrowded, RendezvousError
from ..net.manager import Address, Candidates, NetworkManager
from ..rendezvous.candidates import PHASE, offerable, open_candidates, seal_candidates
from ..rendezvous.candidates import Candidates as Offer
from ..rendezvous.config import (
    MAILBOX_TIMEOUT,
    RELAY_WAIT,
    RendezvousConfig,
    RendezvousStatus,
)
from ..rendezvous.mailbox import open_mailbox
from ..rendezvous.names import RendezvousNames, for_invitation
from ..rendezvous.requests import (
    MAX_REQUEST_AGE,
    RELAY_PHASE,
    RelayRequest,
    attempt_token,
    open_relay_request,
    seal_relay_request,
)
from ..rendezvous.transit import format_relay_address, relay_connect

__all__ = ["RELAY_HEAD_START", "host_meetings", "meet_host"]

log = logging.getLogger("p2pinvite.rendezvous")

#: A guest dials the relay only if no direct path connected within this many
#: seconds of reading the host's candidates: a direct path, when there is one,
#: wins and the relay carries nothing.
RELAY_HEAD_START: Final = 0.5
#: The host's back-off between failed mailbox sessions, doubling up to the cap.
_BACKOFF: Final = (1.0, 60.0)
#: A mailbox refused as crowded stays so until the server prunes it (about
#: 16 minutes after its last activity, docs/RENDEZVOUS.md §6): wait that out.
_CROWDED_WAIT: Final = 17 * 60.0


async def host_meetings(config: RendezvousConfig, secret: bytes, network: NetworkManager,
                        status: RendezvousStatus, *, label: str,
                        clock: Callable[[], float] = time.time) -> None:
    """Keep the invitation of *secret* waiting for guests at the mailbox; runs until cancelled.

    *label* names the invitation in logs (its short id, never its secret).
    Failures are logged and retried with back-off; they never end hosting on
    the LAN, which goes on regardless.
    """
    names = for_invitation(secret)
    backoff = _BACKOFF[0]
    while True:
        try:
            await _host_session(config, names, network, status, label=label, clock=clock)
        except MailboxCrowded as exc:
            status.failed(str(exc))
            log.warning("invitation %s: the rendezvous mailbox is crowded; waiting %d min",
                        label, int(_CROWDED_WAIT // 60))
            await trio.sleep(_CROWDED_WAIT)
            continue
        except (RendezvousError, DecodeError) as exc:
            status.failed(str(exc))
            log.warning("invitation %s: rendezvous mailbox: %s; again in %g s", label, exc,
                        backoff)
        await trio.sleep(backoff)
        backoff = min(backoff * 2, _BACKOFF[1])


async def _host_session(config: RendezvousConfig, names: RendezvousNames,
                        network: NetworkManager, status: RendezvousStatus, *, label: str,
                        clock: Callable[[], float]) -> None:
    me, guest = names.side(0), names.side(1)
    async with open_mailbox(config.mailbox, names.mailbox_id, side=me,
                            timeout=MAILBOX_TIMEOUT) as box:
        status.opened()
        try:
            offer = Offer(offerable(network.reachable_addresses), config.transit)
            await box.add(PHASE, seal_candidates(names.sealing_key, offer, sender_side=me))
            log.info("invitation %s: waiting for guests at the rendezvous mailbox too", label)
            seen: set[bytes] = set()
            async with trio.open_nursery() as nursery:
                async for msg in box:
                    if msg.phase != RELAY_PHASE:
                        continue
                    try:
                        request = open_relay_request(names.sealing_key, msg.body,
                                                     sender_side=guest)
                    except (DecodeError, BadTag) as exc:
                        log.info("invitation %s: a relay request that does not open: %s",
                                 label, exc)
                        continue
                    if request.nonce in seen or clock() - request.at > MAX_REQUEST_AGE:
                        continue  # the mailbox replays what it stored earlier
                    seen.add(request.nonce)
                    if config.transit is None:
                        log.info("invitation %s: a guest asks for a relay; none configured",
                                 label)
                        continue
                    nursery.start_soon(_serve_relayed, config.transit,
                                       attempt_token(names.relay_token, request.nonce), me,
                                       network, label)
        finally:
            status.closed()


async def _serve_relayed(relay: Address, token: bytes, side: str, network: NetworkManager,
                         label: str) -> None:
    try:
        stream = await relay_connect(*relay, token, side, timeout=RELAY_WAIT)
    except RendezvousError as exc:
        log.info("invitation %s: the guest did not meet us at the relay: %s", label, exc)
        return
    log.info("invitation %s: a guest reached us through the relay at %s", label,
             format_relay_address(*relay))
    await network.serve_stream(stream)


async def meet_host(mailbox: str, secret: bytes, found: Candidates,
                    connected: Callable[[], bool], *, label: str,
                    failed: Callable[[str], None] = lambda why: None,
                    clock: Callable[[], float] = time.time) -> None:
    """The guest's part: learn the host's candidates at *mailbox* and add them to *found*.

    Runs until cancelled (the join ends). Direct addresses are dialed at
    once; the relay after :data:`RELAY_HEAD_START` seconds unless
    *connected()* says a path already reached the host. A mailbox failure
    is passed to *failed* (the join's error names it); the LAN paths go on.
    """
    names = for_invitation(secret)
    me, host = names.side(1), names.side(0)
    try:
        async with open_mailbox(mailbox, names.mailbox_id, side=me,
                                timeout=MAILBOX_TIMEOUT) as box:
            while True:
                msg = await box.receive()
                if msg.phase == PHASE:
                    break
            offer = open_candidates(names.sealing_key, msg.body, sender_side=host)
            for addr in offer.addrs:
                found.add(addr)
            log.info("join %s: the host's candidates from the mailbox: %d address(es)%s",
                     label, len(offer.addrs),
                     "" if offer.relay is None
                     else f", relay {format_relay_address(*offer.relay)}")
            if offer.relay is not None:
                await trio.sleep(RELAY_HEAD_START)
                if not connected():
                    request = RelayRequest.new(clock())
                    await box.add(RELAY_PHASE, seal_relay_request(
                        names.sealing_key, request, sender_side=me))
                    relay, token = offer.relay, attempt_token(names.relay_token, request.nonce)

                    async def through_relay() -> trio.abc.Stream:
                        return await relay_connect(*relay, token, me, timeout=RELAY_WAIT)

                    found.add_path(f"relay {format_relay_address(*relay)}", through_relay)
            # Keep the mailbox open until the join ends: closing it early
            # would let the server delete it under a host that still waits.
            await trio.sleep(math.inf)
    except (RendezvousError, DecodeError, BadTag) as exc:
        why = f"rendezvous mailbox {mailbox}: {exc}"
        log.warning("join %s: %s", label, why)
        failed(why)
