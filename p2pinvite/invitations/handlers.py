"""Trio drivers of the invitation protocol: the host side and the guest side.

Theory of operation
-------------------
:mod:`.protocol` decides; this module does the I/O its events ask for. Each
driver owns one :class:`~p2pinvite.net.secure.SecureStream` and one machine,
and loops: read a message (under the per-step timeout), feed it, then work
through the returned events in order with a dispatch table. ``SendMessage``
goes to the peer; every other event is a question answered by the store, the
identity or the space services, whose answer is fed back into the machine
(which may produce more events).

Host (:func:`serve_guest`), per connection on an invitation's topic:

* the topic names the invitation, so the host challenges the guest as soon
  as Noise completes, while the guest's request is on its way; an unusable
  invitation is refused uniformly and the precise reason goes to the owner
  (:class:`InvitationEvent`); a request for another invitation or kind is
  refused when it arrives;
* a proof is checked only while the invitation is usable, and a wrong one is
  counted in memory in the same step (so concurrent guesses stay within the
  budget), then written (``store.flush``) before the refusal goes out; a
  right one writes nothing;
* admission: reserve a use, issue the credential and append it (fsync) under
  a cancellation shield, so a revoke or a dropped connection cannot
  interrupt it half way (any failure releases the use); commit the use in
  memory (every other guest sees it at once); send ``admitted``; then write
  the record with the use. The log entry is what admits the guest, and what
  the manager recounts uses from at start, so the record write need not
  delay the answer;
* resume: a guest already admitted by *this* invitation (its credential is in
  the log) gets the existing credential again, even once the invitation is
  exhausted, so a connection lost after the host's fsync costs nothing.

Guest (:func:`run_guest`): connect (hints and mDNS raced by the network
manager), check the host's device and chain, authenticate, send the
admission request, verify everything returned and install it, yielding an
:class:`AcceptEvent` at each state. While the network runs, a worker thread
makes the directory the log will be installed in durable (:class:`_Prepared`),
so the install after ``admitted`` saves a mkdir and a directory fsync.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import trio

from ..errors import (
    UNIFORM_REFUSAL,
    ConnectionClosed,
    CredentialError,
    CryptoError,
    DecodeError,
    HandshakeError,
    InvitationError,
    P2PInviteError,
    RemoteProtocolError,
)
from ..halo.credentials import (
    AuthorizedDevice,
    Credential,
    CredentialVerifier,
    MalformedCredential,
    Role,
    SpaceMember,
    decode_credential,
)
from ..halo.identity import IdentityService
from ..halo.keys import DeviceKeys, Signer, verify_binding_proof
from ..halo.spaces import SpaceService
from ..halo.swarm_secrets import SwarmSecret, SwarmSecrets, open_handover, seal_for_device
from ..net.manager import Candidates, NetworkManager
from ..net.secure import ConnectionBroken, SecureStream
from ..net.topics import Topic
from . import protocol as p
from .meeting import meet_host
from .model import AuthMethod, Invitation, InvitationKind, InvitationStatus
from .store import InvitationStore, Reservation

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_STEP_TIMEOUT",
    "AcceptEvent",
    "AcceptResult",
    "GuestPlan",
    "HostContext",
    "InvitationEvent",
    "run_guest",
    "serve_guest",
    "verify_device_chain",
]

log = logging.getLogger("p2pinvite.invitations")

#: Longest wait for any one message of the protocol, in seconds.
DEFAULT_STEP_TIMEOUT: Final = 30.0
#: Longest the guest looks for the host before giving up.
DEFAULT_CONNECT_TIMEOUT: Final = 30.0
#: Longest a host waits for a guest's first message (its request, sent at once).
REQUEST_TIMEOUT: Final = 5.0

_ADMITTERS: Final = frozenset({Role.OWNER, Role.ADMIN})


# --------------------------------------------------------------------------
# Events for the owner (host) and the user (guest)
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InvitationEvent:
    """A host-side change of an invitation, for ``InvitationManager.subscribe``.

    ``type``: ``created``, ``guest_connected``, ``authenticating``,
    ``admitted``, ``failed_attempt``, ``locked``, ``refused``, ``revoked``.
    ``reason`` is precise (local owner only); ``peer`` is the guest's device key.
    """

    type: str
    invitation_id: bytes
    reason: str | None = None
    attempts_left: int | None = None
    peer: bytes | None = None


@dataclass(frozen=True, slots=True)
class AcceptResult:
    """What an accepted invitation gave us: the identity joined or the space imported."""

    kind: InvitationKind
    target: bytes
    credential: bytes = field(repr=False)
    resumed: bool = False
    #: The address we reached the admitting host at: the new member's first
    #: swarm peer (mDNS may not reach it; this address just did).
    host_addr: tuple[str, int] | None = None
    #: The admitting host's device key, Noise static key and identity: a member
    #: device we know from now on, reachable or not (its swarm meets it at a
    #: rendezvous too, when one is configured).
    host_device: bytes | None = None
    host_static: bytes | None = field(default=None, repr=False)
    host_identity: bytes | None = None


@dataclass(frozen=True, slots=True)
class AcceptEvent:
    """One state of a guest's accept; the last one is final (``state.final``).

    Failures carry ``reason`` (as the host sent it, or a local reason) and,
    after a wrong PIN or code, ``attempts_left``.
    """

    state: p.State
    reason: str | None = None
    attempts_left: int | None = None
    result: AcceptResult | None = None

    @property
    def final(self) -> bool:
        """True for the last event of an accept."""
        return self.state in p.FINAL_STATES

    @property
    def ok(self) -> bool:
        """True when the invitation was accepted."""
        return self.state is p.State.SUCCESS


# --------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------


def verify_device_chain(verifier: CredentialVerifier, identity: bytes, device: bytes,
                        chain: Sequence[bytes]) -> None:
    """Check that *chain* proves *device* is authorized by *identity* (CredentialError).

    The chain rules are the credential layer's (``CredentialVerifier.check_chain``):
    applied to a statement "identity says X, signed by device" with this chain.
    """
    if len(chain) == 0:
        raise CredentialError("a device chain cannot be empty", rule="bad_chain")
    probe = Credential(issuer=identity, subject=identity, assertion=AuthorizedDevice(),
                       issued_at=0, parents=(bytes(32),), signer=device, chain=tuple(chain),
                       signature=bytes(64))
    verifier.check_chain(probe)


def _session(stream: SecureStream, local_static: bytes) -> p.Session:
    return p.Session(stream.handshake_hash, local_static, stream.remote_static,
                     stream.remote_payload)


class _Dropped(Exception):
    """Internal: the peer went away or the step timed out (the machine knows which).

    ``broken``: the connection failed (no authenticated end of stream: a reset,
    a crash, bytes that did not decrypt), as opposed to a peer that ended the
    session on purpose or went silent. Only a broken one is worth dialing again.
    """

    def __init__(self, *, broken: bool) -> None:
        super().__init__("broken" if broken else "ended")
        self.broken = broken


async def _receive(stream: SecureStream, machine: p.HostProtocol | p.GuestProtocol,
                   timeout: float, max_size: int) -> bytes:
    try:
        with trio.move_on_after(timeout):
            return await stream.receive_message(max_size)
    except ConnectionBroken:
        machine.connection_lost()
        raise _Dropped(broken=True) from None
    except (ConnectionClosed, trio.ClosedResourceError):  # the peer's end-of-stream marker
        machine.connection_lost()
        raise _Dropped(broken=False) from None
    except (RemoteProtocolError, trio.BrokenResourceError):
        machine.connection_lost()  # the secure stream already judged the bytes
        raise _Dropped(broken=True) from None
    machine.timed_out()
    raise _Dropped(broken=False)


def _take_sends(queue: deque[p.Event]) -> list[bytes]:
    """Pop the run of SendMessage events at the head of *queue*: one write for a step."""
    out = []
    while queue and isinstance(queue[0], p.SendMessage):
        ev = queue.popleft()
        assert isinstance(ev, p.SendMessage)
        out.append(ev.data)
    return out


async def _send(stream: SecureStream, machine: p.HostProtocol | p.GuestProtocol,
                data: list[bytes], timeout: float) -> None:
    try:
        with trio.fail_after(timeout):
            await stream.send_messages(data)
    except trio.TooSlowError:
        if machine.state not in p.FINAL_STATES:
            machine.timed_out()
        raise _Dropped(broken=False) from None
    except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
        if machine.state not in p.FINAL_STATES:
            machine.connection_lost()
        raise _Dropped(broken=True) from None


# --------------------------------------------------------------------------
# Host
# --------------------------------------------------------------------------


@dataclass(eq=False)
class HostContext:
    """What the host driver needs: the services, the store, the clock, the owner's feed.

    ``active`` maps an invitation id to the cancel scopes of its handshakes in
    progress, so revoking it can stop them. ``admitting`` maps (invitation id,
    guest identity or device) to an event set when that guest's admission in
    progress (reserve -> append -> commit) has ended.
    """

    keys: DeviceKeys
    identity: IdentityService
    spaces: SpaceService
    secrets: SwarmSecrets
    store: InvitationStore
    clock: Callable[[], float]
    emit: Callable[[InvitationEvent], None]
    step_timeout: float = DEFAULT_STEP_TIMEOUT
    active: dict[bytes, set[trio.CancelScope]] = field(default_factory=dict)
    admitting: dict[tuple[bytes, bytes], trio.Event] = field(default_factory=dict)
    #: Called with (log key, device key, Noise static key, member identity)
    #: of each guest device admitted: a member device we know from now on.
    on_admitted: Callable[[bytes, bytes, bytes, bytes], None] | None = None


def _password(inv: Invitation) -> bytes | None:
    if inv.auth is AuthMethod.PIN:
        assert inv.pin is not None
        return inv.pin.encode("ascii")
    if inv.auth is AuthMethod.SHORT:
        assert inv.short_secret is not None
        return inv.short_secret.encode("ascii")
    return None


class _HostDriver:
    def __init__(self, ctx: HostContext, stream: SecureStream, invitation_id: bytes,
                 scope: trio.CancelScope) -> None:
        self.ctx = ctx
        self.stream = stream
        self.inv_id = invitation_id
        self.scope = scope
        self.host = p.HostProtocol()
        self.resume_only = False
        # The record holds a use not yet on disk.
        self.flush_pending = False
        self.peer: bytes | None = None

    def emit(self, type_: str, **kw: object) -> None:
        if type_ == "refused":
            log.debug("invitation %s: session with %s refused: %s", self.inv_id.hex()[:8],
                      self.peer.hex()[:12] if self.peer else "an unproved peer", kw.get("reason"))
        self.ctx.emit(InvitationEvent(type_, self.inv_id, peer=self.peer, **kw))  # type: ignore[arg-type]

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            if self.flush_pending:
                await self._flush()

    async def _flush(self) -> None:
        """Write the record with the use once the handshake is over.

        Until then the disk is behind, safely: the log holds the use and the
        manager recounts uses from the logs at start.
        """
        self.flush_pending = False
        with trio.CancelScope(shield=True):
            try:
                await trio.to_thread.run_sync(self.ctx.store.flush, self.inv_id)
            except P2PInviteError as exc:  # memory stays right; the disk is behind, safely
                log.warning("invitation %s: could not write the record: %s",
                            self.inv_id.hex()[:8], exc)

    async def _run(self) -> None:
        try:
            try:
                events = self.host.connected(
                    _session(self.stream, self.ctx.keys.static_public))
            except RemoteProtocolError as exc:
                self.emit("refused", reason=f"bad binding proof: {exc}")
                return
            self.peer = self.host.peer_device
            self.emit("guest_connected")
            await self._drain(events)  # the challenge, without waiting for the request
            # A guest sends its request right after the accept: one that does not
            # is dropped soon, not after a whole step of holding a session.
            timeout = min(self.ctx.step_timeout, REQUEST_TIMEOUT)
            while self.host.state not in p.FINAL_STATES:
                data = await _receive(self.stream, self.host, timeout, p.MAX_GUEST_MESSAGE)
                timeout = self.ctx.step_timeout
                try:
                    events = self.host.receive_message(data)
                except RemoteProtocolError as exc:
                    log.info("invitation %s: guest broke the protocol: %s",
                             self.inv_id.hex()[:8], exc)
                    self.emit("refused", reason=f"protocol violation: {exc}")
                    await self._drain(self.host.refusal_for(exc))
                    return
                await self._drain(events)
        except _Dropped:
            self.emit("refused", reason=self.host.reason or "connection lost")
        except trio.Cancelled:
            # Revoked (or shutting down): tell the guest, uniformly, if we still can.
            if self.host.state not in p.FINAL_STATES:
                with (trio.CancelScope(shield=True), trio.move_on_after(1.0),
                      contextlib.suppress(_Dropped)):
                    await self._drain(self.host.cancel())
            raise

    async def _drain(self, events: list[p.Event]) -> None:
        queue = deque(events)
        while queue:
            if sends := _take_sends(queue):
                # Once a use is committed the guest is in the log: its ``admitted``
                # goes out even if a revoke cancels the handshake now (a revoked
                # invitation cannot be resumed). _send is bounded by its timeout.
                with trio.CancelScope(shield=self.flush_pending):
                    await _send(self.stream, self.host, sends, self.ctx.step_timeout)
                continue
            ev = queue.popleft()
            handler = self._dispatch[type(ev)]
            queue.extend(await handler(self, ev))

    # -- decisions ---------------------------------------------------------------------

    async def _on_connected(self, ev: p.Event) -> list[p.Event]:
        assert isinstance(ev, p.GuestConnected)
        ctx = self.ctx
        now = ctx.clock()
        try:
            inv = ctx.store.get(self.inv_id)
        except InvitationError as exc:
            return self._refuse(exc.reason)
        status = inv.status(now)
        if status is InvitationStatus.EXHAUSTED and self._admitted_device(inv):
            self.resume_only = True
        elif status is InvitationStatus.EXHAUSTED and inv.kind is InvitationKind.SPACE:
            # The guest's identity is only known from its admit message: go on,
            # and refuse there unless it is the identity this invitation admitted.
            self.resume_only = True
        elif not inv.is_usable(now):
            return self._refuse(status.value)
        try:
            host = self._host_info(inv)
        except (P2PInviteError, InvitationError) as exc:
            return self._refuse(getattr(exc, "reason", None) or "cannot host")
        return self.host.offer(inv.auth.value, host, password=_password(inv),
                               admission_key=inv.admission_key)

    async def _on_request(self, ev: p.Event) -> list[p.Event]:
        assert isinstance(ev, p.InvitationRequested)
        try:
            inv = self.ctx.store.get(self.inv_id)
        except InvitationError as exc:
            return self._refuse(exc.reason)
        if ev.invitation_id is not None and ev.invitation_id != inv.id:
            return self._refuse("unknown")
        if ev.kind != inv.kind.value:
            return self._refuse("kind mismatch")
        self.emit("authenticating" if inv.auth is not AuthMethod.NONE else "admitting")
        return self.host.request_accepted()

    def _host_info(self, inv: Invitation) -> p.HostInfo:
        ident = self.ctx.identity
        if ident.device_removed:  # its invitations are not served any more
            raise InvitationError("this device was removed from its identity",
                                  reason="device_removed")
        if inv.kind is InvitationKind.SPACE:
            role = self.ctx.spaces.open_space(inv.target).state.role_of(ident.identity_key)
            if role not in _ADMITTERS:
                raise InvitationError("this identity may not admit into the space",
                                      reason="not_admin")
        return p.HostInfo(ident.identity_key, self.ctx.keys.device_public,
                          tuple(ident.device_chain()))

    def _admitted_device(self, inv: Invitation) -> bool:
        if inv.kind is not InvitationKind.DEVICE or self.peer is None:
            return False
        return self._existing_device_credential(inv, self.peer) is not None

    async def _on_attempt(self, ev: p.Event) -> list[p.Event]:
        assert isinstance(ev, p.AttemptMade)
        store = self.ctx.store
        # No await from here to the count below: a proof is checked only while
        # the invitation is usable (or, resuming, still exhausted and no more),
        # and a wrong one is counted before any other guest's proof can be
        # checked, so concurrent guesses stay in the budget.
        try:
            inv = store.get(self.inv_id)
            # The last use may have gone since the offer: to this very guest, on a
            # connection that broke mid-admission (it resumed at once). As for a
            # guest arriving now, an exhausted invitation lets its guests resume.
            if (not self.resume_only
                    and inv.status(self.ctx.clock()) is InvitationStatus.EXHAUSTED
                    and (inv.kind is InvitationKind.SPACE or self._admitted_device(inv))):
                self.resume_only = True
            if self.resume_only:
                store.check_resumable(self.inv_id, self.ctx.clock())
            else:
                store.check_usable(self.inv_id, self.ctx.clock())
        except InvitationError as exc:
            return self._refuse(exc.reason)
        if isinstance(self.host.check_attempt()[0], p.AuthSucceeded):
            return []  # nothing was counted, nothing to write
        # Counted on an exhausted invitation too: its admitted guest may resume
        # with the right proof, but a wrong one costs an attempt like any other,
        # or the PIN would have an oracle without limit for ten minutes.
        left = store.count_failed_attempt(self.inv_id, self.ctx.clock())
        try:
            # Not cancellable: the answer below waits for the disk, and so
            # does a revocation's uniform refusal.
            await trio.to_thread.run_sync(store.flush, self.inv_id)
        except P2PInviteError as exc:
            # No answer. The count binds in memory (the record stays dirty,
            # so the record's next write retries it); only a restart while
            # the disk fails could forget it -- and a silent close after a
            # tag is all the guest learns.
            log.warning("invitation %s: could not write a failed attempt: %s",
                        self.inv_id.hex()[:8], exc)
            self.emit("refused", reason="could not record the attempt")
            return self.host.fail("could not record the failed attempt")
        self.emit("locked" if left == 0 else "failed_attempt",
                  reason=self.host.reason, attempts_left=left)
        return self.host.attempt_counted(left)

    async def _on_admission(self, ev: p.Event) -> list[p.Event]:
        assert isinstance(ev, p.AdmissionRequested)
        ctx = self.ctx
        try:
            inv = ctx.store.get(self.inv_id)
        except InvitationError as exc:
            return self._refuse(exc.reason)
        # The same guest may still be in its admission on a connection that broke
        # (it resumed at once): until that append is durable and its use counted,
        # the guest would look "already a member" or the use "reserved". Wait.
        guest = ev.device if inv.kind is InvitationKind.DEVICE else ev.identity
        in_flight = ctx.admitting.get((inv.id, guest or b""))
        if in_flight is not None:
            await in_flight.wait()
        try:
            if inv.kind is InvitationKind.DEVICE:
                credential, entries, resumed = await self._admit_device(inv, ev)
            else:
                credential, entries, resumed = await self._admit_member(inv, ev)
        except InvitationError as exc:
            return self._refuse(exc.reason)
        except CredentialError as exc:
            return self._refuse(exc.rule)
        self.emit("admitted", reason="resumed" if resumed else None)
        member = inv.target if inv.kind is InvitationKind.DEVICE else ev.identity
        if ctx.on_admitted is not None and member is not None:
            ctx.on_admitted(inv.target, ev.device, self.stream.remote_static, member)
        return self.host.admit(credential, entries, self._swarm_grant(inv))

    def _swarm_grant(self, inv: Invitation) -> p.SwarmGrant:
        """The log's swarm secret sealed to the guest's device (its Noise static key)."""
        secrets = self.ctx.secrets
        # A log made outside the daemon (tests, older homes) gets its first secret now.
        secret = secrets.get(inv.target) or secrets.create(inv.target)
        return p.SwarmGrant(secret.epoch, seal_for_device(secret, self.stream.remote_static))

    def _existing_device_credential(self, inv: Invitation, device: bytes) -> bytes | None:
        ident = self.ctx.identity
        dev = ident.state.device(device)
        if dev is None or dev.invitation != inv.id or not ident.log.has(dev.entry):
            return None
        return ident.log.get(dev.entry)

    def _existing_member_credential(self, inv: Invitation, identity: bytes) -> bytes | None:
        space = self.ctx.spaces.open_space(inv.target)
        m = space.state.member(identity)
        if (m is None or m.role is Role.REMOVED or m.invitation != inv.id
                or not space.log.has(m.entry)):
            return None
        return space.log.get(m.entry)

    async def _admit_device(self, inv: Invitation, ev: p.AdmissionRequested
                            ) -> tuple[bytes, list[bytes], bool]:
        ident = self.ctx.identity
        existing = self._existing_device_credential(inv, ev.device)
        if existing is not None:
            return existing, ident.raw_entries(), True
        if ident.state.is_device(ev.device):
            raise InvitationError("device already belongs to this identity",
                                  reason=p.REASON_ALREADY_MEMBER)
        if self.resume_only:
            raise InvitationError("invitation exhausted", reason="exhausted")

        async def issue() -> bytes:
            return (await ident.authorize_device(ev.device, invitation=inv.id)).credential

        credential = await self._with_use(inv, ev.device, issue)
        return credential, ident.raw_entries(), False

    async def _admit_member(self, inv: Invitation, ev: p.AdmissionRequested
                            ) -> tuple[bytes, list[bytes], bool]:
        assert ev.identity is not None
        ctx = self.ctx
        verify_device_chain(ctx.identity.verifier, ev.identity, ev.device, ev.chain)
        space = ctx.spaces.open_space(inv.target)
        existing = self._existing_member_credential(inv, ev.identity)
        if existing is not None:
            return existing, space.raw_entries(), True
        if space.state.is_member(ev.identity):
            raise InvitationError("identity is already a member",
                                  reason=p.REASON_ALREADY_MEMBER)
        if self.resume_only:
            raise InvitationError("invitation exhausted", reason="exhausted")
        assert inv.role is not None
        role = Role(inv.role.upper())
        identity = ev.identity

        async def issue() -> bytes:
            issued = await ctx.spaces.admit(inv.target, identity, role, ev.name,
                                            invitation_id=inv.id)
            return issued.credential

        credential = await self._with_use(inv, identity, issue)
        return credential, space.raw_entries(), False

    async def _with_use(self, inv: Invitation, accepted_by: bytes,
                        issue: Callable[[], Awaitable[bytes]]) -> bytes:
        """Reserve a use, issue (append + fsync) shielded so it completes, commit in memory.

        The record reaches the disk after ``admitted`` was sent (:meth:`_flush`).
        """
        store = self.ctx.store
        reservation: Reservation = store.reserve_use(inv.id, self.ctx.clock())
        key, done = (inv.id, accepted_by), trio.Event()
        self.ctx.admitting[key] = done
        try:
            with trio.CancelScope(shield=True):
                credential = await issue()
            store.commit_use(reservation, accepted_by, self.ctx.clock(), durable=False)
            self.flush_pending = True
        finally:
            store.release(reservation)
            if self.ctx.admitting.get(key) is done:
                del self.ctx.admitting[key]
            done.set()
        return credential

    def _refuse(self, reason: str) -> list[p.Event]:
        self.emit("refused", reason=reason)
        return self.host.refuse(reason)

    _dispatch: Final = {
        p.GuestConnected: _on_connected,
        p.InvitationRequested: _on_request,
        p.AttemptMade: _on_attempt,
        p.AdmissionRequested: _on_admission,
    }


#: Handshakes one short-code invitation serves at once. Its channel has no PSK,
#: so anyone on the LAN can finish Noise and then idle; the small cap keeps that
#: crowd from taking the network manager's session slots of every other
#: invitation (honest guests type one code at a time). Link codes need no cap
#: of their own: their PSK keeps strangers out, and the network manager caps
#: sessions in all and per source address.
MAX_SESSIONS_SHORT: Final = 16


def _over_cap(ctx: HostContext, invitation_id: bytes, running: int) -> bool:
    try:
        inv = ctx.store.get(invitation_id)
    except InvitationError:
        return False  # unknown now: the driver refuses it uniformly
    return inv.auth is AuthMethod.SHORT and running >= MAX_SESSIONS_SHORT


#: How long a host waits for the guest to hang up after its last message.
LINGER: Final = 2.0


async def _linger(stream: SecureStream) -> None:
    """End our side, then drop what the guest still sends until it hangs up.

    A guest pipelines messages (its CPace share right after its request, an
    admission request right after its key proof), so a refusal may find more
    of its input unread. Closing a TCP socket with unread input makes the
    kernel answer with a reset, which can destroy the refusal before the
    guest read it; waiting for the guest's end of stream (a guest hangs up
    once it read the refusal) lets the refusal arrive.
    """
    with trio.move_on_after(LINGER):
        try:
            await stream.send_eof()
            while await stream.transport.receive_some(65536):
                pass
        except (P2PInviteError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # already gone: nothing left to protect


async def serve_guest(stream: SecureStream, ctx: HostContext, invitation_id: bytes) -> None:
    """Serve one guest that connected on the topic of *invitation_id*.

    Registered by the manager as the topic's handler; returns when the
    handshake ends (the network manager closes the stream). Never raises for
    anything the guest does.
    """
    running = ctx.active.setdefault(invitation_id, set())
    if _over_cap(ctx, invitation_id, len(running)):
        log.warning("invitation busy: connection dropped",
                     extra={"invitation": invitation_id.hex()[:8], "sessions": len(running)})
        return  # the network manager closes the stream; nothing was said or counted
    scope = trio.CancelScope()
    running.add(scope)
    try:
        with scope:
            driver = _HostDriver(ctx, stream, invitation_id, scope)
            await driver.run()
            if driver.host.state is not p.State.SUCCESS:
                await _linger(stream)
    finally:
        scopes = ctx.active.get(invitation_id)
        if scopes is not None:
            scopes.discard(scope)
            if not scopes:
                del ctx.active[invitation_id]


# --------------------------------------------------------------------------
# Guest
# --------------------------------------------------------------------------


class _Prepared:
    """The install directory, made durable in a worker thread while the handshake runs.

    Started with ``trio.lowlevel.start_thread_soon`` because the guest driver
    is an async generator, which must not hold a nursery across its yields.
    A failed preparation only costs the install the mkdir and fsync it would
    have made anyway, so it is logged, never raised.
    """

    def __init__(self, prepare: Callable[[], None], discard: Callable[[], None]) -> None:
        self._discard = discard
        self._done = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def work() -> None:
            try:
                prepare()
            except (P2PInviteError, OSError) as exc:
                log.debug("could not prepare the install directory: %s", exc)

        def deliver(_: object) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._done.set)

        trio.lowlevel.start_thread_soon(work, deliver)

    async def wait(self) -> None:
        """Until the preparation has ended (a worker thread is not cancellable)."""
        await self._done.wait()

    async def discard(self) -> None:
        """The accept ended without an install: remove the directory if it stayed empty."""
        with trio.CancelScope(shield=True):
            await self._done.wait()
            await trio.to_thread.run_sync(self._discard)


@dataclass(frozen=True, slots=True)
class GuestPlan:
    """Everything the guest driver needs, decided from the code before connecting.

    ``target``: the identity (device kind) or space (space kind) the code
    names, ``None`` for short codes. ``host_device``: the device key a link
    code names. ``hints``: addresses from the link code. ``mailbox``: the
    rendezvous mailbox a link code names, and ``secret`` the code's secret the
    names there derive from (:mod:`.meeting`); ``None`` for LAN-only codes.
    """

    kind: InvitationKind
    method: AuthMethod
    topic: Topic
    invitation_id: bytes | None = None
    target: bytes | None = None
    host_device: bytes | None = None
    hints: tuple[tuple[str, int], ...] = ()
    password: bytes | None = field(default=None, repr=False)
    admission_key: Signer | None = field(default=None, repr=False)
    name: str = ""
    mailbox: str | None = None
    secret: bytes | None = field(default=None, repr=False)


#: A guest whose connection to the host dropped mid-session dials it again
#: (and resumes where the host got to) at most this many times per join.
MAX_RESUMES: Final = 3
#: Short codes name no host: once every host found with the code's
#: discriminator has answered, the guest waits this long (seconds) for another
#: before it reports the answers.
SHORT_CODE_SETTLE: Final = 1.0
# Guest progress, in order: a join reports a state only when it is further on.
_PROGRESS: Final = {p.State.INIT: 0, p.State.CONNECTING: 1, p.State.CONNECTED: 2,
                    p.State.READY_FOR_AUTHENTICATION: 3, p.State.AUTHENTICATING: 4,
                    p.State.ADMITTING: 5}


def _answer_rank(ev: AcceptEvent) -> int:
    """How telling a failed candidate's answer is (short codes: the best one is reported)."""
    if ev.attempts_left is not None:
        return 4  # a wrong code: the host that holds this discriminator's invitation
    if ev.reason == p.REASON_ALREADY_MEMBER:
        return 3
    if ev.reason == "connection lost" or ev.state is p.State.TIMEOUT:
        return 0
    return 2 if ev.reason == UNIFORM_REFUSAL else 1


