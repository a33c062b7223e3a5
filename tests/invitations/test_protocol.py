"""The sans-IO invitation machines, driven synchronously against each other.

No sockets and no trio: a :class:`Run` plays both drivers with recording
dummies (the "store" and the "log" are lists), and the tests assert the exact
sequence of events and side effects.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite.errors import (
    UNIFORM_REFUSAL,
    DecodeError,
    HandshakeError,
    LocalProtocolError,
    RemoteProtocolError,
)
from p2pinvite.halo.keys import DeviceKeys, SigningKey
from p2pinvite.invitations import protocol as p
from p2pinvite.invitations.protocol import (
    AdmissionReceived,
    AdmissionRequested,
    AdmitMsg,
    AdmittedMsg,
    AttemptMade,
    AuthFailed,
    AuthSucceeded,
    ChallengeMsg,
    ConfirmMsg,
    GuestConnected,
    GuestProtocol,
    GuestRequest,
    HostChallenged,
    HostInfo,
    HostProtocol,
    InvitationRequested,
    KeyProofMsg,
    PakeMsg,
    ProtocolViolation,
    Refused,
    RefusedMsg,
    RequestMsg,
    SendMessage,
    Session,
    State,
    decode_message,
    encode_message,
)

PIN = b"493817"
INV = bytes(range(16))

#: A swarm grant as a host sends one (the box is opaque to the machines).
GRANT = p.SwarmGrant(1, bytes(range(p.SWARM_BOX)))


HOST_KEYS = DeviceKeys.generate()
GUEST_KEYS = DeviceKeys.generate()
HOST_IDENTITY = SigningKey.generate().public_key
HOST_INFO = HostInfo(HOST_IDENTITY, HOST_KEYS.device_public, (b"chain-credential",))


def sessions(hh: bytes | None = None, host: DeviceKeys = HOST_KEYS,
             guest: DeviceKeys = GUEST_KEYS) -> tuple[Session, Session]:
    """The (guest, host) view of one Noise session."""
    hh = hh or os.urandom(64)
    g = Session(hh, guest.static_public, host.static_public, host.binding_proof())
    h = Session(hh, host.static_public, guest.static_public, guest.binding_proof())
    return g, h


def sends(events: list[p.Event]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, SendMessage)]


def kinds(events: list[p.Event]) -> list[str]:
    """Event names, with the type of each sent message: a readable exact trace."""
    return [f"Send({e.message.T})" if isinstance(e, SendMessage) else type(e).__name__
            for e in events]


def one(events: list[p.Event]) -> bytes:
    (data,) = sends(events)
    return data


def first(events: list[p.Event]) -> bytes:
    """The first message sent: the request, when the guest pipelined its CPace share."""
    return sends(events)[0]


class Run:
    """Both drivers, with a recording store (attempt counter) and log."""

    def __init__(self, *, method: p.Method = "pin", kind: p.Kind = "device",
                 guest_password: bytes | None = PIN, host_password: bytes | None = PIN,
                 max_attempts: int = 3, failed: int = 0) -> None:
        self.admission = SigningKey.generate()
        identity = SigningKey.generate().public_key if kind == "space" else None
        self.request = GuestRequest(
            kind=kind, method=method, device=GUEST_KEYS.device_public, invitation_id=INV,
            host_device=HOST_KEYS.device_public,
            password=guest_password if method in ("pin", "short") else None,
            admission_key=self.admission if method == "key" else None,
            identity=identity, chain=(b"guest-chain",) if identity else (), name="Bob")
        self.guest = GuestProtocol(self.request)
        self.host = HostProtocol()
        self.method = method
        self.host_password = host_password
        self.max_attempts = max_attempts
        self.failed = failed
        self.effects: list[str] = []
        self.trace: list[tuple[str, list[str]]] = []
        self.gs, self.hs = sessions()

    def g(self, events: list[p.Event]) -> list[p.Event]:
        self.trace.append(("guest", kinds(events)))
        return events

    def h(self, events: list[p.Event]) -> list[p.Event]:
        self.trace.append(("host", kinds(events)))
        return events

    def run(self) -> None:
        """Play the whole handshake, answering every decision like a real driver."""
        self.g(self.guest.connecting())
        request, *early = sends(self.g(self.guest.connected(self.gs)))
        assert self.h(self.host.connected(self.hs)) == [GuestConnected()]
        self.effects.append("store.lookup")
        # The host challenges at once; the guest's request and share cross it.
        challenge, *host_early = sends(self.h(self.host.offer(
            self.method, HOST_INFO, password=self.host_password,
            admission_key=self.admission.public_key)))
        ev = self.h(self.host.receive_message(request))
        assert ev == [InvitationRequested(INV, self.request.kind)]
        self.effects.append("host.check_request")
        self.h(self.host.request_accepted())
        for data in early:  # the guest's share: read, nothing to answer
            assert self.h(self.host.receive_message(data)) == []
        ev = self.g(self.guest.receive_message(challenge))
        assert ev == [HostChallenged(self.method, HOST_INFO)]
        self.effects.append("guest.verify_chain")
        pending = sends(self.g(self.guest.host_verified()))
        for data in host_early:
            pending += self._to_guest(data)
        while pending and self.host.state not in p.FINAL_STATES:
            data = pending.pop(0)
            for e in self.h(self.host.receive_message(data)):
                pending.extend(self._host_event(e))
            if self.guest.state in p.FINAL_STATES:
                break

    def _host_event(self, e: p.Event) -> list[bytes]:
        if isinstance(e, SendMessage):
            return self._to_guest(e.data)
        if isinstance(e, AttemptMade):
            self.effects.append("store.check_usable")
            out = self.h(self.host.check_attempt())
            if out == [AuthSucceeded()]:
                return []  # nothing counted, nothing written
            assert out == [AuthFailed()]
            self.failed += 1
            left = self.max_attempts - self.failed
            self.effects.append(f"store.count+flush -> {left} left")
            refusal = self.h(self.host.attempt_counted(left))
            return [x for data in sends(refusal) for x in self._to_guest(data)]
        if isinstance(e, AdmissionRequested):
            self.effects += ["store.reserve_use", "log.append+fsync", "store.commit_use"]
            out = self.h(self.host.admit(b"credential", [b"genesis", b"credential"], GRANT))
            return [x for data in sends(out) for x in self._to_guest(data)]
        raise AssertionError(e)

    def _to_guest(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        for e in self.g(self.guest.receive_message(data)):
            if isinstance(e, SendMessage):
                out.append(e.data)
            elif isinstance(e, AdmissionReceived):
                self.effects.append("guest.import_log")
                self.g(self.guest.admission_verified())
            elif isinstance(e, Refused):
                self.effects.append(f"guest refused: {e.reason} {e.attempts_left}")
        return out


def test_pin_run_exact_trace() -> None:
    r = Run(method="pin")
    r.run()
    assert r.trace == [
        ("guest", []),
        ("guest", ["Send(request)", "Send(pake)"]),  # the CPace share is pipelined
        ("host", ["GuestConnected"]),
        # The host does not wait for the request: challenge and share at once.
        ("host", ["Send(challenge)", "Send(pake)"]),
        ("host", ["InvitationRequested"]),
        ("host", []),
        ("host", []),
        ("guest", ["HostChallenged"]),
        ("guest", []),
        # Our tag, and the admit sealed under the ISK right behind it.
        ("guest", ["Send(confirm)", "Send(admit_sealed)"]),
        ("host", ["AttemptMade"]),
        ("host", ["AuthSucceeded"]),
        ("host", ["AdmissionRequested"]),
        # The host's tag travels with the admission.
        ("host", ["Send(confirm)", "Send(admitted)"]),
        ("guest", ["Authenticated"]),
        ("guest", ["AdmissionReceived"]),
        ("guest", []),
    ]
    assert r.effects == [
        "store.lookup", "host.check_request", "guest.verify_chain", "store.check_usable",
        "store.reserve_use", "log.append+fsync", "store.commit_use", "guest.import_log",
    ]
    assert r.host.state is State.SUCCESS
    assert r.guest.state is State.SUCCESS
    assert r.failed == 0
    assert r.host.peer_device == GUEST_KEYS.device_public
    assert r.guest.peer_device == HOST_KEYS.device_public


def test_short_method_uses_pake_too() -> None:
    r = Run(method="short", guest_password=b"90125", host_password=b"90125")
    r.run()
    assert r.guest.state is State.SUCCESS
    assert ("guest", ["Send(confirm)", "Send(admit_sealed)"]) in r.trace
    assert ("guest", ["Authenticated"]) in r.trace


def test_none_run_exact_trace() -> None:
    r = Run(method="none")
    r.run()
    assert r.trace[6:] == [
        ("guest", ["HostChallenged"]),
        ("guest", ["Send(admit)"]),
        ("host", ["AdmissionRequested"]),
        ("host", ["Send(admitted)"]),
        ("guest", ["AdmissionReceived"]),
        ("guest", []),
    ]
    assert "store.check_usable" not in r.effects
    assert r.host.state is r.guest.state is State.SUCCESS


def test_key_run_pipelines_proof_and_admit() -> None:
    r = Run(method="key", kind="space")
    r.run()
    assert r.trace[6:] == [
        ("guest", ["HostChallenged"]),
        ("guest", ["Send(key_proof)", "Send(admit)"]),
        ("host", ["AttemptMade"]),
        ("host", ["AuthSucceeded"]),
        ("host", ["AdmissionRequested"]),
        ("host", ["Send(admitted)"]),
        ("guest", ["AdmissionReceived"]),
        ("guest", []),
    ]
    assert r.effects[3:5] == ["store.check_usable", "store.reserve_use"]  # no count, no write
    assert r.host.state is r.guest.state is State.SUCCESS


def open_run(r: Run, method: p.Method, **offer: bytes) -> tuple[list[bytes], list[bytes]]:
    """Both sides through their first, crossing messages; the host accepted the request.

    Returns what the guest sent after its request (its CPace share, if any)
    and what the host sent (its challenge, then its share, if any); neither
    side has read the other's share or the challenge yet.
    """
    r.host.connected(r.hs)
    from_host = sends(r.host.offer(method, HOST_INFO, **offer))
    request, *from_guest = sends(r.guest.connected(r.gs))
    assert r.host.receive_message(request) == [InvitationRequested(INV, r.request.kind)]
    assert r.host.request_accepted() == []
    return from_guest, from_host


def test_space_admission_carries_identity_and_chain() -> None:
    r = Run(method="none", kind="space")
    r.g(r.guest.connecting())
    _, (challenge,) = open_run(r, "none")
    r.guest.receive_message(challenge)
    admit = one(r.guest.host_verified())
    ev = r.host.receive_message(admit)
    assert ev == [AdmissionRequested(GUEST_KEYS.device_public, r.request.identity,
                                     (b"guest-chain",), "Bob")]


def test_wrong_key_is_a_counted_failed_attempt() -> None:
    r = Run(method="key")
    r.request = GuestRequest(**{**{f: getattr(r.request, f) for f in r.request.__slots__},
                                "admission_key": SigningKey.generate()})
    r.guest = GuestProtocol(r.request)
    r.run()
    assert r.effects[-2:] == ["store.count+flush -> 2 left", "guest refused: wrong_key 2"]
    assert r.host.state is State.ERROR
    assert r.guest.state is State.ERROR
    assert r.failed == 1


def test_wrong_pin_exact_trace_and_attempts() -> None:
    r = Run(guest_password=b"000000")
    r.run()
    assert r.trace[10:] == [
        ("host", ["AttemptMade"]),
        # Nothing goes out until the driver says the failure is on disk.
        ("host", ["AuthFailed"]),
        ("host", ["Send(refused)"]),
        ("guest", ["Refused"]),
    ]
    assert r.effects[-2:] == ["store.count+flush -> 2 left", "guest refused: wrong_pin 2"]
    assert r.failed == 1
    assert r.host.state is State.ERROR
    assert r.host.reason == "wrong_pin"
    assert r.guest.state is State.ERROR
    assert r.guest.refused == Refused("wrong_pin", 2)


def test_last_wrong_pin_locks_both_sides() -> None:
    r = Run(guest_password=b"000000", failed=2)
    r.run()
    assert r.host.state is State.LOCKED
    assert r.guest.state is State.LOCKED
    assert r.guest.refused == Refused("wrong_pin", 0)


def test_host_refusal_is_uniform_on_the_wire_but_precise_locally() -> None:
    cases = [("expired", State.EXPIRED, False), ("revoked", State.REVOKED, False),
             ("locked", State.LOCKED, False), ("unknown", State.ERROR, False),
             ("unknown", State.ERROR, True), ("kind mismatch", State.ERROR, True)]
    for reason, state, at_request in cases:
        gs, hs = sessions()
        guest = GuestProtocol(Run().request)
        host = HostProtocol()
        host.connected(hs)
        request = first(guest.connected(gs))
        if at_request:  # offered, then the request names another invitation or kind
            host.offer("none", HOST_INFO)
            host.receive_message(request)
        out = host.refuse(reason)  # else: unusable, refused before any challenge
        assert host.state is state
        assert host.reason == reason
        assert decode_message(one(out)) == RefusedMsg(UNIFORM_REFUSAL)
        assert guest.receive_message(one(out)) == [Refused(UNIFORM_REFUSAL)]
        assert guest.state is State.ERROR


def test_already_member_is_shared() -> None:
    r = Run(method="none")
    _, (challenge,) = open_run(r, "none")
    r.guest.receive_message(challenge)
    r.host.receive_message(one(r.guest.host_verified()))
    out = r.host.refuse(p.REASON_ALREADY_MEMBER)
    assert r.guest.receive_message(one(out)) == [Refused("already_member")]


def test_man_in_the_middle_relaying_cpace_admits_no_one() -> None:
    """Two Noise sessions (different handshake hashes): relayed CPace fails, PIN unseen."""
    mitm = DeviceKeys.generate()
    guest_side, _ = sessions(host=mitm)          # guest <-> mitm (posing as the host)
    _, host_side = sessions(guest=mitm)          # mitm <-> host (posing as a guest)
    req = Run().request
    guest = GuestProtocol(GuestRequest(**{**{f: getattr(req, f) for f in req.__slots__},
                                          "host_device": None}))
    host = HostProtocol()
    seen: list[bytes] = []

    def relay(data: bytes) -> bytes:
        seen.append(data)
        return data

    host.connected(host_side)
    challenge = relay(first(host.offer("pin", HOST_INFO, password=PIN)))
    host.receive_message(relay(first(guest.connected(guest_side))))
    with pytest.raises(HandshakeError):
        # The guest refuses the real challenge: its device is not the MITM's...
        guest.receive_message(challenge)
    # ...so replay the whole thing with the MITM forging its own challenge.
    guest = GuestProtocol(GuestRequest(**{**{f: getattr(req, f) for f in req.__slots__},
                                          "host_device": None}))
    host = HostProtocol()
    host.connected(host_side)
    _, pake_b = sends(host.offer("pin", HOST_INFO, password=PIN))
    request, pake_a = sends(guest.connected(guest_side))
    host.receive_message(relay(request))
    host.request_accepted()
    forged = HostInfo(HOST_IDENTITY, mitm.device_public, ())
    guest.receive_message(relay(encode_message(ChallengeMsg("pin", forged))))
    assert guest.host_verified() == []
    assert host.receive_message(relay(pake_a)) == []
    confirm, sealed = sends(guest.receive_message(relay(pake_b)))
    assert host.receive_message(relay(confirm)) == [AttemptMade("pin")]
    assert host.check_attempt() == [AuthFailed()]
    assert kinds(host.attempt_counted(2)) == ["Send(refused)"]
    assert host.state is State.ERROR
    assert guest.state is State.AUTHENTICATING
    assert all(PIN not in data for data in seen)
    # The relay cannot read the sealed admit: the guest's ISK is not the host's...
    box = decode_message(relay(sealed))
    assert isinstance(box, p.SealedAdmitMsg)
    assert req.name.encode() not in box.box
    # ...nor its own (it ran CPace with neither side: it has no ISK matching the guest's).
    with pytest.raises(DecodeError, match="does not open"):
        p.open_admit(os.urandom(64), box)


def test_first_challenge_from_the_wrong_device_is_refused() -> None:
    mitm = DeviceKeys.generate()
    gs, _ = sessions(host=mitm)
    guest = GuestProtocol(Run().request)
    with pytest.raises(HandshakeError, match="not the device the code names"):
        guest.connected(gs)
    assert guest.state is State.ERROR


def test_challenge_device_must_match_handshake() -> None:
    req = Run().request
    guest = GuestProtocol(req)
    gs, _ = sessions()
    guest.connected(gs)
    other = HostInfo(HOST_IDENTITY, DeviceKeys.generate().device_public, ())
    with pytest.raises(HandshakeError):
        guest.receive_message(encode_message(ChallengeMsg("pin", other)))
    assert guest.state is State.ERROR


def test_method_downgrade_is_refused() -> None:
    guest = GuestProtocol(Run(method="pin").request)
    gs, _ = sessions()
    guest.connected(gs)
    with pytest.raises(ProtocolViolation, match="another method"):
        guest.receive_message(encode_message(ChallengeMsg("none", HOST_INFO)))
    assert guest.state is State.ERROR


def test_binding_proof_must_match_static_key() -> None:
    hh = os.urandom(64)
    bad = Session(hh, HOST_KEYS.static_public, DeviceKeys.generate().static_public,
                  GUEST_KEYS.binding_proof())
    host = HostProtocol()
    with pytest.raises(HandshakeError):
        host.connected(bad)
    assert host.state is State.ERROR


def test_admit_for_another_device_is_a_violation() -> None:
    r = Run(method="none")
    open_run(r, "none")
    forged = encode_message(AdmitMsg(DeviceKeys.generate().device_public, None, (), "x"))
    with pytest.raises(ProtocolViolation) as info:
        r.host.receive_message(forged)
    assert info.value.refusal == UNIFORM_REFUSAL
    assert r.host.state is State.ERROR
    assert decode_message(one(r.host.refusal_for(info.value))) == RefusedMsg(UNIFORM_REFUSAL)


def test_admit_kind_shape_is_enforced() -> None:
    r = Run(method="none", kind="device")
    open_run(r, "none")
    with pytest.raises(ProtocolViolation):
        r.host.receive_message(encode_message(
            AdmitMsg(GUEST_KEYS.device_public, os.urandom(32), (), "x")))


def test_messages_out_of_order_are_remote_violations() -> None:
    r = Run()
    r.host.connected(r.hs)
    r.host.offer("pin", HOST_INFO, password=PIN)
    with pytest.raises(ProtocolViolation, match="unexpected 'confirm'"):
        r.host.receive_message(encode_message(ConfirmMsg(bytes(64))))
    assert r.host.state is State.ERROR
    with pytest.raises(LocalProtocolError):
        r.host.receive_message(b"")  # nothing is read after the end


def test_pake_before_request_and_double_request_are_violations() -> None:
    r = Run()
    r.host.connected(r.hs)
    r.host.offer("pin", HOST_INFO, password=PIN)
    req, pake = sends(r.guest.connected(r.gs))
    early = HostProtocol()
    early.connected(r.hs)
    early.offer("pin", HOST_INFO, password=PIN)
    with pytest.raises(ProtocolViolation, match="unexpected 'pake'"):
        early.receive_message(pake)  # a share read before the request
    r.host.receive_message(req)
    r.host.request_accepted()
    with pytest.raises(ProtocolViolation):
        r.host.receive_message(req)


def test_nothing_is_read_before_the_offer() -> None:
    """The host answers a connection before it reads: the request waits for the offer."""
    r = Run()
    r.host.connected(r.hs)
    with pytest.raises(LocalProtocolError, match="request_accepted"):
        r.host.request_accepted()
    with pytest.raises(ProtocolViolation, match="unexpected 'request'"):
        r.host.receive_message(first(r.guest.connected(r.gs)))


def test_unsupported_version_is_refused() -> None:
    host = HostProtocol()
    _, hs = sessions()
    host.connected(hs)
    host.offer("none", HOST_INFO)
    with pytest.raises(ProtocolViolation, match="version"):
        host.receive_message(encode_message(RequestMsg(INV, "device", version=2)))


def test_invalid_pake_share_is_a_violation() -> None:
    r = Run()
    open_run(r, "pin", password=PIN)
    low_order = bytes(32)
    from p2pinvite.crypto.cpace import lv_cat
    with pytest.raises(ProtocolViolation):
        r.host.receive_message(encode_message(PakeMsg(lv_cat(low_order, b""))))
    assert r.host.state is State.ERROR


def _to_sealed_admit(r: Run) -> tuple[bytes, bytes]:
    """Play a PIN run up to the guest's tag and sealed admit; return both."""
    (pake_a,), (challenge, pake_b) = open_run(r, "pin", password=PIN)
    r.guest.receive_message(challenge)
    assert r.guest.host_verified() == []
    assert r.host.receive_message(pake_a) == []
    confirm, sealed = sends(r.guest.receive_message(pake_b))
    return confirm, sealed


