"""The daemon process: wire keys, state, network and IPC together; run until a signal.

Start-up, in order (each step's failure is one clear line and exit status 1):

1. take the home (0700) and its lock -- a second daemon on the same home
   stops here with "already running";
2. load or create this device's keys (``HOME/keys/device.key``);
3. open the identity and spaces state;
4. open the network manager (TCP listener, mDNS unless ``--no-mdns``) with
   the device binding proof as handshake payload;
5. serve the IPC socket with the method table below.

SIGINT or SIGTERM stops the IPC server (removing the socket), closes the
network manager (withdrawing mDNS, closing connections) and then the logs;
the exit status is 0.

The method table maps IPC method names to handlers. A handler validates its
params (``bad_request`` on anything wrong), calls the layer below, and turns
the answer into plain maps with hex strings for keys and ids. Invitation
methods go through :class:`InvitationBackend`, the shape of the invitations
layer's manager; they are in the table only when a backend is given.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import enum
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import trio

from .. import __version__
from ..crypto.ed25519 import check_public_key
from ..errors import IPCError, P2PInviteError, WeakPublicKey
from ..fsutil import atomic_write
from ..halo.credentials import Role
from ..halo.identity import IdentityExists, IdentityService, Issued, NoIdentity
from ..halo.keys import DeviceKeys, SigningKey
from ..halo.spaces import SpaceExists, SpaceService, UnknownSpace
from ..halo.state import Member, MembershipState
from ..halo.swarm_secrets import SwarmSecrets
from ..invitations.handlers import AcceptResult
from ..invitations.manager import DEFAULT_RETENTION, InvitationManager
from ..invitations.model import INVITABLE_ROLES, MAX_NOTE_LENGTH, MAX_USES_LIMIT, Invitation
from ..invitations.store import InvitationStore
from ..net.manager import NetworkManager, open_network_manager
from ..rendezvous.config import RendezvousConfig, RendezvousStatus
from ..swarm.service import PeerInfo, SwarmEvent, SwarmService
from .config import DaemonConfig, hold_home_lock
from .ipc import Call, CallError, Handler, serve_ipc
from .logs import close_logging, setup_logging
from .swarm_logs import DaemonLogs

__all__ = [
    "Daemon",
    "invitation_methods",
    "method_table",
    "run",
    "run_daemon",
    "to_wire",
]

log = logging.getLogger("p2pinvite.daemon")

#: Largest accepted name (identity, space) and code text on IPC.
MAX_NAME: Final = 256
MAX_CODE_TEXT: Final = 2048
_KINDS: Final = frozenset({"device", "space"})
_AUTHS: Final = frozenset({"pin", "none", "key", "short"})
#: Where the invitation records live, inside the home.
INVITATIONS_DIR: Final = "invitations"


# -- params ------------------------------------------------------------------------


def _bad(message: str) -> IPCError:
    return IPCError(message, code="bad_request")


def _check_keys(params: Mapping[str, Any], allowed: frozenset[str]) -> None:
    extra = set(params) - allowed
    if extra:
        raise _bad(f"unknown params: {sorted(extra)}")


def p_str(params: Mapping[str, Any], key: str, *, max_len: int = MAX_NAME,
          required: bool = True) -> str | None:
    """Param *key* as a string (``None`` if absent and not *required*)."""
    v = params.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str):
        raise _bad(f"param {key!r} must be a string")
    if len(v) > max_len:
        raise _bad(f"param {key!r} is longer than {max_len} characters")
    return v


def p_name(params: Mapping[str, Any], key: str = "name") -> str:
    """A display name: a non-blank string of at most :data:`MAX_NAME` characters."""
    v = p_str(params, key)
    assert v is not None
    v = v.strip()
    if not v or not v.isprintable():
        raise _bad(f"param {key!r} must be a non-empty printable name")
    return v


def p_int(params: Mapping[str, Any], key: str, *, lo: int, hi: int) -> int | None:
    """Param *key* as an integer in ``[lo, hi]``, or ``None`` if absent/nil."""
    v = params.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise _bad(f"param {key!r} must be an integer in [{lo}, {hi}] or nil")
    return v


def p_bool(params: Mapping[str, Any], key: str, default: bool = False) -> bool:
    """Param *key* as a boolean."""
    v = params.get(key, default)
    if not isinstance(v, bool):
        raise _bad(f"param {key!r} must be a boolean")
    return v


def p_hex(params: Mapping[str, Any], key: str, size: int) -> bytes:
    """Param *key* as lowercase/uppercase hex of exactly *size* bytes."""
    v = p_str(params, key, max_len=2 * size)
    assert v is not None
    try:
        raw = bytes.fromhex(v)
    except ValueError:
        raise _bad(f"param {key!r} must be hex") from None
    if len(raw) != size:
        raise _bad(f"param {key!r} must be {size} bytes of hex")
    return raw


# -- values to the wire ---------------------------------------------------------------


def to_wire(value: Any) -> Any:
    """Turn a result into IPC-friendly data: bytes -> lowercase hex, enums -> values.

    Dataclasses become maps *without* their ``repr=False`` fields: those are
    the secrets (PINs, code secrets, private keys) and never leave the daemon
    by accident; a handler that must return one (the PIN of a new invitation)
    adds it explicitly.
    """
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, enum.Enum):
        return to_wire(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_wire(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.repr and not f.name.startswith("_")
        }
    if isinstance(value, Mapping):
        return {str(k): to_wire(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_wire(v) for v in value]
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    return value


def _ts(t: float | None) -> int | None:
    return None if t is None else int(t)


def invitation_to_wire(inv: Invitation, now: float) -> dict[str, Any]:
    """The IPC map of a host-side invitation record (no secret material)."""
    return {
        "id": inv.id.hex(),
        "kind": inv.kind.value,
        "status": inv.status(now).value,
        "auth": inv.auth.value,
        "space_id": inv.target.hex() if inv.kind.value == "space" else None,
        "identity_key": inv.target.hex() if inv.kind.value == "device" else None,
        "role": inv.role,
        "uses": inv.uses,
        "max_uses": inv.max_uses,
        "failed_attempts": inv.failed_attempts,
        "max_attempts": inv.max_attempts,
        "created_at": _ts(inv.created_at),
        "expires_at": _ts(inv.expires_at),
        "note": inv.note,
        "accepted_by": [key.hex() for key, _at in inv.accepted_by],
        "revoked_at": _ts(inv.revoked_at),
    }


# -- the invitation adapter -----------------------------------------------------------

#: Final guest states and the IPC error each becomes (``wrong_pin`` is by reason).
_FAILURE_CODES: Final = {
    "timeout": "timeout",
    "cancelled": "timeout",
    "expired": "refused",
    "locked": "refused",
    "revoked": "refused",
    "error": "refused",
}
#: Guest failure reasons with an IPC code of their own.
_REASON_CODES: Final = {
    "wrong_pin": "wrong_pin",
    "wrong_code": "wrong_pin",
    "wrong_key": "wrong_pin",
    "invalid_code": "invalid_code",
    "no_identity": "no_identity",
    "pin_required": "bad_request",
    "invalid_pin": "bad_request",
    "admission_key_required": "bad_request",
}


def _accept_failure(state: str, reason: str | None, attempts_left: int | None) -> CallError:
    """The IPC error that ends a failed ``invitations.accept``."""
    code = _REASON_CODES.get(reason or "", _FAILURE_CODES.get(state, "refused"))
    if reason is not None and reason.startswith("host unreachable"):
        code = "unreachable"
    details: dict[str, Any] = {"reason": reason or state}
    if attempts_left is not None:
        details["attempts_left"] = attempts_left
    return CallError(f"invitation not accepted: {reason or state}", code=code, details=details)


def invitation_methods(
    manager: InvitationManager,
    identity: IdentityService,
    spaces: SpaceService,
    on_joined: Callable[[AcceptResult], Awaitable[None]] | None = None,
) -> dict[str, Handler]:
    """The ``invitations.*`` handlers over the invitations layer's manager.

    *on_joined* runs after a successful accept, before the result is
    answered (the daemon joins the new log's member swarm there).
    """

    async def create(call: Call) -> Any:
        p = call.params
        _check_keys(p, frozenset({"kind", "space", "role", "auth", "max_uses", "expires_in",
                                  "note", "admission_key"}))
        kind = p_str(p, "kind")
        if kind not in _KINDS:
            raise _bad("param 'kind' must be 'device' or 'space'")
        auth = p_str(p, "auth", required=False) or "pin"
        if auth not in _AUTHS:
            raise _bad("param 'auth' must be one of pin, none, key, short")
        space = p_str(p, "space", required=False)
        role = p_str(p, "role", required=False)
        if kind == "space":
            if space is None:
                raise _bad("a space invitation needs param 'space'")
            space_id: bytes | None = resolve_space(spaces, space)
            if role is not None:
                role = role.lower()
                if role not in INVITABLE_ROLES:
                    raise _bad(f"role must be one of {sorted(INVITABLE_ROLES)} "
                               "(the owner is named by the space itself)")
        else:
            if space is not None or role is not None:
                raise _bad("a device invitation takes no 'space' or 'role'")
            space_id = None
        admission_key = p_hex(p, "admission_key", 32) if p.get("admission_key") else None
        if (auth == "key") != (admission_key is not None):
            raise _bad("param 'admission_key' is required with auth 'key', and only then")
        if admission_key is not None:
            try:
                check_public_key(admission_key)
            except WeakPublicKey as exc:  # no signature could ever verify under it
                raise _bad(f"param 'admission_key' is not a usable Ed25519 key: {exc}") from None
        created = await manager.create(
            kind=kind, space_id=space_id, role=role, auth=auth,
            max_uses=p_int(p, "max_uses", lo=1, hi=MAX_USES_LIMIT),
            expires_in=p_int(p, "expires_in", lo=1, hi=10 * 365 * 86400),
            note=p_str(p, "note", max_len=MAX_NOTE_LENGTH, required=False) or "",
            admission_key=admission_key,
        )
        inv = created.invitation
        out = {
            "id": inv.id.hex(),
            "code": created.code,
            "expires_at": _ts(inv.expires_at),
            "kind": inv.kind.value,
            "auth": inv.auth.value,
        }
        if created.pin is not None:
            out["pin"] = created.pin
        return out

    async def list_(call: Call) -> Any:
        _check_keys(call.params, frozenset({"all"}))
        include_all = p_bool(call.params, "all")
        now = time.time()
        return [invitation_to_wire(i, now) for i in manager.list(include_all=include_all)]

    async def revoke(call: Call) -> Any:
        _check_keys(call.params, frozenset({"id"}))
        inv = await manager.revoke(p_hex(call.params, "id", 16))
        return invitation_to_wire(inv, time.time())

    async def validate(call: Call) -> Any:
        _check_keys(call.params, frozenset({"code"}))
        code = p_str(call.params, "code", max_len=MAX_CODE_TEXT)
        assert code is not None
        v = manager.validate(code)
        if v.reason == "invalid_code":
            raise IPCError(v.detail or "not a valid p2pinvite code", code="invalid_code")
        return {
            "valid": v.valid,
            "reason": v.reason,
            "kind": None if v.kind is None else v.kind.value,
            "id": None if v.invitation_id is None else v.invitation_id.hex(),
            "auth": None if v.auth is None else v.auth.value,
            "expires_at": _ts(v.expires_at),
            "local": v.local,
            "status": None if v.status is None else v.status.value,
            "space_id": None,
            "identity_key": None,
        }

    def join_result(kind: str, target: bytes) -> dict[str, Any]:
        if kind == "device":
            return {"kind": kind, "identity_key": target.hex()}
        space = spaces.open_space(target)
        me = identity.identity_key
        return {"kind": kind, "identity_key": me.hex(), "space_id": target.hex(),
                "space_name": space.name, "role": _role(space.state.role_of(me))}

    async def accept(call: Call) -> Any:
        p = call.params
        _check_keys(p, frozenset({"code", "pin", "name", "admission_seed"}))
        code = p_str(p, "code", max_len=MAX_CODE_TEXT)
        assert code is not None
        pin = p_str(p, "pin", max_len=64, required=False)
        name = p_str(p, "name", required=False)
        # The private half of a key invitation's admission key: the guest's
        # daemon signs the handshake hash with it. Held for this call only.
        signer = (SigningKey.from_seed(p_hex(p, "admission_seed", 32))
                  if p.get("admission_seed") is not None else None)
        async for ev in manager.accept(code, pin=pin, name=name, admission_key=signer):
            state = ev.state.value
            if ev.ok and ev.result is not None:
                if on_joined is not None:
                    await on_joined(ev.result)
                result = join_result(ev.result.kind.value, ev.result.target)
                await call.emit({"state": "admitted", **result})
                return result
            if ev.final:
                await call.emit({"state": "failed", "reason": ev.reason or state})
                raise _accept_failure(state, ev.reason, ev.attempts_left)
            await call.emit({"state": state})
        raise IPCError("the join ended without a result", code="internal")

    async def subscribe(call: Call) -> Any:
        _check_keys(call.params, frozenset())
        async for ev in manager.subscribe():
            try:
                record = invitation_to_wire(manager.get(ev.invitation_id), time.time())
            except P2PInviteError:
                continue  # the record is gone; nothing to report
            event: dict[str, Any] = {"change": ev.type, "invitation": record}
            if ev.reason is not None:
                event["reason"] = ev.reason
            if ev.attempts_left is not None:
                event["attempts_left"] = ev.attempts_left
            if ev.peer is not None:
                event["peer"] = ev.peer.hex()
            await call.emit(event)
        return None

    return {
        "invitations.create": create,
        "invitations.list": list_,
        "invitations.revoke": revoke,
        "invitations.validate": validate,
        "invitations.accept": accept,
        "invitations.subscribe": subscribe,
    }


# -- the daemon -------------------------------------------------------------------------


@dataclass(slots=True)
class Daemon:
    """The running daemon's parts, as the method handlers see them."""

    config: DaemonConfig
    identity: IdentityService
    spaces: SpaceService
    net: NetworkManager
    mdns_interfaces: tuple[str, ...] | None
    invitations: InvitationManager | None = None
    secrets: SwarmSecrets | None = None
    swarm: SwarmService | None = None
    rendezvous: RendezvousStatus | None = None

    @property
    def keys(self) -> DeviceKeys:
        """This device's keys."""
        return self.identity.device


#: Exceptions of the layers below that carry an IPC meaning.
_TRANSLATIONS: Final[tuple[tuple[type[Exception], str], ...]] = (
    (NoIdentity, "no_identity"),
    (IdentityExists, "already_exists"),
    (SpaceExists, "already_exists"),
    (UnknownSpace, "not_found"),
)


def _translated(handler: Handler) -> Handler:
    """Turn the halo layer's typed refusals into IPC error codes."""

    async def wrapper(call: Call) -> Any:
        try:
            return await handler(call)
        except tuple(t for t, _ in _TRANSLATIONS) as exc:
            code = next(c for t, c in _TRANSLATIONS if isinstance(exc, t))
            raise IPCError(str(exc), code=code) from None

    return wrapper


def _role(role: Role | None) -> str | None:
    return None if role is None else role.value.lower()


def _resolve_named(keys: list[bytes], name_of: Callable[[bytes], str], text: str, *,
                   plural: str, key: str, missing: str) -> bytes:
    """The key named by *text*: a full hex key, a unique name, or a unique key prefix.

    The one lookup rule of every IPC param that names a space or a member.
    Raises ``not_found`` or ``ambiguous`` (IPC errors).
    """
    lowered = text.strip().lower()
    for k in keys:
        if k.hex() == lowered:
            return k
    named = [k for k in keys if name_of(k) == text]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise IPCError(f"{len(named)} {plural} are named {text!r}; use the {key}",
                       code="ambiguous")
    if len(lowered) >= 8 and all(c in "0123456789abcdef" for c in lowered):
        prefixed = [k for k in keys if k.hex().startswith(lowered)]
        if len(prefixed) == 1:
            return prefixed[0]
        if len(prefixed) > 1:
            raise IPCError(f"{key} prefix {text!r} is not unique", code="ambiguous")
    raise IPCError(f"no {missing} {text!r}", code="not_found")


def resolve_space(spaces: SpaceService, text: str) -> bytes:
    """The space id named by *text*: its full hex id, a unique name, or a unique id prefix.

    Raises ``not_found`` or ``ambiguous`` (IPC errors).
    """
    return _resolve_named(spaces.list_spaces(), lambda sid: spaces.open_space(sid).name, text,
                          plural="spaces", key="space id", missing="space")


def resolve_member(state: MembershipState, text: str) -> bytes:
    """The identity key of the current member named by *text*: its full hex key, a
    unique member name, or a unique key prefix (8+ hex chars).

    Raises ``not_found`` or ``ambiguous`` (IPC errors).
    """
    names = {m.identity: m.name for m in state.members()}
    return _resolve_named(list(names), names.__getitem__, text, plural="members",
                          key="identity key", missing="current member")


def member_to_wire(m: Member) -> dict[str, Any]:
    """The IPC map of a space member: who, which role, admitted by whom and when."""
    return {
        "identity_key": m.identity.hex(),
        "name": m.name,
        "role": _role(m.role),
        "admitted_by": m.admitted_by.hex(),
        "admitted_at": m.admitted_at // 1000,
        "invitation": None if m.invitation is None else m.invitation.hex(),
        "entry": m.entry.hex(),
    }


def peer_to_wire(p: PeerInfo) -> dict[str, Any]:
    """The IPC map of a member device connected now."""
    return {
        "log": p.log.hex(),
        "device_key": p.device.hex(),
        "identity_key": None if p.identity is None else p.identity.hex(),
        "addresses": [[h, port] for h, port in p.addrs],
        "connected_at": _ts(p.connected_at),
        "last_synced": _ts(p.last_synced),
        "entries_received": p.entries_received,
        "entries_new": p.entries_new,
        "entries_sent": p.entries_sent,
    }


async def join_member_swarm(d: Daemon, log_key: bytes,
                            first_peer: tuple[str, int] | None = None) -> None:
    """Join *log_key*'s member swarm (making its secret if this device just created it)."""
    if d.swarm is None or d.secrets is None:
        return
    if d.secrets.get(log_key) is None:
        await trio.to_thread.run_sync(d.secrets.create, log_key)
    await d.swarm.join(log_key)
    if first_peer is not None:
        d.swarm.add_peers(log_key, (first_peer,))


def method_table(d: Daemon) -> dict[str, Handler]:
    """Every IPC method this daemon serves.

    The halo calls below are synchronous (an fsync or two for a create);
    they run on the event loop on purpose: no await inside them means no
    other task sees a half-made identity or space.
    """
    ident = d.identity
    spaces = d.spaces

    async def status(call: Call) -> Any:
        _check_keys(call.params, frozenset())
        return {
            "version": __version__,
            "pid": os.getpid(),
            "home": str(d.config.home),
            "device_key": d.keys.device_public.hex(),
            "identity": ident.identity_key.hex() if ident.has_identity else None,
            "addresses": [[host, port] for host, port in d.net.addresses],
            "mdns": d.mdns_interfaces is not None,
            "swarms": swarms_to_wire(),
            "peers": 0 if d.swarm is None else len(d.swarm.peers()),
            "rendezvous": (d.rendezvous or RendezvousStatus(None)).as_dict(),
        }

    def log_kind(key: bytes) -> str:
        return "identity" if ident.has_identity and key == ident.identity_key else "space"

    def log_name(key: bytes) -> str:
        if log_kind(key) == "identity":
            return ident.name
        return spaces.open_space(key).name if spaces.has_space(key) else ""

    def swarms_to_wire() -> list[dict[str, Any]]:
        if d.swarm is None or d.secrets is None:
            return []
        out = []
        for key in d.swarm.joined():
            topic = d.swarm.topic(key)
            secret = d.secrets.get(key)
            out.append({
                "log": key.hex(),
                "kind": log_kind(key),
                "name": log_name(key),
                "epoch": None if secret is None else secret.epoch,
                "topic": None if topic is None else topic.short_id,
                "peers": len(d.swarm.peers(key)),
            })
        return out

    def identity_map() -> dict[str, Any]:
        return {
            "identity_key": ident.identity_key.hex(),
            "name": ident.name,
            "device_key": d.keys.device_public.hex(),
        }

    async def identity_create(call: Call) -> Any:
        _check_keys(call.params, frozenset({"name"}))
        name = p_name(call.params)
        key = ident.create_identity(name)
        log.info("identity created", extra={"identity": key.hex()})
        await join_member_swarm(d, key)
        return identity_map()

    async def identity_show(call: Call) -> Any:
        _check_keys(call.params, frozenset())
        return identity_map()

    async def devices_list(call: Call) -> Any:
        _check_keys(call.params, frozenset())
        me = d.keys.device_public
        return [
            {"device_key": dev.hex(), "this_device": dev == me, "added_at": None}
            for dev in ident.devices()
        ]

    async def devices_remove(call: Call) -> Any:
        _check_keys(call.params, frozenset({"device"}))
        text = p_str(call.params, "device") or ""
        device = _resolve_named(ident.devices(), lambda _: "", text, plural="devices",
                                key="device key", missing="current device")
        issued = await ident.revoke_device(device)
        log.info("device removed", extra={"device": device.hex()})
        epoch = None if d.swarm is None else await d.swarm.rotate_now(ident.identity_key)
        return {"device_key": device.hex(), "identity_key": ident.identity_key.hex(),
                "entry": issued.id.hex(), "epoch": epoch}

    async def spaces_create(call: Call) -> Any:
        _check_keys(call.params, frozenset({"name"}))
        name = p_name(call.params)
        space_id = spaces.create_space(name)
        log.info("space created", extra={"space": space_id.hex()})
        await join_member_swarm(d, space_id)
        return {"space_id": space_id.hex(), "name": name}

    async def spaces_list(call: Call) -> Any:
        _check_keys(call.params, frozenset())
        me = ident.identity_key if ident.has_identity else None
        out = []
        for sid in spaces.list_spaces():
            space = spaces.open_space(sid)
            out.append({
                "space_id": sid.hex(),
                "name": space.name,
                "role": _role(space.state.role_of(me)) if me is not None else None,
                "members": len(space.members()),
            })
        return out

    async def spaces_members(call: Call) -> Any:
        _check_keys(call.params, frozenset({"space", "all"}))
        text = p_str(call.params, "space")
        assert text is not None
        sid = resolve_space(spaces, text)
        space = spaces.open_space(sid)
        members = [member_to_wire(m) for m in space.members()]
        if not p_bool(call.params, "all"):
            return members
        state = space.state
        removed = [member_to_wire(m) for k in state.removed()
                   if (m := state.member(k)) is not None]
        rejected = [{"entry": eid.hex(), "rule": st.rule}
                    for eid, st in space.log.resolver.statuses().items() if not st.applied]
        return {"members": members, "removed": removed, "rejected": rejected}

    def changed_member(sid: bytes, member: bytes, issued: Issued) -> Any:
        m = spaces.open_space(sid).state.member(member)
        assert m is not None  # it was a member a moment ago
        return {"space": sid.hex(), "member": member_to_wire(m), "entry": issued.id.hex()}

    async def spaces_role(call: Call) -> Any:
        _check_keys(call.params, frozenset({"space", "member", "role"}))
        sid = resolve_space(spaces, p_str(call.params, "space") or "")
        member = resolve_member(spaces.open_space(sid).state, p_str(call.params, "member") or "")
        text = p_str(call.params, "role") or ""
        roles = {r.value.lower(): r for r in Role if r is not Role.REMOVED}
        if text not in roles:
            raise _bad(f"role must be one of {sorted(roles)} (to remove, use spaces.remove)")
        issued = await spaces.change_role(sid, member, roles[text])
        log.info("member role changed", extra={"space": sid.hex(), "role": text})
        return changed_member(sid, member, issued)

    async def spaces_remove(call: Call) -> Any:
        _check_keys(call.params, frozenset({"space", "member"}))
        sid = resolve_space(spaces, p_str(call.params, "space") or "")
        member = resolve_member(spaces.open_space(sid).state, p_str(call.params, "member") or "")
        issued = await spaces.remove(sid, member)
        log.info("member removed", extra={"space": sid.hex()})
        out = changed_member(sid, member, issued)
        # The removed member holds the swarm secret: a new one, sealed to the
        # others, before the answer (others who see the removal would do it too).
        out["epoch"] = None if d.swarm is None else await d.swarm.rotate_now(sid)
        return out

    async def spaces_leave(call: Call) -> Any:
        _check_keys(call.params, frozenset({"space"}))
        sid = resolve_space(spaces, p_str(call.params, "space") or "")
        issued = await spaces.leave(sid)
        log.info("left a space", extra={"space": sid.hex()})
        return changed_member(sid, ident.identity_key, issued)

    async def spaces_peers(call: Call) -> Any:
        _check_keys(call.params, frozenset({"space"}))
        text = p_str(call.params, "space", required=False)
        if d.swarm is None:
            return []
        key = None if text is None else resolve_space(spaces, text)
        return [peer_to_wire(p) for p in d.swarm.peers(key)]

    def event_to_wire(ev: SwarmEvent, seen: dict[bytes, dict[bytes, Member]]) -> dict[str, Any]:
        """One event; a space's ``changed`` carries what changed since *seen* (updated).

        Only the difference goes out: a subscriber of a space of 10,000
        members syncing in a few dozen batches must not receive the whole
        list each time (quadratic work for the daemon and the client).
        """
        out: dict[str, Any] = {"event": ev.type, "log": ev.log.hex(), "kind": log_kind(ev.log)}
        if ev.peer is not None:
            out["peer"] = peer_to_wire(ev.peer)
        if ev.type == "changed":
            if out["kind"] == "space":
                now = {m.identity: m for m in spaces.members(ev.log)}
                before = seen.get(ev.log, {})
                out["members"] = [member_to_wire(m) for k, m in now.items()
                                  if before.get(k) != m]
                out["gone"] = [k.hex() for k in before if k not in now]
                out["count"] = len(now)
                seen[ev.log] = now
            else:
                out["devices"] = [dev.hex() for dev in ident.devices()]
        return out

    async def spaces_subscribe(call: Call) -> Any:
        _check_keys(call.params, frozenset({"space"}))
        text = p_str(call.params, "space", required=False)
        key = None if text is None else resolve_space(spaces, text)
        if d.swarm is None:
            return None
        # Members as of the subscription: "changed" events report what differs from them.
        seen = {sid: {m.identity: m for m in spaces.members(sid)}
                for sid in ([key] if key is not None else spaces.list_spaces())}
        async for ev in d.swarm.subscribe():
            if key is None or ev.log == key:
                await call.emit(event_to_wire(ev, seen))
        return None

    table: dict[str, Handler] = {
        "status": status,
        "identity.create": identity_create,
        "identity.show": identity_show,
        "devices.list": devices_list,
        "devices.remove": devices_remove,
        "spaces.create": spaces_create,
        "spaces.list": spaces_list,
        "spaces.members": spaces_members,
        "spaces.peers": spaces_peers,
        "spaces.role": spaces_role,
        "spaces.remove": spaces_remove,
        "spaces.leave": spaces_leave,
        "spaces.subscribe": spaces_subscribe,
    }

    async def joined(result: AcceptResult) -> None:
        if (d.swarm is not None and result.host_device is not None
                and result.host_static is not None and result.host_identity is not None):
            # Before joining: the swarm reads its known devices when it joins.
            d.swarm.know(result.target, result.host_device, result.host_static,
                         result.host_identity)
        await join_member_swarm(d, result.target, result.host_addr)

    if d.invitations is not None:
        table.update(invitation_methods(d.invitations, ident, spaces, joined))
    return {name: _translated(h) for name, h in table.items()}


def _mdns_scope(config: DaemonConfig) -> tuple[str, ...] | None:
    if not config.mdns:
        return None
    if config.mdns_interfaces:
        return config.mdns_interfaces
    from ..net.discovery import default_interfaces  # zeroconf loads only when mDNS is on

    found = tuple(default_interfaces())
    return found or None


#: The TCP port the daemon last listened on, so ``--listen HOST:0`` re-binds it
#: after a restart and the address hints in link codes issued before stay true.
LAST_PORT_FILE: Final = "listen.port"


def _listen_address(config: DaemonConfig) -> tuple[str, int]:
    """The address to bind: the configured one, or with port 0 the last port if it is free."""
    host, port = config.listen
    if port != 0:
        return config.listen
    try:
        previous = int((config.home / LAST_PORT_FILE).read_text())
    except (OSError, ValueError):
        return config.listen
    if not 1 <= previous <= 65535:
        return config.listen
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # Same option as trio's listener, so the probe answers what the bind will do.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, previous))
        except OSError:
            return config.listen  # taken by someone else now: any free port will do
    return host, previous


def _release_startup_memory() -> None:
    """Hand heap pages freed during start-up back to the OS (glibc; a no-op elsewhere).

    Importing trio, cryptography and zeroconf leaves a few megabytes of freed
    but still resident heap behind; a daemon that then idles for days should
    not keep them.
    """
    gc.collect()
    try:
        # The symbols already linked into this process (libc among them):
        # ctypes.util.find_library would fork ldconfig for the same answer.
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)