def _peer_address(stream: SecureStream) -> tuple[str, int] | None:
    """The host's (IP, port) as we dialed it, if the transport is a socket."""
    try:
        host, port = stream.transport.socket.getpeername()[:2]  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None
    return str(host), int(port)


@dataclass(eq=False)
class _Attempt:
    """One session of a join: its machine and the host identity its challenge proved."""

    guest: p.GuestProtocol
    host_addr: tuple[str, int] | None = None
    host_identity: bytes | None = None
    host_device: bytes | None = None
    host_static: bytes | None = None


class _GuestDriver:
    """One join: dial the host, run a session per host found, decide the answer.

    Hosts come from :meth:`NetworkManager.dial`, one connection per host at a
    time; a host whose handshake payload is not the code's device (link
    codes) is dropped there, before the handshake completes. Each connection
    runs its own :class:`~.protocol.GuestProtocol` in its own task:

    * success ends the join (the others are cancelled);
    * a connection that *breaks* mid-session (a reset, a crash: no
      authenticated end of stream) is dialed again and the session starts
      over: the host resumes where it got to (it finds our credential after
      its fsync), at most :data:`MAX_RESUMES` times. A host that ends the
      stream on purpose without answering (it could not record a wrong
      guess) or goes silent past a step's timeout is an answer, not a drop:
      dialing again would only spend another attempt;
    * link codes: the code names the host, so its answer (a refusal, a wrong
      PIN, an admission that does not verify) is the join's answer;
    * short codes name only a discriminator, which another host (or an
      impostor) may advertise too: every host found gets its own session
      (each is one online guess against that host only: the right host's
      attempts are never spent by a wrong one) and a host's failure only
      drops that host. When every host found has answered and no other turns
      up for :data:`SHORT_CODE_SETTLE`, the most telling answer is reported
      (a wrong code with the attempts left, before a uniform refusal).

    No host at all within ``connect_timeout`` is "host unreachable".
    """

    def __init__(self, plan: GuestPlan, identity: IdentityService, spaces: SpaceService,
                 secrets: SwarmSecrets, network: NetworkManager, *, mdns: bool,
                 step_timeout: float, connect_timeout: float,
                 report: Callable[[AcceptEvent], None]) -> None:
        self.plan = plan
        self.identity = identity
        self.spaces = spaces
        self.secrets = secrets
        self.network = network
        self.mdns = mdns
        self.step_timeout = step_timeout
        self.connect_timeout = connect_timeout
        self._report = report
        ident_key = identity.identity_key if plan.kind is InvitationKind.SPACE else None
        chain = tuple(identity.device_chain()) if ident_key is not None else ()
        self._request = p.GuestRequest(
            kind=plan.kind.value,
            method=plan.method.value,
            device=identity.device.device_public, invitation_id=plan.invitation_id,
            host_device=plan.host_device, password=plan.password,
            admission_key=plan.admission_key, identity=ident_key, chain=chain,
            name=plan.name)
        # The code names its host, so that host's answer is the join's answer.
        self._authoritative = plan.host_device is not None
        self.result: AcceptResult | None = None
        self.prepared: _Prepared | None = None
        self._progress = 0
        self._final: AcceptEvent | None = None
        self._done = trio.Event()
        self._wake = trio.Event()
        self._running = 0
        self._idle_since = 0.0
        self._answers: list[AcceptEvent] = []
        self._resumes: dict[bytes, int] = {}
        # The device key each host proved in its handshake (by Noise static key).
        self._host_devices: dict[bytes, bytes] = {}
        # Why the rendezvous mailbox failed, if it did (for the final error).
        self._meeting_error: str | None = None
        self._install_lock = trio.Lock()

    # -- reporting ---------------------------------------------------------------------

    def _advance(self, state: p.State) -> None:
        rank = _PROGRESS.get(state)
        if rank is not None and rank > self._progress:
            self._progress = rank
            self._report(AcceptEvent(state))

    @staticmethod
    def _event_of(guest: p.GuestProtocol, result: AcceptResult | None = None) -> AcceptEvent:
        refused = guest.refused
        ok = guest.state is p.State.SUCCESS
        return AcceptEvent(guest.state, reason=None if ok else guest.reason,
                           attempts_left=refused.attempts_left if refused else None,
                           result=result)

    def _finish(self, event: AcceptEvent) -> None:
        if self._final is None:
            self._final = event
            self._done.set()

    def _poke(self) -> None:
        self._wake.set()
        self._wake = trio.Event()

    # -- the join ----------------------------------------------------------------------

    def _prepare(self) -> _Prepared | None:
        plan = self.plan
        if plan.kind is InvitationKind.DEVICE:
            return _Prepared(self.identity.prepare_join, self.identity.discard_prepared_join)
        target = plan.target
        if target is None:  # a short code: the space is known only once admitted
            return None
        return _Prepared(lambda: self.spaces.prepare_import(target),
                         lambda: self.spaces.discard_prepared(target))

    async def run(self) -> AcceptEvent:
        """Run the join to its final event (reported too); progress is reported on the way."""
        self._advance(p.State.CONNECTING)
        self.prepared = self._prepare()
        try:
            final = await self._join()
        finally:
            if self.result is None and self.prepared is not None:
                await self.prepared.discard()
        self._report(final)
        return final

    def _check_peer(self, remote_static: bytes, payload: bytes) -> None:
        # Runs after Noise message 2: a host that cannot prove the device key
        # the code names is abandoned before the handshake completes.
        device = verify_binding_proof(payload, remote_static)
        want = self.plan.host_device
        if want is not None and device != want:
            raise HandshakeError("not the device the code names")
        self._host_devices[remote_static] = device

    async def _join(self) -> AcceptEvent:
        plan = self.plan
        self._idle_since = trio.current_time()
        meet = plan.mailbox is not None and plan.secret is not None
        try:
            async with (self.network.dial(plan.topic, hints=plan.hints, mdns=self.mdns,
                                          check_peer=self._check_peer,
                                          more_paths=meet) as found,
                        trio.open_nursery() as nursery):
                nursery.start_soon(self._take, found, nursery)
                nursery.start_soon(self._watch, found)
                if plan.mailbox is not None and plan.secret is not None:
                    nursery.start_soon(functools.partial(
                        meet_host, plan.mailbox, plan.secret, found,
                        lambda: self._running > 0 or self._final is not None,
                        label=plan.topic.short_id, failed=self._meeting_failed))
                await self._done.wait()
                nursery.cancel_scope.cancel()
        except ConnectionClosed as exc:  # nothing to dial: no hints and mDNS off
            return AcceptEvent(p.State.ERROR, reason=f"host unreachable: {exc.reason}")
        assert self._final is not None
        return self._final

    def _meeting_failed(self, why: str) -> None:
        """The mailbox failed: if nothing else can lead to the host, say so now.

        Otherwise the LAN paths go on, and the join's error, if it comes to
        one, names the mailbox too (a dial's error would hide it).
        """
        self._meeting_error = why
        if not self.plan.hints and not self.mdns and self._running == 0:
            self._finish(AcceptEvent(p.State.ERROR, reason=f"host unreachable: {why}"))

    async def _take(self, found: Candidates, nursery: trio.Nursery) -> None:
        while True:
            stream = await found.next()
            self._running += 1
            self._poke()
            nursery.start_soon(self._session, found, stream)

    async def _watch(self, found: Candidates) -> None:
        """End the join when nobody answers: no host within the connect timeout, or
        (short codes) no further host after every one found has answered."""
        while True:
            if self._running:
                await self._wake.wait()
                continue
            quiet = SHORT_CODE_SETTLE if self._answers else self.connect_timeout
            due = self._idle_since + quiet
            now = trio.current_time()
            if now >= due and found.pending == 0:
                if self._answers:
                    self._finish(max(self._answers, key=_answer_rank))
                else:
                    errors = [e for e in (found.last_error, self._meeting_error) if e]
                    why = f" (last error: {'; '.join(dict.fromkeys(errors))})" if errors else ""
                    self._finish(AcceptEvent(p.State.ERROR, reason=(
                        f"host unreachable: no peer for topic {self.plan.topic.short_id}"
                        f" answered within {self.connect_timeout:g} s{why}")))
                return
            with trio.move_on_after(max(due - now, 0.1)):
                await self._wake.wait()

    async def _session(self, found: Candidates, stream: SecureStream) -> None:
        peer = stream.remote_static
        guest = p.GuestProtocol(self._request)
        guest.connecting()
        broken = False
        try:
            broken = await self._converse(_Attempt(
                guest, _peer_address(stream), host_device=self._host_devices.get(peer),
                host_static=peer), stream)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2.0):
                await stream.aclose()
            self._running -= 1
            self._idle_since = trio.current_time()
            self._poke()
        event = self._event_of(guest, self.result)
        if event.ok:
            self._finish(event)
            return
        if broken and self._resumes.get(peer, 0) < MAX_RESUMES:
            self._resumes[peer] = self._resumes.get(peer, 0) + 1
            log.debug("join %s: connection to the host dropped; dialing it again",
                      self.plan.topic.short_id)
            found.release(peer, again=True)
        elif self._authoritative:
            self._finish(event)
        else:
            log.debug("join %s: a host answered %s; looking for others",
                      self.plan.topic.short_id, event.reason)
            found.reject(peer)
            self._answers.append(event)

    async def _converse(self, attempt: _Attempt, stream: SecureStream) -> bool:
        """Run one session to a final state; True if it ended because the connection broke."""
        guest = attempt.guest
        try:
            events = guest.connected(_session(stream, self.identity.device.static_public))
        except RemoteProtocolError:
            return False
        self._advance(guest.state)
        try:
            queue = deque(events)
            while guest.state not in p.FINAL_STATES:
                while queue:
                    if sends := _take_sends(queue):
                        await _send(stream, guest, sends, self.step_timeout)
                    else:
                        queue.extend(await self._decide(attempt, queue.popleft()))
                    self._advance(guest.state)
                if guest.state in p.FINAL_STATES:
                    break
                data = await _receive(stream, guest, self.step_timeout, p.MAX_CHUNK_BYTES)
                with contextlib.suppress(RemoteProtocolError):  # the machine is in ERROR
                    queue.extend(guest.receive_message(data))
                self._advance(guest.state)
        except _Dropped as exc:
            return exc.broken
        return False

    async def _decide(self, attempt: _Attempt, ev: p.Event) -> list[p.Event]:
        guest = attempt.guest
        if isinstance(ev, p.HostChallenged):
            try:
                self._check_host(ev.host)
            except CredentialError as exc:
                return guest.fail(f"host is not authorized: {exc}")
            attempt.host_identity = ev.host.identity
            return guest.host_verified()
        if isinstance(ev, p.AdmissionReceived):
            async with self._install_lock:  # one admission is installed, whoever sent it
                if self.result is not None:
                    return guest.fail("already admitted through another host")
                try:
                    self.result = await self._install(ev, attempt)
                except (P2PInviteError, OSError) as exc:
                    return guest.fail(f"admission did not verify: {exc}")
            return guest.admission_verified()
        return []  # Authenticated, Refused: reported through the state

    def _check_host(self, host: p.HostInfo) -> None:
        plan = self.plan
        verify_device_chain(self.identity.verifier, host.identity, host.device, host.chain)
        if (plan.kind is InvitationKind.DEVICE and plan.target is not None
                and host.identity != plan.target):
            raise CredentialError("host speaks for another identity than the code names",
                                  rule="wrong_identity")

    async def _install(self, ev: p.AdmissionReceived, attempt: _Attempt) -> AcceptResult:
        plan = self.plan
        host_identity = attempt.host_identity
        if self.prepared is not None:
            await self.prepared.wait()
        try:
            cred = decode_credential(ev.credential)
        except MalformedCredential as exc:
            raise CredentialError(f"credential: {exc}", rule="malformed") from None
        if ev.credential not in ev.entries:
            raise CredentialError("our credential is not in the log", rule="not_admitted")
        if cred.issuer != host_identity:
            raise CredentialError("credential not issued by the host's identity",
                                  rule="wrong_issuer")
        a = cred.assertion
        me = self.identity.device.device_public
        if plan.kind is InvitationKind.DEVICE:
            if not isinstance(a, AuthorizedDevice) or cred.subject != me:
                raise CredentialError("credential does not authorize this device",
                                      rule="not_admitted")
            if plan.invitation_id is not None and a.invitation != plan.invitation_id:
                raise CredentialError("credential is for another invitation",
                                      rule="wrong_invitation")
            swarm = self._open_grant(cred.issuer, ev.swarm)
            await self._keep_secret(swarm)
            target = await trio.to_thread.run_sync(
                self.identity.join_identity_from_entries, list(ev.entries))
        else:
            if not isinstance(a, SpaceMember) or cred.subject != self.identity.identity_key:
                raise CredentialError("credential does not admit our identity",
                                      rule="not_admitted")
            if plan.target is not None and a.space != plan.target:
                raise CredentialError("credential is for another space", rule="wrong_space")
            swarm = self._open_grant(a.space, ev.swarm)
            await self._keep_secret(swarm)
            target = await trio.to_thread.run_sync(
                lambda: self.spaces.import_space(list(ev.entries), expected=plan.target))
        return AcceptResult(plan.kind, target, ev.credential, host_addr=attempt.host_addr,
                            host_device=attempt.host_device, host_static=attempt.host_static,
                            host_identity=attempt.host_identity)

    async def _keep_secret(self, secret: SwarmSecret) -> None:
        """Store the log's swarm secret durably, *before* the log itself.

        In this order a crash between the two leaves a secret without a log
        (ignored; the same secret is kept again on a retry), never a log without
        its secret: the daemon would make up a secret of its own for such a log
        at its next start and sit alone on a topic no other member uses.
        """
        await trio.to_thread.run_sync(self.secrets.install, secret)

    def _open_grant(self, log: bytes, grant: p.SwarmGrant) -> SwarmSecret:
        """The log's swarm secret, opened before anything is installed (CredentialError)."""
        try:
            return open_handover(self.identity.device.static_private, log, grant.epoch,
                                 grant.box)
        except (CryptoError, DecodeError):
            raise CredentialError("the swarm secret is not sealed to this device",
                                  rule="bad_swarm_secret") from None


async def run_guest(plan: GuestPlan, identity: IdentityService, spaces: SpaceService,
                    secrets: SwarmSecrets, network: NetworkManager, *, mdns: bool,
                    report: Callable[[AcceptEvent], None],
                    step_timeout: float = DEFAULT_STEP_TIMEOUT,
                    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> AcceptEvent:
    """Accept an invitation as the guest; *report* gets an :class:`AcceptEvent` per state.

    Returns the final event (also reported): SUCCESS with ``result``, or a
    failure with its reason. Never raises for what the host or the network
    does; cancelling it abandons the join (nothing is installed).
    """
    driver = _GuestDriver(plan, identity, spaces, secrets, network, mdns=mdns,
                          step_timeout=step_timeout, connect_timeout=connect_timeout,
                          report=report)
    return await driver.run()