def test_guest_rejects_a_wrong_host_confirmation() -> None:
    r = Run()
    _to_sealed_admit(r)
    with pytest.raises(HandshakeError, match="could not confirm"):
        r.guest.receive_message(encode_message(ConfirmMsg(bytes(64))))
    assert r.guest.state is State.ERROR


def test_guest_reads_no_admission_before_the_host_tag() -> None:
    r = Run()
    _to_sealed_admit(r)
    with pytest.raises(ProtocolViolation, match="unexpected 'admitted'"):
        r.guest.receive_message(encode_message(AdmittedMsg(b"c", (b"e",), GRANT)))
    assert r.guest.state is State.ERROR


def test_sealed_admit_opens_to_the_guest_admit_after_the_tag() -> None:
    r = Run(kind="space")
    confirm, sealed = _to_sealed_admit(r)
    assert r.host.receive_message(confirm) == [AttemptMade("pin")]
    assert r.host.check_attempt() == [AuthSucceeded()]
    assert r.host.receive_message(sealed) == [AdmissionRequested(
        GUEST_KEYS.device_public, r.request.identity, (b"guest-chain",), "Bob")]


def test_a_plain_admit_is_a_violation_after_a_pake() -> None:
    r = Run()
    confirm, _ = _to_sealed_admit(r)
    r.host.receive_message(confirm)
    r.host.check_attempt()
    with pytest.raises(ProtocolViolation, match="unexpected 'admit'"):
        r.host.receive_message(encode_message(r.guest._admit_message()))
    assert r.host.state is State.ERROR


