"""Rendezvous beyond the LAN: a magic-wormhole mailbox and transit relay (docs/RENDEZVOUS.md).

The leaf layer: it only derives names, seals candidates and moves bytes to
and from the two services; deciding when to use them is the network
manager's. Two parties sharing a 256-bit secret (a link code's, or a swarm
secret and a pair of device keys) derive the same :class:`RendezvousNames`
(:mod:`.names`), meet in the mailbox (:mod:`.mailbox`, codec in
:mod:`.mailbox_wire`), swap sealed :class:`Candidates` (:mod:`.candidates`)
and, when no direct address answers, meet at the relay (:mod:`.transit`).
Noise runs end to end over whatever path wins; the services see only
derived values and ciphertext.
"""

from __future__ import annotations

from .candidates import (
    PHASE,
    Address,
    Candidates,
    decode_candidates,
    encode_candidates,
    open_candidates,
    seal_candidates,
)
from .mailbox import MailboxSession, open_mailbox
from .mailbox_wire import Message, Mood, check_mailbox_url
from .names import APPID, SIDES, RendezvousNames, for_invitation, for_member_pair, pair_side
from .transit import format_relay_address, parse_relay_address, relay_connect

__all__ = [
    "APPID",
    "PHASE",
    "SIDES",
    "Address",
    "Candidates",
    "MailboxSession",
    "Message",
    "Mood",
    "RendezvousNames",
    "check_mailbox_url",
    "decode_candidates",
    "encode_candidates",
    "for_invitation",
    "for_member_pair",
    "format_relay_address",
    "open_candidates",
    "open_mailbox",
    "pair_side",
    "parse_relay_address",
    "relay_connect",
    "seal_candidates",
]
