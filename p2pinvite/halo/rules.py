"""The membership rules: may this entry do what it says, in this state?

Theory of operation
-------------------
Three pure functions of a :class:`~.state.MembershipState` and an entry's
:class:`~.state.Fact`, used by the resolver (halo/resolve.py):

``classify(view, fact)``
    What the entry *does* (an :class:`~.state.Intent`), decided once, from
    the entry's own view (the state of its ancestors: what its issuer saw).
    A ``space_member`` for an identity that is a current member in that view
    is a role change, REMOVED is a removal (a *leave* when the issuer removes
    itself), anything else an admission.

``rank(view, fact)``
    The issuer's rank in that view, for the resolver's order: OWNER 0,
    ADMIN 1, EDITOR 2, READER 3, anyone else 4; 0 for every issuer of an
    identity log (its devices are peers).

``check(state, fact, intent)``
    The rule that refuses the entry in *state*, or 0. The resolver checks an
    entry twice, against its view and against the state at its place in the
    order, with the same *intent* both times.

Rules, by the name ``rule_name(code)`` gives (docs/PROTOCOL.md Part 8 §3)::

    wrong_log            credential type does not belong in this kind of log
    wrong_identity       authorized_device issued for another identity
    wrong_space          space_member names another space
    key_spent            identity/space key used after its single use
    owner_first          the space key's membership is not OWNER for the genesis owner
    already_device       device already authorized
    unauthorized_device  signer is not an authorized device of this identity
    chain_too_deep       new device would need a chain above MAX_CHAIN_DEPTH
    issuer_not_member    issuer is not a member of the space
    issuer_removed       issuer was removed from the space
    not_admin            issuer is an EDITOR or READER (only OWNER/ADMIN admit, change, remove)
    owner_required       granting, changing or removing ADMIN/OWNER needs an OWNER
    already_member       admitting a current member
    not_member           changing or removing someone who is not a current member
    cannot_remove_owner  removing the genesis owner (also: the owner leaving)
    cannot_demote_owner  changing the genesis owner's role
    same_role            a role change to the role the member has
    not_device           revoking a device that is not a current device
    last_device          revoking an identity's last current device
    wrong_log_key        swarm_key names another log
    stale_epoch          a rotation whose epoch is not above the secret in force
    stale_key            a grant of a secret that is not the one in force

Power entries (role changes, removals, leaving, revoking a device) are
intents the resolver orders first. A ``swarm_key`` is a ROTATE when its
epoch and check differ from the secret in force in its view (only
OWNER/ADMIN members, or any device of an identity, rotate), else a GRANT of
that secret to more devices (any member device holding it may).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from .credentials import MAX_CHAIN_DEPTH, Role
from .state import (
    ADMIN,
    NONE,
    OWNER,
    REMOVED,
    Fact,
    FactKind,
    Intent,
    LogKind,
    MembershipState,
)

__all__ = [
    "POWER",
    "RANK_OTHER",
    "RULE_NAMES",
    "check",
    "classify",
    "rank",
    "rule_code",
    "rule_message",
    "rule_name",
]

#: Intents the resolver orders before concurrent admissions.
POWER: Final = frozenset({Intent.CHANGE, Intent.REMOVE, Intent.LEAVE, Intent.REVOKE})
#: Rank of an issuer that is not a current OWNER/ADMIN/EDITOR/READER.
RANK_OTHER: Final = 4

#: Rule names by code; code 0 means "applied". The codes are stored in
#: checkpoints: append new rules at the end.
RULE_NAMES: Final = (
    "",
    "wrong_log",
    "wrong_identity",
    "wrong_space",
    "key_spent",
    "owner_first",
    "already_device",
    "unauthorized_device",
    "chain_too_deep",
    "issuer_not_member",
    "issuer_removed",
    "not_admin",
    "owner_required",
    "already_member",
    "not_member",
    "cannot_remove_owner",
    "cannot_demote_owner",
    "same_role",
    "not_device",
    "last_device",
    "wrong_log_key",
    "stale_epoch",
    "stale_key",
)
_CODE: Final = {name: i for i, name in enumerate(RULE_NAMES)}
(_, WRONG_LOG, WRONG_IDENTITY, WRONG_SPACE, KEY_SPENT, OWNER_FIRST, ALREADY_DEVICE,
 UNAUTHORIZED_DEVICE, CHAIN_TOO_DEEP, ISSUER_NOT_MEMBER, ISSUER_REMOVED, NOT_ADMIN,
 OWNER_REQUIRED, ALREADY_MEMBER, NOT_MEMBER, CANNOT_REMOVE_OWNER, CANNOT_DEMOTE_OWNER,
 SAME_ROLE, NOT_DEVICE, LAST_DEVICE, WRONG_LOG_KEY, STALE_EPOCH,
 STALE_KEY) = range(len(RULE_NAMES))

_MESSAGES: Final = {
    "wrong_log": "this credential type does not belong in this kind of log",
    "wrong_identity": "device authorized for another identity",
    "wrong_space": "membership is for another space",
    "key_spent": "the identity or space key was already used for its single purpose",
    "owner_first": "the space key only makes the genesis owner OWNER",
    "already_device": "device is already authorized",
    "unauthorized_device": "signer is not a device of this identity",
    "chain_too_deep": f"device chains are limited to {MAX_CHAIN_DEPTH} devices",
    "issuer_not_member": "issuer is not a member of the space",
    "issuer_removed": "issuer was removed from the space",
    "not_admin": "only OWNER and ADMIN members may admit, change roles or remove",
    "owner_required": "only an OWNER may grant, change or remove ADMIN or OWNER",
    "already_member": "identity is already a member",
    "not_member": "identity is not a current member",
    "cannot_remove_owner": "the space owner cannot be removed",
    "cannot_demote_owner": "the space owner's role cannot be changed",
    "same_role": "the member already has that role",
    "not_device": "the device is not a current device of this identity",
    "last_device": "an identity's last device cannot be removed",
    "wrong_log_key": "the swarm key names another log",
    "stale_epoch": "a rotated swarm secret must have a higher epoch than the one in force",
    "stale_key": "the granted swarm secret is not the one in force",
}
_PRIVILEGED: Final = frozenset({OWNER, ADMIN})
_ROLE_CODES: Final = {Role.OWNER: 0, Role.ADMIN: 1, Role.EDITOR: 2, Role.READER: 3,
                      Role.REMOVED: 4}


def rule_name(code: int) -> str:
    """The name of rule *code* (``""`` for 0, applied)."""
    return RULE_NAMES[code]


def rule_code(name: str) -> int:
    """The code of rule *name*."""
    return _CODE[name]


def rule_message(code: int) -> str:
    """A sentence saying why rule *code* refuses an entry."""
    return _MESSAGES[RULE_NAMES[code]]


def classify(view: MembershipState, fact: Fact) -> Intent:
    """What *fact* does, judged from *view*, the state of its ancestors."""
    kind = fact.kind
    if kind is FactKind.IDENTITY_GENESIS or kind is FactKind.SPACE_GENESIS:
        return Intent.GENESIS
    if kind is FactKind.SWARM_KEY:
        key = view.key_in_force()
        return Intent.GRANT if (fact.epoch, fact.check) == (key.epoch, key.check) \
            else Intent.ROTATE
    if view.kind is LogKind.IDENTITY:
        if kind is FactKind.AUTHORIZED_DEVICE:
            return Intent.DEVICE
        return Intent.REVOKE if kind is FactKind.REVOKED_DEVICE else Intent.FOREIGN
    if kind is not FactKind.SPACE_MEMBER:
        return Intent.FOREIGN
    if fact.issuer == view.key:
        return Intent.OWNER
    if fact.role is Role.REMOVED:
        return Intent.LEAVE if fact.issuer == fact.subject else Intent.REMOVE
    if view.role_code(fact.subject) < REMOVED:
        return Intent.CHANGE
    return Intent.ADMIT


def rank(view: MembershipState, fact: Fact) -> int:
    """The issuer's rank in *view*: OWNER 0 ... READER 3, anyone else 4; 0 in identity logs."""
    if view.kind is LogKind.IDENTITY:
        return 0
    code = view.role_code(fact.issuer)
    return code if code < REMOVED else RANK_OTHER