def test_a_tampered_or_foreign_sealed_admit_is_a_violation() -> None:
    for forge in (lambda box: box[:-1] + bytes([box[-1] ^ 1]),       # flipped tag bit
                  lambda box: bytes(len(box))):                      # someone else's bytes
        r = Run()
        confirm, sealed = _to_sealed_admit(r)
        r.host.receive_message(confirm)
        r.host.check_attempt()
        msg = decode_message(sealed)
        assert isinstance(msg, p.SealedAdmitMsg)
        with pytest.raises(ProtocolViolation) as info:
            r.host.receive_message(encode_message(p.SealedAdmitMsg(forge(msg.box))))
        assert "does not open" in str(info.value)
        assert info.value.refusal == UNIFORM_REFUSAL
        assert r.host.state is State.ERROR


def test_sealed_admit_before_the_tag_or_without_a_pake_is_a_violation() -> None:
    r = Run()
    _, sealed = _to_sealed_admit(r)
    with pytest.raises(ProtocolViolation, match="unexpected 'admit_sealed'"):
        r.host.receive_message(sealed)  # the tag was skipped
    n = Run(method="none")
    open_run(n, "none")
    with pytest.raises(ProtocolViolation, match="unexpected 'admit_sealed'"):
        n.host.receive_message(sealed)