def _remember_port(config: DaemonConfig, net: NetworkManager) -> None:
    try:
        atomic_write(config.home / LAST_PORT_FILE, f"{net.addresses[0][1]}\n".encode())
    except OSError as exc:  # only a convenience: never a reason not to start
        log.warning("cannot remember the listen port", extra={"error": str(exc)})


async def run_daemon(
    config: DaemonConfig, *, task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the daemon until SIGINT/SIGTERM (or cancellation); see the module docstring."""
    # Signals first: a SIGTERM during start-up still ends in a clean shutdown.
    with (
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
        hold_home_lock(config),
        contextlib.ExitStack() as stack,
    ):
        identity = IdentityService.open(config.home)
        stack.callback(identity.close)
        spaces = SpaceService.open(identity)
        stack.callback(spaces.close)
        keys = identity.device
        mdns = _mdns_scope(config)
        async with open_network_manager(
            static_key=keys.static_private,
            payload=keys.binding_proof(),
            listen=_listen_address(config),
            mdns_interfaces=mdns,
        ) as net:
            _remember_port(config, net)
            store = InvitationStore.open(config.home / INVITATIONS_DIR)
            secrets = SwarmSecrets.open(config.home)
            logs = DaemonLogs(identity, spaces)
            for key in logs.log_keys():  # logs made before swarms existed get theirs now
                if secrets.get(key) is None:
                    secrets.create(key)
            rendezvous = RendezvousStatus(None if config.mailbox is None else RendezvousConfig(
                config.mailbox, config.transit))
            swarm = SwarmService(config.home, net, secrets, logs, mdns=mdns is not None,
                                 rendezvous=rendezvous, device=keys.device_public)
            manager = InvitationManager(
                config.home, keys, identity, spaces, net, store, secrets=secrets,
                mdns=mdns is not None,
                retention=DEFAULT_RETENTION if config.retention is None else config.retention,
                rendezvous=rendezvous, on_admitted=swarm.know)
            daemon = Daemon(config, identity, spaces, net, mdns, manager, secrets, swarm,
                            rendezvous)
            async with manager, swarm, trio.open_nursery() as nursery:
                await nursery.start(serve_ipc, config.socket_path, method_table(daemon))
                log.info(
                    "daemon ready",
                    extra={
                        "pid": os.getpid(),
                        "home": str(config.home),
                        "device_key": keys.device_public.hex(),
                        "listen": " ".join(f"{h}:{p}" for h, p in net.addresses),
                        "mdns": ",".join(mdns) if mdns else "off",
                        "rendezvous": config.mailbox or "off",
                        "log_level": config.log_level,
                    },
                )
                task_status.started(daemon)
                _release_startup_memory()
                async for signum in signals:
                    log.info("shutting down", extra={"signal": signal.Signals(signum).name})
                    break
                nursery.cancel_scope.cancel()
    log.info("daemon stopped")


def run(config: DaemonConfig) -> int:
    """``p2pinvite daemon``: run in the foreground; return the process exit status."""
    handler = setup_logging(level=config.log_level)
    try:
        trio.run(run_daemon, config)
    except P2PInviteError as exc:
        print(f"p2pinvite: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # e.g. the listen address is taken or not local
        print(f"p2pinvite: cannot start: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        close_logging(handler)
    return 0