def check(state: MembershipState, fact: Fact, intent: Intent) -> int:
    """The code of the rule that refuses *fact* (doing *intent*) in *state*; 0 if none."""
    return _CHECKS[intent](state, fact)


def _genesis(state: MembershipState, fact: Fact) -> int:
    # A log has one genesis, checked when it is created or imported
    # (halo/resolve.py: structure); nothing refuses it here.
    return 0


def _foreign(state: MembershipState, fact: Fact) -> int:
    return WRONG_LOG


def _device(state: MembershipState, fact: Fact) -> int:
    key = state.key
    if fact.issuer != key:
        return WRONG_IDENTITY
    if fact.subject == key or state.device_depth(fact.subject):
        return ALREADY_DEVICE
    if state.was_device(fact.subject):  # a revoked device comes back only with a new key
        return ALREADY_DEVICE
    if fact.signer == key:
        return KEY_SPENT if state.device_count else 0
    depth = state.device_depth(fact.signer)
    if not depth:
        return UNAUTHORIZED_DEVICE
    if depth + 1 > MAX_CHAIN_DEPTH:
        return CHAIN_TOO_DEEP
    return 0


def _by_device(state: MembershipState, fact: Fact) -> int:
    """0, or a refusal, for an identity-log entry that must come from a current device."""
    if fact.issuer != state.key:
        return WRONG_IDENTITY
    return 0 if state.device_depth(fact.signer) else UNAUTHORIZED_DEVICE