def test_sealed_admit_vector_of_the_protocol_document() -> None:
    """docs/PROTOCOL.md Part 7 §3.3: the seal key is computed here from its definition."""
    import hashlib
    isk = bytes(range(64))
    key = hashlib.sha512(b"p2pinvite/admit-seal/v1\x00" + isk).digest()[:32]
    assert p.admit_seal_key(isk) == key
    assert key.hex() == "82eebabe9ac80b0a9b40edf1842918e9c546f9340737653516d9cf58b59a607e"
    admit = AdmitMsg(b"\x11" * 32, None, (), "Bob")
    assert encode_message(admit).hex() == (
        "83a174a561646d6974a6646576696365c420" + "11" * 32
        + "a770726f66696c6581a46e616d65a3426f62")
    assert p.seal_admit(isk, admit).box.hex() == (
        "8ff0d127a66b1c6ba30187574c610a679c706de3e9abfabc39d3502e7e8436bf28112615bcc70cb7"
        "77962b186d8bb65de6dabcd7af343f03cfbf8a75cdb8f587c94e7a1e73f785f6a3a721293250c9d7"
        "bd0b8c71")


def test_seal_is_bound_to_the_key_and_to_an_admit() -> None:
    isk = os.urandom(64)
    admit = AdmitMsg(b"d" * 32, b"i" * 32, (b"c",), "Bob")
    sealed = p.seal_admit(isk, admit)
    assert p.open_admit(isk, sealed) == admit
    assert len(sealed.box) == len(encode_message(admit)) + 16
    with pytest.raises(DecodeError):
        p.open_admit(os.urandom(64), sealed)
    # A sealed message of another type is refused even when it opens.
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    other = ChaCha20Poly1305(p.admit_seal_key(isk)).encrypt(
        bytes(12), encode_message(ConfirmMsg(b"t" * 64)), None)
    with pytest.raises(DecodeError, match="not an admit"):
        p.open_admit(isk, p.SealedAdmitMsg(other))
    assert p.admit_seal_key(isk) != p.admit_seal_key(os.urandom(64))


