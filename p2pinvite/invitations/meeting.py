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

import functools
import logging
import math
import time
from collections.abc import Callable
from typing import Final

import trio

from ..errors import BadTag, DecodeError, RendezvousError
from ..net.manager import Candidates, NetworkManager
from ..rendezvous.candidates import PHASE, offerable, open_candidates
from ..rendezvous.config import (
    MAILBOX_TIMEOUT,
    RELAY_WAIT,
    RendezvousConfig,
    RendezvousStatus,
)
from ..rendezvous.mailbox import open_mailbox
from ..rendezvous.meet import (
    RelayRequests,
    ask_relay,
    keep_meeting,
    put_candidates,
    serve_relayed,
)
from ..rendezvous.names import RendezvousNames, for_invitation
from ..rendezvous.requests import RELAY_PHASE
from ..rendezvous.transit import format_relay_address, relay_connect

__all__ = ["RELAY_HEAD_START", "host_meetings", "meet_host"]

log = logging.getLogger("p2pinvite.rendezvous")

#: A guest dials the relay only if no direct path connected within this many
#: seconds of reading the host's candidates: a direct path, when there is one,
#: wins and the relay carries nothing.
RELAY_HEAD_START: Final = 0.5


async def host_meetings(config: RendezvousConfig, secret: bytes, network: NetworkManager,
                        status: RendezvousStatus, *, label: str,
                        clock: Callable[[], float] = time.time) -> None:
    """Keep the invitation of *secret* waiting for guests at the mailbox; runs until cancelled.

    *label* names the invitation in logs (its short id, never its secret).
    Failures are logged and retried with back-off; they never end hosting on
    the LAN, which goes on regardless.
    """
    names, who = for_invitation(secret), f"invitation {label}"
    await keep_meeting(lambda: _host_session(config, names, network, status, who=who,
                                             clock=clock), status, who=who)


async def _host_session(config: RendezvousConfig, names: RendezvousNames,
                        network: NetworkManager, status: RendezvousStatus, *, who: str,
                        clock: Callable[[], float]) -> None:
    async with open_mailbox(config.mailbox, names.mailbox_id, side=names.side(0),
                            timeout=MAILBOX_TIMEOUT) as box:
        status.opened()
        try:
            await put_candidates(box, names, 0, offerable(network.reachable_addresses),
                                 config.transit)
            log.info("%s: waiting for guests at the rendezvous mailbox too", who)
            requests = RelayRequests(names, 1, who=who, clock=clock)
            async with trio.open_nursery() as nursery:
                async for msg in box:
                    if msg.phase != RELAY_PHASE or (token := requests.fresh(msg.body)) is None:
                        continue
                    if config.transit is None:
                        log.info("%s: a guest asks for a relay; none configured", who)
                        continue
                    nursery.start_soon(functools.partial(
                        serve_relayed, config.transit, token, names.side(0),
                        network.serve_stream, who=who))
        finally:
            status.closed()


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
                    relay, token = offer.relay, await ask_relay(box, names, 1, clock)

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
