"""Member devices meeting beyond the LAN, at a rendezvous mailbox (docs/RENDEZVOUS.md §12).

The invitation's rendezvous (:mod:`p2pinvite.invitations.meeting`) for the
member swarm of one log: every pair of member devices has its own mailbox,
named from the swarm secret in force and the two device keys
(:func:`~p2pinvite.rendezvous.names.for_member_pair`; a mailbox holds two
sides only). For each other member device this device has met (its
:class:`~.peers.KnownPeers`), :func:`meet_members` keeps that pair's mailbox
open, with back-off when it fails:

* both sides put their sealed candidates there (their direct addresses and,
  on side 0, the transit relay it waits at); the other's addresses are handed
  to the swarm, which dials them like any member's;
* side 1 (the larger device key), when the other device is still not
  connected :data:`RELAY_HEAD_START` seconds after its candidates arrived,
  puts a sealed relay request (a fresh attempt token each time) and dials
  through the relay side 0 offered: preamble, Noise and the member hello run
  over it as over TCP (:meth:`~p2pinvite.net.manager.NetworkManager.dial_path`);
* side 0 connects to its relay when it reads a request and serves what comes
  out as an accepted connection
  (:meth:`~p2pinvite.net.manager.NetworkManager.serve_stream`).

The member check after the handshake is unchanged. When the swarm moves to a
new secret (a removal's rotation) the service stops these meetings and starts
new ones with names from the new secret: a removed device, lacking it, cannot
derive them.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from ..errors import BadTag, DecodeError, RendezvousError
from ..net.manager import NetworkManager
from ..net.topics import Topic
from ..rendezvous.candidates import PHASE, offerable, open_candidates
from ..rendezvous.config import (
    MAILBOX_TIMEOUT,
    RELAY_WAIT,
    RendezvousConfig,
    RendezvousStatus,
)
from ..rendezvous.mailbox import MailboxSession, open_mailbox
from ..rendezvous.meet import (
    BACKOFF,
    RelayRequests,
    ask_relay,
    keep_meeting,
    put_candidates,
    serve_relayed,
)
from ..rendezvous.names import RendezvousNames, for_member_pair, pair_side
from ..rendezvous.requests import RELAY_PHASE
from ..rendezvous.transit import format_relay_address, relay_connect

__all__ = ["MAX_PAIRS", "RELAY_HEAD_START", "RESCAN", "meet_members"]

log = logging.getLogger("p2pinvite.rendezvous")

#: Side 1 asks for the relay only if the other device is still not connected
#: this many seconds after its candidates arrived (the direct paths go first).
RELAY_HEAD_START: Final = 2.0
#: How often the devices to meet, and whether each is connected, are looked at again.
RESCAN: Final = 2.0
#: Most pairs met at once per log (the most recently seen devices first).
MAX_PAIRS: Final = 16
#: A relayed connection that lasted this long resets the relay back-off.
_STABLE: Final = 10.0


async def meet_members(config: RendezvousConfig, secret: bytes, me: bytes,
                       network: NetworkManager, topic: Topic, status: RendezvousStatus, *,
                       devices: Callable[[], list[bytes]],
                       connected: Callable[[bytes], bool], label: str,
                       clock: Callable[[], float] = time.time) -> None:
    """Meet every device *devices()* names at its pair mailbox; runs until cancelled.

    *secret* is the swarm secret in force, *me* our device key, *topic* the
    swarm's (joined) topic; *connected(device)* says whether a member
    connection to *device* is up. *label* names the swarm in logs.
    """
    running: dict[bytes, trio.CancelScope] = {}
    async with trio.open_nursery() as nursery:
        while True:
            wanted = [d for d in dict.fromkeys(devices()) if d != me][:MAX_PAIRS]
            for device in wanted:
                if device not in running:
                    scope = running[device] = trio.CancelScope()
                    nursery.start_soon(_meet_pair, scope, config, secret, me, device, network,
                                       topic, status, connected, label, clock)
            for device in [d for d in running if d not in wanted]:
                running.pop(device).cancel()
            await trio.sleep(RESCAN)


async def _meet_pair(scope: trio.CancelScope, config: RendezvousConfig, secret: bytes,
                     me: bytes, device: bytes, network: NetworkManager, topic: Topic,
                     status: RendezvousStatus, connected: Callable[[bytes], bool], label: str,
                     clock: Callable[[], float]) -> None:
    names = for_member_pair(secret, me, device)
    side = pair_side(me, device)
    who = f"swarm {label}: device {device.hex()[:12]}"
    with scope:
        # Up to 16 pairs per log retry at once: their failures log at info.
        await keep_meeting(lambda: _pair_session(config, names, side, device, network, topic,
                                                 status, connected, who, clock),
                           status, who=who, level=logging.INFO)


async def _pair_session(config: RendezvousConfig, names: RendezvousNames, side: int,
                        device: bytes, network: NetworkManager, topic: Topic,
                        status: RendezvousStatus, connected: Callable[[bytes], bool], who: str,
                        clock: Callable[[], float]) -> None:
    mine, theirs = names.side(side), names.side(1 - side)
    async with open_mailbox(config.mailbox, names.mailbox_id, side=mine,
                            timeout=MAILBOX_TIMEOUT) as box:
        status.opened()
        try:
            # Side 0 offers its relay; side 1 meets it there.
            await put_candidates(box, names, side, offerable(network.reachable_addresses),
                                 config.transit if side == 0 else None)
            requests = RelayRequests(names, 1 - side, who=who, clock=clock)
            dialing = False
            async with trio.open_nursery() as nursery:
                async for msg in box:
                    if msg.phase == PHASE:
                        try:
                            got = open_candidates(names.sealing_key, msg.body,
                                                  sender_side=theirs)
                        except (DecodeError, BadTag) as exc:
                            log.info("%s: candidates that do not open: %s", who, exc)
                            continue
                        if got.addrs:
                            network.add_peers(topic, got.addrs)
                        log.debug("%s: its candidates: %d address(es)%s", who,
                                  len(got.addrs), "" if got.relay is None else ", a relay")
                        if side == 1 and got.relay is not None and not dialing:
                            dialing = True
                            nursery.start_soon(_dial_relayed, box, names, got.relay, device,
                                               network, topic, connected, who, clock)
                    elif (msg.phase == RELAY_PHASE and side == 0
                          and (token := requests.fresh(msg.body)) is not None):
                        if config.transit is None:
                            log.info("%s: asks for a relay; none configured", who)
                            continue
                        nursery.start_soon(functools.partial(
                            serve_relayed, config.transit, token, mine,
                            network.serve_stream, who=who))
        finally:
            status.closed()


def _ready(stream: trio.abc.Stream) -> Callable[[], Awaitable[trio.abc.Stream]]:
    """An opener that hands over *stream*, already paired at the relay."""
    async def opener() -> trio.abc.Stream:
        return stream
    return opener


async def _dial_relayed(box: MailboxSession, names: RendezvousNames,
                        relay: tuple[str, int], device: bytes, network: NetworkManager,
                        topic: Topic, connected: Callable[[bytes], bool], who: str,
                        clock: Callable[[], float]) -> None:
    """Side 1: whenever the device stays unconnected, meet it through the relay."""
    mine = names.side(1)
    backoff = BACKOFF[0]
    await trio.sleep(RELAY_HEAD_START)
    while True:
        if connected(device):
            await trio.sleep(RESCAN)
            continue
        token = await ask_relay(box, names, 1, clock)
        began = trio.current_time()
        try:
            stream = await relay_connect(*relay, token, mine, timeout=RELAY_WAIT)
        except RendezvousError as exc:
            log.info("%s: not met at the relay: %s", who, exc)
            established = False
        else:
            log.info("%s: reached it through the relay at %s", who,
                     format_relay_address(*relay))

            established = await network.dial_path(
                topic, f"relay {format_relay_address(*relay)}", _ready(stream))
        if established and trio.current_time() - began >= _STABLE:
            backoff = BACKOFF[0]
        else:
            await trio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF[1])