def test_local_misuse_leaves_state_unchanged() -> None:
    r = Run()
    with pytest.raises(LocalProtocolError):
        r.host.check_attempt()
    assert r.host.state is State.INIT
    r.host.connected(r.hs)
    with pytest.raises(LocalProtocolError):
        r.host.admit(b"c", [], GRANT)
    with pytest.raises(LocalProtocolError):
        r.host.attempt_counted(2)
    with pytest.raises(LocalProtocolError, match="needs a password"):
        r.host.offer("pin", HOST_INFO)
    assert r.host.state is State.CONNECTED
    r.host.offer("pin", HOST_INFO, password=PIN)
    with pytest.raises(LocalProtocolError):
        r.host.offer("pin", HOST_INFO, password=PIN)
    with pytest.raises(LocalProtocolError):
        r.guest.admission_verified()
    assert r.host.state is State.READY_FOR_AUTHENTICATION


def test_a_wrong_proof_is_answered_only_once_counted() -> None:
    r = Run(guest_password=b"000000")
    confirm, _ = _to_sealed_admit(r)
    r.host.receive_message(confirm)
    assert r.host.check_attempt() == [AuthFailed()]
    assert r.host.state is State.AUTHENTICATING
    for call in (r.host.check_attempt, lambda: r.host.admit(b"c", [b"e"], GRANT)):
        with pytest.raises(LocalProtocolError):
            call()
    with pytest.raises(LocalProtocolError, match="negative"):
        r.host.attempt_counted(-1)
    assert r.host.state is State.AUTHENTICATING
    # A revocation while the count is written ends it uniformly, saying nothing more.
    assert decode_message(one(r.host.cancel())) == RefusedMsg(UNIFORM_REFUSAL)


