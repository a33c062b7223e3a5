"""Rotating a log's swarm secret: which key is in force, who holds it, sealing it (pure).

Theory of operation
-------------------
A log's first swarm secret (epoch 1) is made with the log and handed over at
each admission. Every removal, leave or device revocation leaves it in the
hands of someone who is no longer a member, so it is *rotated*: an OWNER or
ADMIN of a space (any device of an identity) makes a new secret and writes a
``swarm_key`` entry with a higher epoch, the secret's check
(:func:`~.swarm_secrets.key_check`) and the secret sealed to every remaining
member device whose static key it knows (:func:`grants_for`). Members open
their grant (:func:`open_grant`) and move to the new topic.

A member device nobody sealed it to catches up on an older topic: a member
holding the secret in force writes a ``swarm_key`` with the same epoch and
check (a *grant*) sealed to it. Which entry is in force, and whether it must
be rotated again, is a function of the resolved log
(:meth:`~.state.MembershipState.key_in_force`, :func:`needs_rotation`), so
every member reaches the same answer: concurrent rotations resolve to the
last one in the log's order, and a rotation that sealed the secret to
someone removed concurrently is rotated again.

docs/PROTOCOL.md Part 12 §7 is the normative description.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import BadTag, DecodeError, InvalidKey, InvalidPoint
from .credentials import Grant, SwarmKey, decode_credential
from .state import Fact, KeyInForce, LogKind, MembershipState
from .swarm_secrets import SwarmSecret, open_handover, seal_for_device

__all__ = [
    "Recipient",
    "grantees",
    "grants_for",
    "needs_rotation",
    "new_secret",
    "open_grant",
]


@dataclass(frozen=True, slots=True)
class Recipient:
    """A member device a secret can be sealed to: its member, device and static keys.

    ``member`` is the identity (in an identity log, the identity key itself).
    """

    member: bytes
    device: bytes
    static: bytes


def _grants(fact: Fact) -> tuple[Grant, ...]:
    a = decode_credential(fact.core).assertion
    assert isinstance(a, SwarmKey)  # key_in_force lists swarm_key entries only
    return a.grants


def grantees(key: KeyInForce) -> dict[bytes, Grant]:
    """Every device the secret in force was sealed to in the log, with its grant."""
    out: dict[bytes, Grant] = {}
    for fact in key.entries:
        for g in _grants(fact):
            out.setdefault(g.device, g)
    return out


def _current(state: MembershipState, member: bytes, device: bytes) -> bool:
    if state.kind is LogKind.IDENTITY:
        return state.is_device(device)
    return state.is_member(member)


def needs_rotation(state: MembershipState) -> bool:
    """Whether the secret in force is held by someone who is no longer a member.

    True when a removal, leave or revocation came after it in the log's
    order, or when it was sealed to a member (or device) that is not current
    any more: a rotation concurrent with a removal it did not see.
    """
    key = state.key_in_force()
    if key.stale:
        return True
    return any(not _current(state, g.member, g.device) for g in grantees(key).values())


def new_secret(state: MembershipState, log: bytes) -> SwarmSecret:
    """A fresh secret for *log*, one epoch above the one in force."""
    return SwarmSecret(log, state.key_in_force().epoch + 1, secrets.token_bytes(32))


def grants_for(secret: SwarmSecret, state: MembershipState,
               recipients: Iterable[Recipient], *, limit: int) -> list[Grant]:
    """*secret* sealed to each recipient that is a current member device, at most *limit*.

    Recipients that are not current (removed members, revoked devices) are
    skipped: that is the point of a rotation. One grant per device.
    """
    out: dict[bytes, Grant] = {}
    for r in recipients:
        if r.device in out or not _current(state, r.member, r.device):
            continue
        out[r.device] = Grant(r.member, r.device, r.static, seal_for_device(secret, r.static))
        if len(out) == limit:
            break
    return list(out.values())


def open_grant(state: MembershipState, log: bytes, device: bytes,
               static_private: bytes) -> SwarmSecret | None:
    """The secret in force, opened from a grant to *device*; None if none opens.

    A grant that does not open with our key, or opens to something that does
    not match the entry's check, is skipped (its issuer made a mistake or lied).
    """
    key = state.key_in_force()
    if key.check is None:
        return None
    for fact in key.entries:
        for g in _grants(fact):
            if g.device != device:
                continue
            try:
                secret = open_handover(static_private, log, key.epoch, g.box)
            except (BadTag, DecodeError, InvalidKey, InvalidPoint):
                continue
            if secret.check == key.check:
                return secret
    return None
