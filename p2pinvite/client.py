"""Talk to the local p2pinvite daemon: typed results, typed errors.

Two clients with the same shape:

* :class:`Client` -- blocking, plain :mod:`socket`; importing it does not
  import trio (the CLI starts fast).
* :class:`AsyncClient` -- for trio programs (trio is imported when it connects).

::

    from p2pinvite.client import connect

    with connect() as client:              # or connect(home="/path/to/home")
        space = client.spaces.create("Family photos")
        inv = client.invitations.create(kind="space", space=space.space_id, role="editor")
        print(inv.code, inv.pin)

    async with await connect_async() as client:
        async for event in client.invitations.accept(code, pin="123456"):
            print(event.state)             # connecting, connected, authenticating, admitted

Failures raise :class:`RequestError` (an :class:`~p2pinvite.errors.IPCError`;
``code`` is one of :data:`~p2pinvite.ipc_codec.ERROR_CODES`, ``wrong_pin``
carries ``attempts_left``) or :class:`~p2pinvite.errors.DaemonNotRunning`
when nothing listens on the home's socket. The wire is docs/PROTOCOL.md Part 10.

Both clients check who serves the socket before they send anything: the
daemon checks the client's uid, and the client checks the daemon's
(``SO_PEERCRED``). A socket served by a process of another uid -- another
user's daemon, or something impersonating ours in a home others can write
to -- would otherwise receive our codes, PINs and admission keys. It is
refused with :class:`ForeignDaemon`, also when we are root.
"""

from __future__ import annotations

import builtins
import itertools
import os
import socket
import struct
from collections.abc import AsyncIterator, Generator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, Self

from .daemon.config import resolve_home
from .errors import ConnectionClosed, DaemonNotRunning, DecodeError, IPCError
from .ipc_codec import (
    HEADER,
    MAX_IPC_REPLY,
    SOCKET_NAME,
    ErrorReply,
    Event,
    Reply,
    Request,
    Result,
    decode_reply,
    encode,
)
from .wire import FrameDecoder

if TYPE_CHECKING:
    import trio

__all__ = [
    "DEFAULT_TIMEOUT",
    "AcceptEvent",
    "AsyncClient",
    "Client",
    "CodeInfo",
    "CreatedInvitation",
    "Device",
    "DeviceRemoval",
    "ForeignDaemon",
    "Identity",
    "InvitationEvent",
    "InvitationInfo",
    "JoinResult",
    "Member",
    "MemberChange",
    "Membership",
    "Peer",
    "Rejected",
    "Rendezvous",
    "RequestError",
    "Space",
    "SpaceEvent",
    "Status",
    "Swarm",
    "connect",
    "connect_async",
]

#: Seconds a plain request may take. Streams (accept, subscribe) have no limit
#: between events; the daemon bounds every network step itself.
DEFAULT_TIMEOUT: Final = 30.0

InviteKind = Literal["device", "space"]
AuthMethod = Literal["pin", "none", "key", "short"]


class RequestError(IPCError):
    """The daemon answered a request with an error.

    ``code`` is machine-readable (see docs/PROTOCOL.md Part 10); ``details`` holds
    the error's extra fields. ``reason`` (for ``refused``) and
    ``attempts_left`` (for ``wrong_pin``) are read from it.
    """

    def __init__(self, message: str, *, code: str, details: Mapping[str, Any] | None = None):
        super().__init__(message, code=code)
        self.details: dict[str, Any] = dict(details or {})

    @property
    def reason(self) -> str | None:
        """Why an invitation was refused (``expired``, ``revoked``, ...), if given."""
        v = self.details.get("reason")
        return v if isinstance(v, str) else None

    @property
    def attempts_left(self) -> int | None:
        """PIN attempts left after a ``wrong_pin`` error, if given."""
        v = self.details.get("attempts_left")
        return v if isinstance(v, int) and not isinstance(v, bool) else None


class ForeignDaemon(IPCError):
    """The home's socket is served by a process of another uid; nothing was sent to it.

    ``uid`` is the uid the socket's server runs as (``None`` if it could not be
    read), ``expected_uid`` ours (the effective uid).
    """

    def __init__(self, message: str, *, uid: int | None, expected_uid: int) -> None:
        super().__init__(message, code="foreign_daemon")
        self.uid = uid
        self.expected_uid = expected_uid


# -- typed results ---------------------------------------------------------------


def _bad(what: str) -> IPCError:
    return IPCError(f"daemon sent a malformed {what}", code="bad_reply")