def test_cancel_timeout_and_lost() -> None:
    r = Run()
    r.host.connected(r.hs)
    assert decode_message(one(r.host.cancel())) == RefusedMsg(UNIFORM_REFUSAL)
    assert r.host.state is State.CANCELLED
    with pytest.raises(LocalProtocolError):
        r.host.timed_out()
    g = GuestProtocol(Run().request)
    g.connecting()
    assert g.timed_out() == []
    assert g.state is State.TIMEOUT
    g2 = GuestProtocol(Run().request)
    assert g2.connection_lost() == []
    assert g2.state is State.ERROR
    g3 = GuestProtocol(Run().request)
    g3.cancel()
    assert g3.state is State.CANCELLED


def test_final_states_forget_the_cpace_run() -> None:
    r = Run(guest_password=b"111111")
    r.run()
    assert r.host._cpace is None
    assert r.guest.state is State.ERROR
    assert r.guest._cpace is None


def test_secrets_never_in_reprs() -> None:
    r = Run()
    r.run()
    texts = [repr(r.request), repr(r.guest), repr(r.host)]
    texts += [repr(x) for x in [PakeMsg(b"m" * 33), ConfirmMsg(b"t" * 64)]]
    assert all("493817" not in t for t in texts)
    assert "password" not in repr(r.request)