def _revoke(state: MembershipState, fact: Fact) -> int:
    refused = _by_device(state, fact)
    if refused:
        return refused
    if not state.device_depth(fact.subject):
        return NOT_DEVICE
    return LAST_DEVICE if state.current_device_count <= 1 else 0


def _key_issuer(state: MembershipState, fact: Fact) -> int:
    if fact.subject != state.key:
        return WRONG_LOG_KEY
    if state.kind is LogKind.IDENTITY:
        return _by_device(state, fact)
    code = state.role_code(fact.issuer)
    if code == NONE:
        return ISSUER_NOT_MEMBER
    return ISSUER_REMOVED if code == REMOVED else 0


def _rotate(state: MembershipState, fact: Fact) -> int:
    refused = _key_issuer(state, fact)
    if refused:
        return refused
    if state.kind is LogKind.SPACE and state.role_code(fact.issuer) not in _PRIVILEGED:
        return NOT_ADMIN
    return 0 if fact.epoch > state.key_in_force().epoch else STALE_EPOCH


def _grant(state: MembershipState, fact: Fact) -> int:
    refused = _key_issuer(state, fact)
    if refused:
        return refused
    key = state.key_in_force()
    return 0 if (fact.epoch, fact.check) == (key.epoch, key.check) else STALE_KEY


def _owner(state: MembershipState, fact: Fact) -> int:
    if fact.target != state.key:
        return WRONG_SPACE
    if state.has_members:
        return KEY_SPENT
    if fact.subject != state.owner or fact.role is not Role.OWNER or fact.signer != fact.issuer:
        return OWNER_FIRST
    return 0


def _issuer(state: MembershipState, fact: Fact) -> int:
    """0 and the issuer's role code, or a refusal, for entries issued by a member."""
    if fact.target != state.key:
        return WRONG_SPACE
    code = state.role_code(fact.issuer)
    if code == NONE:
        return ISSUER_NOT_MEMBER
    if code == REMOVED:
        return ISSUER_REMOVED
    return 0


def _admit(state: MembershipState, fact: Fact) -> int:
    refused = _issuer(state, fact) or _admin(state, fact)
    if refused:
        return refused
    if state.role_code(fact.subject) < REMOVED:
        return ALREADY_MEMBER
    assert fact.role is not None
    if _ROLE_CODES[fact.role] in _PRIVILEGED and state.role_code(fact.issuer) != OWNER:
        return OWNER_REQUIRED
    return 0


def _admin(state: MembershipState, fact: Fact) -> int:
    return 0 if state.role_code(fact.issuer) in _PRIVILEGED else NOT_ADMIN


def _change(state: MembershipState, fact: Fact) -> int:
    refused = _issuer(state, fact) or _admin(state, fact)
    if refused:
        return refused
    current = state.role_code(fact.subject)
    if current >= REMOVED:
        return NOT_MEMBER
    assert fact.role is not None
    new = _ROLE_CODES[fact.role]
    if new == current:
        return SAME_ROLE
    if fact.subject == state.owner:
        return CANNOT_DEMOTE_OWNER
    if (current in _PRIVILEGED or new in _PRIVILEGED) and state.role_code(fact.issuer) != OWNER:
        return OWNER_REQUIRED
    return 0


def _remove(state: MembershipState, fact: Fact) -> int:
    refused = _issuer(state, fact) or _admin(state, fact)
    if refused:
        return refused
    current = state.role_code(fact.subject)
    if current >= REMOVED:
        return NOT_MEMBER
    if fact.subject == state.owner:
        return CANNOT_REMOVE_OWNER
    if current in _PRIVILEGED and state.role_code(fact.issuer) != OWNER:
        return OWNER_REQUIRED
    return 0


def _leave(state: MembershipState, fact: Fact) -> int:
    refused = _issuer(state, fact)
    if refused:
        return refused
    return CANNOT_REMOVE_OWNER if fact.subject == state.owner else 0


_CHECKS: Final[dict[Intent, Callable[[MembershipState, Fact], int]]] = {
    Intent.GENESIS: _genesis,
    Intent.OWNER: _owner,
    Intent.ADMIT: _admit,
    Intent.CHANGE: _change,
    Intent.REMOVE: _remove,
    Intent.LEAVE: _leave,
    Intent.DEVICE: _device,
    Intent.FOREIGN: _foreign,
    Intent.REVOKE: _revoke,
    Intent.ROTATE: _rotate,
    Intent.GRANT: _grant,
}