def _map(v: Any, what: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _bad(what)
    return v


def _list(v: Any, what: str) -> list[Any]:
    if not isinstance(v, list):
        raise _bad(what)
    return v


def _str(m: Mapping[str, Any], key: str, what: str) -> str:
    v = m.get(key)
    if not isinstance(v, str):
        raise _bad(what)
    return v


def _opt_str(m: Mapping[str, Any], key: str, what: str) -> str | None:
    v = m.get(key)
    if v is not None and not isinstance(v, str):
        raise _bad(what)
    return v


def _int(m: Mapping[str, Any], key: str, what: str) -> int:
    v = m.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise _bad(what)
    return v


def _opt_int(m: Mapping[str, Any], key: str, what: str) -> int | None:
    v = m.get(key)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise _bad(what)
    return v


def _bool(m: Mapping[str, Any], key: str, what: str) -> bool:
    v = m.get(key)
    if not isinstance(v, bool):
        raise _bad(what)
    return v


@dataclass(frozen=True, slots=True)
class Status:
    """What ``status`` reports about the daemon."""

    version: str
    pid: int
    home: str
    device_key: str
    identity: str | None
    addresses: tuple[tuple[str, int], ...]
    mdns: bool
    swarms: tuple[Swarm, ...] = ()
    peers: int = 0
    rendezvous: Rendezvous | None = None

    @classmethod
    def from_wire(cls, v: Any) -> Status:
        """Parse the ``status`` result."""
        m = _map(v, "status")
        return cls(
            version=_str(m, "version", "status"),
            pid=_int(m, "pid", "status"),
            home=_str(m, "home", "status"),
            device_key=_str(m, "device_key", "status"),
            identity=_opt_str(m, "identity", "status"),
            addresses=_addresses(m.get("addresses"), "status"),
            mdns=_bool(m, "mdns", "status"),
            swarms=tuple(Swarm.from_wire(x) for x in _list(m.get("swarms", []), "status")),
            peers=_int(m, "peers", "status") if "peers" in m else 0,
            rendezvous=Rendezvous.from_wire(m["rendezvous"]) if "rendezvous" in m else None,
        )


def _addresses(v: Any, what: str) -> tuple[tuple[str, int], ...]:
    addrs = []
    for a in _list(v, what):
        if not (isinstance(a, list) and len(a) == 2 and isinstance(a[0], str)
                and isinstance(a[1], int)):
            raise _bad(what)
        addrs.append((a[0], a[1]))
    return tuple(addrs)


@dataclass(frozen=True, slots=True)
class Swarm:
    """A log's member swarm this daemon is in (``status``)."""

    log: str
    kind: str  # "identity" or "space"
    name: str
    epoch: int | None
    topic: str | None
    peers: int

    @classmethod
    def from_wire(cls, v: Any) -> Swarm:
        """Parse one ``status.swarms`` item."""
        m = _map(v, "swarm")
        return cls(_str(m, "log", "swarm"), _str(m, "kind", "swarm"), _str(m, "name", "swarm"),
                   _opt_int(m, "epoch", "swarm"), _opt_str(m, "topic", "swarm"),
                   _int(m, "peers", "swarm"))


@dataclass(frozen=True, slots=True)
class Rendezvous:
    """The daemon's rendezvous beyond the LAN (``status``): ``state`` is ``off``
    (not configured), ``idle`` (nothing to meet now), ``connected`` (a mailbox
    session is open) or ``error`` (the last attempt failed: ``error`` says why)."""

    mailbox: str | None
    transit: str | None
    state: str
    connected: bool
    sessions: int
    error: str | None

    @classmethod
    def from_wire(cls, v: Any) -> Rendezvous:
        """Parse ``status.rendezvous``."""
        m = _map(v, "rendezvous")
        w = "rendezvous"
        return cls(_opt_str(m, "mailbox", w), _opt_str(m, "transit", w), _str(m, "state", w),
                   _bool(m, "connected", w), _int(m, "sessions", w), _opt_str(m, "error", w))


@dataclass(frozen=True, slots=True)
class Peer:
    """A member device connected now (``spaces.peers``)."""

    log: str
    device_key: str
    identity_key: str | None
    addresses: tuple[tuple[str, int], ...]
    connected_at: int | None
    last_synced: int | None
    entries_received: int
    entries_new: int  # of those, new here and durable
    entries_sent: int

    @classmethod
    def from_wire(cls, v: Any) -> Peer:
        """Parse one ``spaces.peers`` item (or an event's ``peer``)."""
        m = _map(v, "peer")
        return cls(_str(m, "log", "peer"), _str(m, "device_key", "peer"),
                   _opt_str(m, "identity_key", "peer"), _addresses(m.get("addresses"), "peer"),
                   _opt_int(m, "connected_at", "peer"), _opt_int(m, "last_synced", "peer"),
                   _int(m, "entries_received", "peer"), _int(m, "entries_new", "peer"),
                   _int(m, "entries_sent", "peer"))


@dataclass(frozen=True, slots=True)
class Identity:
    """The person this device belongs to."""

    identity_key: str
    name: str
    device_key: str

    @classmethod
    def from_wire(cls, v: Any) -> Identity:
        """Parse an ``identity.*`` result."""
        m = _map(v, "identity")
        return cls(
            _str(m, "identity_key", "identity"),
            _str(m, "name", "identity"),
            _str(m, "device_key", "identity"),
        )


@dataclass(frozen=True, slots=True)
class Device:
    """A device authorized for the identity."""

    device_key: str
    this_device: bool
    added_at: int | None = None

    @classmethod
    def from_wire(cls, v: Any) -> Device:
        """Parse one ``devices.list`` item."""
        m = _map(v, "device")
        return cls(
            _str(m, "device_key", "device"),
            _bool(m, "this_device", "device"),
            _opt_int(m, "added_at", "device"),
        )


@dataclass(frozen=True, slots=True)
class Space:
    """A space this identity belongs to (``role``/``members`` absent right after create)."""

    space_id: str
    name: str
    role: str | None = None
    members: int | None = None

    @classmethod
    def from_wire(cls, v: Any) -> Space:
        """Parse a ``spaces.create`` result or a ``spaces.list`` item."""
        m = _map(v, "space")
        return cls(
            _str(m, "space_id", "space"),
            _str(m, "name", "space"),
            _opt_str(m, "role", "space"),
            _opt_int(m, "members", "space"),
        )


@dataclass(frozen=True, slots=True)
class Member:
    """A member of a space: who admitted it (an identity, or the space key for the
    owner) and when (unix seconds)."""

    identity_key: str
    name: str
    role: str
    admitted_by: str | None = None
    admitted_at: int | None = None
    invitation: str | None = None
    entry: str | None = None

    @classmethod
    def from_wire(cls, v: Any) -> Member:
        """Parse one ``spaces.members`` item."""
        m = _map(v, "member")
        return cls(
            _str(m, "identity_key", "member"), _str(m, "name", "member"),
            _str(m, "role", "member"), _opt_str(m, "admitted_by", "member"),
            _opt_int(m, "admitted_at", "member"), _opt_str(m, "invitation", "member"),
            _opt_str(m, "entry", "member"),
        )


@dataclass(frozen=True, slots=True)
class Rejected:
    """A log entry kept with no effect, and the rule that refused it."""

    entry: str
    rule: str

    @classmethod
    def from_wire(cls, v: Any) -> Rejected:
        """Parse one ``spaces.members`` (all) ``rejected`` item."""
        m = _map(v, "rejected")
        return cls(_str(m, "entry", "rejected"), _str(m, "rule", "rejected"))


@dataclass(frozen=True, slots=True)
class Membership:
    """``spaces.members`` with ``all``: members, removed members, rejected entries."""

    members: tuple[Member, ...]
    removed: tuple[Member, ...]
    rejected: tuple[Rejected, ...]

    @classmethod
    def from_wire(cls, v: Any) -> Membership:
        """Parse a ``spaces.members`` result with ``all``."""
        m = _map(v, "membership")
        return cls(tuple(Member.from_wire(x) for x in _list(m.get("members"), "membership")),
                   tuple(Member.from_wire(x) for x in _list(m.get("removed"), "membership")),
                   tuple(Rejected.from_wire(x) for x in _list(m.get("rejected"), "membership")))


@dataclass(frozen=True, slots=True)
class MemberChange:
    """A role change, removal or leave, durable in the space's log: the member's new
    record (role ``removed`` after a removal) and the entry that made it."""

    space: str
    member: Member
    entry: str
    #: After a removal: the epoch of the space's swarm secret, rotated by it.
    epoch: int | None = None

    @classmethod
    def from_wire(cls, v: Any) -> MemberChange:
        """Parse a ``spaces.role`` / ``spaces.remove`` / ``spaces.leave`` result."""
        m = _map(v, "member change")
        return cls(_str(m, "space", "member change"), Member.from_wire(m.get("member")),
                   _str(m, "entry", "member change"), _opt_int(m, "epoch", "member change"))


@dataclass(frozen=True, slots=True)
class DeviceRemoval:
    """A device removed from this identity (``devices.remove``): the revoking entry,
    and the epoch of the identity's swarm secret, rotated by it."""

    device_key: str
    identity_key: str
    entry: str
    epoch: int | None = None

    @classmethod
    def from_wire(cls, v: Any) -> DeviceRemoval:
        """Parse a ``devices.remove`` result."""
        m = _map(v, "device removal")
        return cls(_str(m, "device_key", "device removal"),
                   _str(m, "identity_key", "device removal"),
                   _str(m, "entry", "device removal"), _opt_int(m, "epoch", "device removal"))


@dataclass(frozen=True, slots=True)
class SpaceEvent:
    """A change in a member swarm (``spaces.subscribe``).

    ``event``: ``peer_connected``, ``peer_left``, ``synced`` (a peer holds the
    same entries now) or ``changed`` (the log gained entries). For a space,
    ``changed`` carries the difference from what this subscription saw
    before (``spaces.members`` at the start, then each event): ``members``
    new or changed, ``gone`` the identity keys no longer members, ``count``
    the number of members now. For the identity log, ``devices`` is the new
    list.
    """

    event: str
    log: str
    kind: str
    peer: Peer | None = None
    members: tuple[Member, ...] | None = None
    devices: tuple[str, ...] | None = None
    gone: tuple[str, ...] | None = None
    count: int | None = None

    @classmethod
    def from_wire(cls, v: Mapping[str, Any]) -> SpaceEvent:
        """Parse one ``spaces.subscribe`` event."""
        m = _map(v, "space event")
        peer = Peer.from_wire(m["peer"]) if m.get("peer") is not None else None
        members = (tuple(Member.from_wire(x) for x in _list(m["members"], "space event"))
                   if "members" in m else None)
        devices = (tuple(str(x) for x in _list(m["devices"], "space event"))
                   if "devices" in m else None)
        gone = (tuple(str(x) for x in _list(m["gone"], "space event"))
                if "gone" in m else None)
        count = _int(m, "count", "space event") if "count" in m else None
        return cls(_str(m, "event", "space event"), _str(m, "log", "space event"),
                   _str(m, "kind", "space event"), peer, members, devices, gone, count)


@dataclass(frozen=True, slots=True)
class CreatedInvitation:
    """A new invitation: give ``code`` (and, separately, ``pin``) to the guest."""

    id: str
    code: str = field(repr=False)
    pin: str | None = field(repr=False)
    expires_at: int | None
    kind: str
    auth: str

    @classmethod
    def from_wire(cls, v: Any) -> CreatedInvitation:
        """Parse the ``invitations.create`` result."""
        m = _map(v, "invitation")
        return cls(
            id=_str(m, "id", "invitation"),
            code=_str(m, "code", "invitation"),
            pin=_opt_str(m, "pin", "invitation"),
            expires_at=_opt_int(m, "expires_at", "invitation"),
            kind=_str(m, "kind", "invitation"),
            auth=_str(m, "auth", "invitation"),
        )


@dataclass(frozen=True, slots=True)
class InvitationInfo:
    """An invitation as the host sees it (no secret material)."""

    id: str
    kind: str
    status: str
    auth: str
    space_id: str | None
    role: str | None
    uses: int
    max_uses: int | None
    failed_attempts: int
    created_at: int | None
    expires_at: int | None
    note: str
    accepted_by: tuple[str, ...]
    identity_key: str | None = None
    max_attempts: int | None = None
    revoked_at: int | None = None

    @classmethod
    def from_wire(cls, v: Any) -> InvitationInfo:
        """Parse one ``invitations.list`` item (or the invitation of an event)."""
        m = _map(v, "invitation")
        w = "invitation"
        accepted = _list(m.get("accepted_by", []), w)
        if not all(isinstance(a, str) for a in accepted):
            raise _bad(w)
        return cls(
            id=_str(m, "id", w),
            kind=_str(m, "kind", w),
            status=_str(m, "status", w),
            auth=_str(m, "auth", w),
            space_id=_opt_str(m, "space_id", w),
            role=_opt_str(m, "role", w),
            uses=_int(m, "uses", w),
            max_uses=_opt_int(m, "max_uses", w),
            failed_attempts=_int(m, "failed_attempts", w),
            created_at=_opt_int(m, "created_at", w),
            expires_at=_opt_int(m, "expires_at", w),
            note=_opt_str(m, "note", w) or "",
            accepted_by=tuple(accepted),
            identity_key=_opt_str(m, "identity_key", w),
            max_attempts=_opt_int(m, "max_attempts", w),
            revoked_at=_opt_int(m, "revoked_at", w),
        )


@dataclass(frozen=True, slots=True)
class CodeInfo:
    """What a code says, checked without using it (``invitations.validate``)."""

    valid: bool
    auth: str | None
    kind: str | None
    id: str | None
    space_id: str | None
    identity_key: str | None
    expires_at: int | None
    reason: str | None
    status: str | None
    local: bool = False

    @classmethod
    def from_wire(cls, v: Any) -> CodeInfo:
        """Parse the ``invitations.validate`` result."""
        m = _map(v, "code info")
        w = "code info"
        return cls(
            valid=_bool(m, "valid", w),
            auth=_opt_str(m, "auth", w),
            kind=_opt_str(m, "kind", w),
            id=_opt_str(m, "id", w),
            space_id=_opt_str(m, "space_id", w),
            identity_key=_opt_str(m, "identity_key", w),
            expires_at=_opt_int(m, "expires_at", w),
            reason=_opt_str(m, "reason", w),
            status=_opt_str(m, "status", w),
            local=m.get("local") is True,
        )


@dataclass(frozen=True, slots=True)
class AcceptEvent:
    """Progress of ``invitations.accept``: ``state`` plus any extra fields in ``info``."""

    state: str
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_wire(cls, v: Mapping[str, Any]) -> AcceptEvent:
        """Parse one accept event."""
        state = _str(v, "state", "accept event")
        return cls(state, {k: x for k, x in v.items() if k != "state"})


@dataclass(frozen=True, slots=True)
class JoinResult:
    """The final result of a successful ``invitations.accept``."""

    kind: str
    identity_key: str
    space_id: str | None = None
    space_name: str | None = None
    role: str | None = None

    @classmethod
    def from_wire(cls, v: Any) -> JoinResult:
        """Parse the ``invitations.accept`` result."""
        m = _map(v, "join result")
        w = "join result"
        return cls(
            kind=_str(m, "kind", w),
            identity_key=_str(m, "identity_key", w),
            space_id=_opt_str(m, "space_id", w),
            space_name=_opt_str(m, "space_name", w),
            role=_opt_str(m, "role", w),
        )


@dataclass(frozen=True, slots=True)
class InvitationEvent:
    """A change to one of this daemon's invitations (``invitations.subscribe``)."""

    change: str
    invitation: InvitationInfo

    @classmethod
    def from_wire(cls, v: Mapping[str, Any]) -> InvitationEvent:
        """Parse one subscription event."""
        return cls(
            _str(v, "change", "invitation event"),
            InvitationInfo.from_wire(v.get("invitation")),
        )


def _create_params(
    kind: InviteKind,
    space: str | None,
    role: str | None,
    auth: AuthMethod,
    max_uses: int | None,
    expires_in: int | None,
    note: str,
    admission_key: str | bytes | None,
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "kind": kind,
        "space": space,
        "role": role,
        "auth": auth,
        "max_uses": max_uses,
        "expires_in": expires_in,
        "note": note,
    }
    if admission_key is not None:
        params["admission_key"] = (admission_key.hex() if isinstance(admission_key, bytes)
                                   else admission_key)
    return params


def _accept_params(code: str, pin: str | None, name: str | None,
                   admission_seed: bytes | None) -> dict[str, Any]:
    params: dict[str, Any] = {"code": code}
    if pin is not None:
        params["pin"] = pin
    if name is not None:
        params["name"] = name
    if admission_seed is not None:
        params["admission_seed"] = bytes(admission_seed).hex()
    return params


# -- the sans-IO session shared by both clients -------------------------------------


def _raise_for(reply: ErrorReply) -> None:
    raise RequestError(reply.message, code=reply.code, details=reply.details)


def _not_running(path: Path) -> DaemonNotRunning:
    home = path.parent
    return DaemonNotRunning(
        f"the p2pinvite daemon is not running on {home} "
        f"(start it with: p2pinvite --home {home} daemon)"
    )


class _Session:
    """Request ids and frame decoding, without I/O."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._decoder = FrameDecoder(header=HEADER, max_frame=MAX_IPC_REPLY)

    def request(self, method: str, params: Mapping[str, Any]) -> tuple[int, bytes]:
        rid = next(self._ids)
        return rid, encode(Request(rid, method, dict(params)))

    def feed(self, data: bytes) -> list[Reply]:
        self._decoder.feed(data)
        try:
            return [decode_reply(p) for p in self._decoder.frames()]
        except DecodeError as exc:
            raise IPCError(f"bad reply from daemon: {exc}", code="bad_reply") from None


def _connect_error(path: Path, exc: OSError) -> IPCError:
    if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
        return _not_running(path)
    if isinstance(exc, PermissionError):
        return IPCError(f"no permission to use {path}", code="permission_denied")
    return IPCError(f"cannot connect to {path}: {exc.strerror or exc}", code="unreachable")


class _HasGetsockopt(Protocol):
    def getsockopt(self, level: int, optname: int, buflen: int, /) -> bytes: ...


def _user(uid: int) -> str:
    """``uid 1000 (alice)``: the name is best effort."""
    import pwd

    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _check_daemon_uid(sock: _HasGetsockopt, path: Path) -> None:
    """Raise :class:`ForeignDaemon` unless *sock*'s peer runs as our effective uid.

    On a connected Unix socket, ``SO_PEERCRED`` gives the credentials the
    server had when it called ``listen``: a process cannot pass itself off as
    another uid. Unreadable credentials are refused too (fail closed).
    """
    expected = os.geteuid()
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", raw)
    except (OSError, struct.error) as exc:
        raise ForeignDaemon(
            f"cannot tell which user serves {path} ({exc}); refusing to use it",
            uid=None, expected_uid=expected,
        ) from None
    if uid != expected:
        raise ForeignDaemon(
            f"{path} is served by {_user(uid)}, not by you ({_user(expected)}); "
            f"refusing to use it: check who owns {path.parent} and its permissions",
            uid=uid, expected_uid=expected,
        )


# -- blocking client -------------------------------------------------------------------


class Client:
    """A blocking connection to the daemon (one request at a time; not thread-safe)."""

    def __init__(self, sock: socket.socket, path: Path, *, timeout: float | None) -> None:
        self._sock = sock
        self._path = path
        self._timeout = timeout
        self._session = _Session()
        self._pending: list[Reply] = []
        self._busy = False
        self.identity = _IdentityAPI(self)
        self.devices = _DevicesAPI(self)
        self.spaces = _SpacesAPI(self)
        self.invitations = _InvitationsAPI(self)

    @classmethod
    def connect(
        cls, home: str | os.PathLike[str] | None = None, *, timeout: float | None = DEFAULT_TIMEOUT
    ) -> Client:
        """Connect to the daemon of *home* (resolved like ``--home``).

        Raises :class:`~p2pinvite.errors.DaemonNotRunning` when nobody serves
        the socket, and :class:`ForeignDaemon` when a process of another uid
        does (nothing is sent to it).
        """
        path = resolve_home(home) / SOCKET_NAME
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(os.fspath(path))
            _check_daemon_uid(sock, path)
        except OSError as exc:
            sock.close()
            raise _connect_error(path, exc) from None
        except ForeignDaemon:
            sock.close()
            raise
        return cls(sock, path, timeout=timeout)

    def close(self) -> None:
        """Close the connection (in-flight streams on the daemon are cancelled)."""
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _next(self, rid: int, timeout: float | None) -> Reply:
        while True:
            for i, reply in enumerate(self._pending):
                if reply.id == rid or (isinstance(reply, ErrorReply) and reply.id is None):
                    return self._pending.pop(i)
            self._sock.settimeout(timeout)
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                raise IPCError("the daemon did not answer in time", code="timeout") from None
            except OSError as exc:
                raise ConnectionClosed(f"daemon connection lost: {exc}") from None
            if not data:
                raise ConnectionClosed("the daemon closed the connection")
            self._pending += self._session.feed(data)

    def _send(self, method: str, params: Mapping[str, Any]) -> int:
        if self._busy:
            raise IPCError("a stream is still open on this client", code="busy")
        rid, data = self._session.request(method, params)
        try:
            self._sock.settimeout(self._timeout)
            self._sock.sendall(data)
        except OSError as exc:
            raise ConnectionClosed(f"daemon connection lost: {exc}") from None
        return rid

    def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """Send one request and return its result (raw msgpack value)."""
        rid = self._send(method, params or {})
        reply = self._next(rid, self._timeout)
        if isinstance(reply, Event):
            raise IPCError(f"{method} is a streaming method; use stream()", code="bad_reply")
        if isinstance(reply, ErrorReply):
            _raise_for(reply)
        assert isinstance(reply, Result)
        return reply.value

    def stream(
        self, method: str, params: Mapping[str, Any] | None = None
    ) -> Generator[dict[str, Any], None, Any]:
        """Send a streaming request; yield its events; return its result (StopIteration.value).

        Leaving the loop early closes the connection, which cancels the stream
        on the daemon.
        """
        rid = self._send(method, params or {})
        self._busy = True
        done = False
        try:
            while True:
                reply = self._next(rid, None)
                if isinstance(reply, Event):
                    yield reply.event
                    continue
                done = True
                if isinstance(reply, ErrorReply):
                    _raise_for(reply)
                assert isinstance(reply, Result)
                return reply.value
        finally:
            self._busy = False
            if not done:
                self.close()

    def status(self) -> Status:
        """The daemon's version, keys and listening addresses."""
        return Status.from_wire(self.call("status"))


class _IdentityAPI:
    def __init__(self, c: Client) -> None:
        self._c = c

    def create(self, name: str) -> Identity:
        """Create this device's identity (``already_exists`` if there is one)."""
        return Identity.from_wire(self._c.call("identity.create", {"name": name}))

    def show(self) -> Identity:
        """This device's identity (``no_identity`` if none yet)."""
        return Identity.from_wire(self._c.call("identity.show"))


class _DevicesAPI:
    def __init__(self, c: Client) -> None:
        self._c = c

    def list(self) -> builtins.list[Device]:
        """The devices authorized for this identity."""
        return [Device.from_wire(d) for d in _list(self._c.call("devices.list"), "devices")]

    def remove(self, device: str) -> DeviceRemoval:
        """Remove another device of this identity (full key or unique 8+ hex prefix)."""
        return DeviceRemoval.from_wire(self._c.call("devices.remove", {"device": device}))


class _SpacesAPI:
    def __init__(self, c: Client) -> None:
        self._c = c

    def create(self, name: str) -> Space:
        """Create a space owned by this identity."""
        return Space.from_wire(self._c.call("spaces.create", {"name": name}))

    def list(self) -> builtins.list[Space]:
        """The spaces this identity belongs to."""
        return [Space.from_wire(s) for s in _list(self._c.call("spaces.list"), "spaces")]

    def members(self, space: str) -> builtins.list[Member]:
        """Members of *space* (its id in hex, or its name when unique)."""
        v = self._c.call("spaces.members", {"space": space})
        return [Member.from_wire(m) for m in _list(v, "members")]

    def membership(self, space: str) -> Membership:
        """Members of *space*, and its removed members and rejected entries."""
        return Membership.from_wire(self._c.call("spaces.members", {"space": space, "all": True}))

    def peers(self, space: str | None = None) -> builtins.list[Peer]:
        """Member devices connected now, in *space* (default: in every log)."""
        params = {} if space is None else {"space": space}
        return [Peer.from_wire(p) for p in _list(self._c.call("spaces.peers", params), "peers")]

    def subscribe(self, space: str | None = None) -> Iterator[SpaceEvent]:
        """Member changes and sync progress (of *space*, default every log), as they happen."""
        params = {} if space is None else {"space": space}
        for ev in self._c.stream("spaces.subscribe", params):
            yield SpaceEvent.from_wire(ev)

    def set_role(self, space: str, member: str, role: str) -> MemberChange:
        """Give *member* (identity key, unique name or key prefix) of *space* *role*.

        Refusals raise :class:`RequestError` ``refused`` whose ``reason`` names
        the rule (``owner_required``, ``not_admin``, ``same_role``, ``cannot_demote_owner``, ...).
        """
        params = {"space": space, "member": member, "role": role}
        return MemberChange.from_wire(self._c.call("spaces.role", params))

    def remove(self, space: str, member: str) -> MemberChange:
        """Remove *member* from *space* (refusals as for :meth:`set_role`)."""
        params = {"space": space, "member": member}
        return MemberChange.from_wire(self._c.call("spaces.remove", params))

    def leave(self, space: str) -> MemberChange:
        """Leave *space* (refused for its genesis owner: ``reason`` names the rule)."""
        return MemberChange.from_wire(self._c.call("spaces.leave", {"space": space}))


class _InvitationsAPI:
    def __init__(self, c: Client) -> None:
        self._c = c

    def create(
        self,
        *,
        kind: InviteKind,
        space: str | None = None,
        role: str | None = None,
        auth: AuthMethod = "pin",
        max_uses: int | None = 1,
        expires_in: int | None = None,
        note: str = "",
        admission_key: str | bytes | None = None,
    ) -> CreatedInvitation:
        """Create an invitation (``max_uses=None``: unlimited; ``expires_in=None``: default).

        ``auth="key"`` needs *admission_key*: the guest's Ed25519 public key
        (32 bytes, or 64 hex characters).
        """
        params = _create_params(kind, space, role, auth, max_uses, expires_in, note,
                                admission_key)
        return CreatedInvitation.from_wire(self._c.call("invitations.create", params))

    def list(self, *, all: bool = False) -> builtins.list[InvitationInfo]:
        """Pending invitations (``all=True``: also accepted, expired, revoked, ...)."""
        v = self._c.call("invitations.list", {"all": all})
        return [InvitationInfo.from_wire(i) for i in _list(v, "invitations")]

    def revoke(self, id: str) -> InvitationInfo:
        """Revoke invitation *id* (hex); returns its new state."""
        return InvitationInfo.from_wire(self._c.call("invitations.revoke", {"id": id}))

    def validate(self, code: str) -> CodeInfo:
        """Decode and check *code* without using it."""
        return CodeInfo.from_wire(self._c.call("invitations.validate", {"code": code}))

    def accept(
        self, code: str, *, pin: str | None = None, name: str | None = None,
        admission_seed: bytes | None = None,
    ) -> Iterator[AcceptEvent | JoinResult]:
        """Use *code*: yield :class:`AcceptEvent` as it progresses, then a :class:`JoinResult`.

        A ``key`` invitation needs *admission_seed*, the 32-byte Ed25519 private
        seed of the key it names (sent to the local daemon only, which signs with it).
        Failure raises :class:`RequestError` (``wrong_pin`` with ``attempts_left``,
        also for a wrong PIN, short code or admission key; ``refused``,
        ``timeout``, ``unreachable``, ...).
        """
        gen = self._c.stream("invitations.accept",
                             _accept_params(code, pin, name, admission_seed))
        while True:
            try:
                ev = next(gen)
            except StopIteration as stop:
                yield JoinResult.from_wire(stop.value)
                return
            yield AcceptEvent.from_wire(ev)

    def subscribe(self) -> Iterator[InvitationEvent]:
        """Yield every change to this daemon's invitations, until the connection closes."""
        for ev in self._c.stream("invitations.subscribe"):
            yield InvitationEvent.from_wire(ev)


def connect(
    home: str | os.PathLike[str] | None = None, *, timeout: float | None = DEFAULT_TIMEOUT
) -> Client:
    """A blocking :class:`Client` for the daemon of *home* (``--home`` rules apply)."""
    return Client.connect(home, timeout=timeout)


# -- trio client --------------------------------------------------------------------------


class AsyncClient:
    """A trio connection to the daemon; concurrent requests are multiplexed on it."""

    def __init__(self, stream: trio.SocketStream, path: Path, *, timeout: float | None) -> None:
        import trio

        self._stream = stream
        self._path = path
        self._timeout = timeout
        self._session = _Session()
        self._send_lock = trio.Lock()
        self._receive_lock = trio.Lock()
        self._queues: dict[int, list[Reply]] = {}
        self._broken: BaseException | None = None
        self.identity = _AsyncIdentityAPI(self)
        self.devices = _AsyncDevicesAPI(self)
        self.spaces = _AsyncSpacesAPI(self)
        self.invitations = _AsyncInvitationsAPI(self)

    @classmethod
    async def connect(
        cls, home: str | os.PathLike[str] | None = None, *, timeout: float | None = DEFAULT_TIMEOUT
    ) -> AsyncClient:
        """Connect to the daemon of *home* (resolved like ``--home``).

        Raises as the blocking :meth:`Client.connect` does (:class:`ForeignDaemon`
        before anything is sent to a socket served by another uid).
        """
        import trio

        path = resolve_home(home) / SOCKET_NAME
        try:
            stream = await trio.open_unix_socket(os.fspath(path))
        except OSError as exc:
            raise _connect_error(path, exc) from None
        try:
            _check_daemon_uid(stream.socket, path)
        except ForeignDaemon:
            await stream.aclose()
            raise
        return cls(stream, path, timeout=timeout)

    async def aclose(self) -> None:
        """Close the connection (in-flight streams on the daemon are cancelled)."""
        await self._stream.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _send(self, method: str, params: Mapping[str, Any]) -> int:
        import trio

        rid, data = self._session.request(method, params)
        self._queues[rid] = []
        try:
            async with self._send_lock:
                await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            del self._queues[rid]
            raise ConnectionClosed(f"daemon connection lost: {exc}") from None
        return rid

    async def _next(self, rid: int) -> Reply:
        """The next reply for *rid*; whichever task holds the receive lock reads for all."""
        import trio

        while True:
            queue = self._queues[rid]
            if queue:
                return queue.pop(0)
            if self._broken is not None:
                raise ConnectionClosed(f"daemon connection lost: {self._broken}")
            async with self._receive_lock:
                if self._queues[rid]:
                    continue
                try:
                    data = await self._stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self._broken = exc
                    continue
                if not data:
                    self._broken = ConnectionClosed("the daemon closed the connection")
                    continue
                for reply in self._session.feed(data):
                    if reply.id is None:  # connection-level error: everyone sees it
                        for q in self._queues.values():
                            q.append(reply)
                    elif reply.id in self._queues:
                        self._queues[reply.id].append(reply)

    async def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """Send one request and return its result (raw msgpack value)."""
        import trio

        rid = await self._send(method, params or {})
        try:
            if self._timeout is None:
                reply = await self._next(rid)
            else:
                try:
                    with trio.fail_after(self._timeout):
                        reply = await self._next(rid)
                except trio.TooSlowError:
                    raise IPCError("the daemon did not answer in time", code="timeout") from None
        finally:
            self._queues.pop(rid, None)
        if isinstance(reply, Event):
            raise IPCError(f"{method} is a streaming method; use stream()", code="bad_reply")
        if isinstance(reply, ErrorReply):
            _raise_for(reply)
        assert isinstance(reply, Result)
        return reply.value

    async def stream(
        self, method: str, params: Mapping[str, Any] | None = None
    ) -> AsyncIterator[Reply]:
        """Send a streaming request; yield its :class:`Event` replies, then the final reply."""
        rid = await self._send(method, params or {})
        try:
            while True:
                reply = await self._next(rid)
                yield reply
                if not isinstance(reply, Event):
                    return
        finally:
            self._queues.pop(rid, None)

    async def status(self) -> Status:
        """The daemon's version, keys and listening addresses."""
        return Status.from_wire(await self.call("status"))


class _AsyncIdentityAPI:
    def __init__(self, c: AsyncClient) -> None:
        self._c = c

    async def create(self, name: str) -> Identity:
        """Create this device's identity (``already_exists`` if there is one)."""
        return Identity.from_wire(await self._c.call("identity.create", {"name": name}))

    async def show(self) -> Identity:
        """This device's identity (``no_identity`` if none yet)."""
        return Identity.from_wire(await self._c.call("identity.show"))


class _AsyncDevicesAPI:
    def __init__(self, c: AsyncClient) -> None:
        self._c = c

    async def list(self) -> builtins.list[Device]:
        """The devices authorized for this identity."""
        v = await self._c.call("devices.list")
        return [Device.from_wire(d) for d in _list(v, "devices")]

    async def remove(self, device: str) -> DeviceRemoval:
        """Remove another device of this identity (full key or unique 8+ hex prefix)."""
        v = await self._c.call("devices.remove", {"device": device})
        return DeviceRemoval.from_wire(v)


class _AsyncSpacesAPI:
    def __init__(self, c: AsyncClient) -> None:
        self._c = c

    async def create(self, name: str) -> Space:
        """Create a space owned by this identity."""
        return Space.from_wire(await self._c.call("spaces.create", {"name": name}))

    async def list(self) -> builtins.list[Space]:
        """The spaces this identity belongs to."""
        return [Space.from_wire(s) for s in _list(await self._c.call("spaces.list"), "spaces")]

    async def membership(self, space: str) -> Membership:
        """Members of *space*, and its removed members and rejected entries."""
        return Membership.from_wire(
            await self._c.call("spaces.members", {"space": space, "all": True}))

    async def peers(self, space: str | None = None) -> builtins.list[Peer]:
        """Member devices connected now, in *space* (default: in every log)."""
        params = {} if space is None else {"space": space}
        v = await self._c.call("spaces.peers", params)
        return [Peer.from_wire(p) for p in _list(v, "peers")]

    async def subscribe(self, space: str | None = None) -> AsyncIterator[SpaceEvent]:
        """Member changes and sync progress (of *space*, default every log), as they happen."""
        params = {} if space is None else {"space": space}
        async for reply in self._c.stream("spaces.subscribe", params):
            if isinstance(reply, Event):
                yield SpaceEvent.from_wire(reply.event)
            elif isinstance(reply, ErrorReply):
                _raise_for(reply)

    async def set_role(self, space: str, member: str, role: str) -> MemberChange:
        """Give *member* of *space* *role* (as :meth:`Client.spaces.set_role`)."""
        params = {"space": space, "member": member, "role": role}
        return MemberChange.from_wire(await self._c.call("spaces.role", params))

    async def remove(self, space: str, member: str) -> MemberChange:
        """Remove *member* from *space* (as :meth:`Client.spaces.remove`)."""
        params = {"space": space, "member": member}
        return MemberChange.from_wire(await self._c.call("spaces.remove", params))

    async def leave(self, space: str) -> MemberChange:
        """Leave *space* (as :meth:`Client.spaces.leave`)."""
        return MemberChange.from_wire(await self._c.call("spaces.leave", {"space": space}))

    async def members(self, space: str) -> builtins.list[Member]:
        """Members of *space* (its id in hex, or its name when unique)."""
        v = await self._c.call("spaces.members", {"space": space})
        return [Member.from_wire(m) for m in _list(v, "members")]


class _AsyncInvitationsAPI:
    def __init__(self, c: AsyncClient) -> None:
        self._c = c

    async def create(
        self,
        *,
        kind: InviteKind,
        space: str | None = None,
        role: str | None = None,
        auth: AuthMethod = "pin",
        max_uses: int | None = 1,
        expires_in: int | None = None,
        note: str = "",
        admission_key: str | bytes | None = None,
    ) -> CreatedInvitation:
        """Create an invitation (``max_uses=None``: unlimited; ``expires_in=None``: default).

        ``auth="key"`` needs *admission_key*: the guest's Ed25519 public key
        (32 bytes, or 64 hex characters).
        """
        params = _create_params(kind, space, role, auth, max_uses, expires_in, note,
                                admission_key)
        return CreatedInvitation.from_wire(await self._c.call("invitations.create", params))

    async def list(self, *, all: bool = False) -> builtins.list[InvitationInfo]:
        """Pending invitations (``all=True``: also accepted, expired, revoked, ...)."""
        v = await self._c.call("invitations.list", {"all": all})
        return [InvitationInfo.from_wire(i) for i in _list(v, "invitations")]

    async def revoke(self, id: str) -> InvitationInfo:
        """Revoke invitation *id* (hex); returns its new state."""
        return InvitationInfo.from_wire(await self._c.call("invitations.revoke", {"id": id}))

    async def validate(self, code: str) -> CodeInfo:
        """Decode and check *code* without using it."""
        return CodeInfo.from_wire(await self._c.call("invitations.validate", {"code": code}))

    async def accept(
        self, code: str, *, pin: str | None = None, name: str | None = None,
        admission_seed: bytes | None = None,
    ) -> AsyncIterator[AcceptEvent | JoinResult]:
        """Use *code*: yield :class:`AcceptEvent` as it progresses, then a :class:`JoinResult`.

        *admission_seed*: as for the blocking client's ``accept``.
        Failure raises :class:`RequestError` (``wrong_pin`` with ``attempts_left``, ...).
        """
        params = _accept_params(code, pin, name, admission_seed)
        async for reply in self._c.stream("invitations.accept", params):
            if isinstance(reply, Event):
                yield AcceptEvent.from_wire(reply.event)
            elif isinstance(reply, ErrorReply):
                _raise_for(reply)
            else:
                yield JoinResult.from_wire(reply.value)

    async def subscribe(self) -> AsyncIterator[InvitationEvent]:
        """Yield every change to this daemon's invitations, until the connection closes."""
        async for reply in self._c.stream("invitations.subscribe"):
            if isinstance(reply, Event):
                yield InvitationEvent.from_wire(reply.event)
            elif isinstance(reply, ErrorReply):
                _raise_for(reply)


async def connect_async(
    home: str | os.PathLike[str] | None = None, *, timeout: float | None = DEFAULT_TIMEOUT
) -> AsyncClient:
    """A trio :class:`AsyncClient` for the daemon of *home* (``--home`` rules apply)."""
    return await AsyncClient.connect(home, timeout=timeout)