def test_every_step_is_reachable_and_public() -> None:
    steps = set(p._Step)
    assert steps == set(p._PUBLIC)
    for table in (p._HOST_TRANSITIONS, p._GUEST_TRANSITIONS):
        targets = {s for row in table.values() for s in row.values()} | {p._Step.INIT}
        assert set(table) <= targets
        assert not set(table) & p._FINAL_STEPS


# -- decoding --------------------------------------------------------------

ALL_MESSAGES: list[p.Message] = [
    RequestMsg(INV, "device"), RequestMsg(None, "space"),
    ChallengeMsg("key", HOST_INFO), PakeMsg(b"x" * 33), ConfirmMsg(b"t" * 64),
    KeyProofMsg(b"k" * 32, b"s" * 64), AdmitMsg(b"d" * 32, None, (), "n"),
    AdmitMsg(b"d" * 32, b"i" * 32, (b"c",), "n"), p.SealedAdmitMsg(b"b" * 40),
    AdmittedMsg(b"c", (b"e1", b"e2"), GRANT),
    RefusedMsg("wrong_pin", 2), RefusedMsg(UNIFORM_REFUSAL),
]


@pytest.mark.parametrize("msg", ALL_MESSAGES, ids=lambda m: m.T)
def test_messages_round_trip(msg: p.Message) -> None:
    assert decode_message(encode_message(msg)) == msg


@pytest.mark.parametrize("msg", ALL_MESSAGES, ids=lambda m: m.T)
def test_unknown_fields_and_missing_fields_are_refused(msg: p.Message) -> None:
    from p2pinvite.wire import pack
    m = msg.to_map()
    with pytest.raises(DecodeError, match="unexpected"):
        decode_message(pack({**m, "zz": 1}))
    field_name = next(k for k in m if k != "t")
    del m[field_name]
    with pytest.raises(DecodeError):
        decode_message(pack(m))


@pytest.mark.parametrize("bad", [
    {"t": "request", "v": 1, "kind": "person"},
    {"t": "request", "v": 1, "kind": "device", "invitation": b"short"},
    {"t": "request", "v": True, "kind": "device"},
    {"t": "challenge", "method": "magic", "host": HOST_INFO.to_map()},
    {"t": "challenge", "method": "pin", "host": {**HOST_INFO.to_map(), "chain": ["str"]}},
    {"t": "challenge", "method": "pin", "host": {**HOST_INFO.to_map(),
                                                 "chain": [b"c"] * 17}},
    {"t": "confirm", "tag": b"short"},
    {"t": "admit_sealed", "box": "not bytes"},
    {"t": "admit_sealed", "box": b"b" * (p._MAX_SEALED + 1)},
    {"t": "admit", "device": b"d" * 32, "profile": {"name": "x" * 129}},
    {"t": "admit", "device": b"d" * 32, "profile": {"name": "x"}, "identity": b"i" * 32},
    {"t": "refused", "reason": "x" * 65},
    {"t": "refused", "reason": "r", "attempts_left": -1},
    {"t": "nope"},
    {"type": "request"},
])
def test_malformed_messages_raise_decode_error(bad: dict[str, object]) -> None:
    from p2pinvite.wire import pack
    with pytest.raises(DecodeError):
        decode_message(pack(bad))


def test_non_map_and_garbage() -> None:
    from p2pinvite.wire import pack
    with pytest.raises(DecodeError):
        decode_message(pack([1, 2]))
    with pytest.raises(DecodeError):
        decode_message(b"\xc1")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_fuzzed_input_only_raises_remote_errors(data: bytes) -> None:
    r = Run()
    r.host.connected(r.hs)
    try:
        r.host.receive_message(data)
    except RemoteProtocolError:
        assert r.host.state is State.ERROR


def test_the_largest_guest_messages_fit_what_a_host_reads() -> None:
    # The host reads guest messages with MAX_GUEST_MESSAGE as the stream limit:
    # the largest admit (a full chain of the largest credentials, the longest
    # name in 4-byte UTF-8) and its sealed form must fit, with nothing to spare
    # beyond a map header.
    admit = AdmitMsg(b"d" * 32, b"i" * 32, (b"c" * p.MAX_CREDENTIAL,) * p.MAX_CHAIN,
                     "\U0001f600" * p.MAX_NAME)
    plain = encode_message(admit)
    sealed = encode_message(p.seal_admit(os.urandom(64), admit))
    assert len(plain) < len(sealed) <= p.MAX_GUEST_MESSAGE
    assert p.MAX_GUEST_MESSAGE - len(sealed) < 1024
