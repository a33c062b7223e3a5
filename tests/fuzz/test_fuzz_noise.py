"""Noise handshake messages, as the project runs them (``XXpsk0`` and ``XX``).

Proves: a responder fed any first or third message, and an initiator fed any
second message, raise only :class:`~p2pinvite.errors.RemoteProtocolError`
(``DecodeError``, ``HandshakeAuthFailed``, ``InvalidPoint``...), never a
``LocalProtocolError`` or a bare exception, and a handshake that survives a
mutation still agrees with its peer. The transcripts use fixed ephemeral keys,
so a mutated third message meets a responder in exactly the state the valid
one was written for (the check then runs past the key parsing, into the MACs).
Low-order points are spliced over the keys on purpose. The handshake payload
of member connections (a device's binding proof) is fuzzed too.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pinvite.crypto.noise import HandshakeState
from p2pinvite.errors import HandshakeError, LocalProtocolError, RemoteProtocolError
from p2pinvite.halo.keys import DeviceKeys, verify_binding_proof
from p2pinvite.net.secure import PROTOCOL_XX, PROTOCOL_XXPSK0, full_prologue

from .strategies import CHEAP, byte_mutations, fuzz_inputs

#: Each target runs for seconds at CI size (thousands of examples).
pytestmark = pytest.mark.slow

_P = 2**255 - 19
#: X25519 u-coordinates a peer may not use: the low-order points, and non-canonical forms.
LOW_ORDER = [u.to_bytes(32, "little") for u in (
    0, 1, 325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
    _P - 1, _P, _P + 1)]

_KEYS = {name: bytes([i]) * 32 for i, name in enumerate(("is", "ie", "rs", "re"), 1)}
_PSK = b"\x42" * 32


@dataclass(frozen=True)
class Transcript:
    name: str
    msgs: tuple[bytes, bytes, bytes]

    def side(self, initiator: bool) -> HandshakeState:
        return HandshakeState(
            self.name, initiator=initiator, prologue=full_prologue(self.name, b"preamble"),
            s=_KEYS["is" if initiator else "rs"], e=_KEYS["ie" if initiator else "re"],
            psks=(_PSK,) if "psk" in self.name else ())


def _transcript(name: str) -> Transcript:
    t = Transcript(name, (b"", b"", b""))
    i, r = t.side(True), t.side(False)
    m1 = i.write_message()
    r.read_message(m1)
    m2 = r.write_message(b"responder payload")
    i.read_message(m2)
    m3 = i.write_message(b"initiator payload")
    r.read_message(m3)
    return Transcript(name, (m1, m2, m3))


TRANSCRIPTS = [_transcript(PROTOCOL_XXPSK0), _transcript(PROTOCOL_XX)]


@st.composite
def _message(draw: st.DrawFn, valid: bytes) -> bytes:
    """A mutation of *valid*, one with a forbidden key spliced in, or random bytes."""
    how = draw(st.sampled_from(["mutate", "low_order", "random"]))
    if how == "mutate":
        return draw(byte_mutations(valid))
    if how == "low_order":
        at = draw(st.sampled_from([0, 32, 48])) if len(valid) > 48 else 0
        return valid[:at] + draw(st.sampled_from(LOW_ORDER)) + valid[at + 32 :]
    return draw(st.binary(max_size=200))


def _read(hs: HandshakeState, data: bytes) -> bool:
    """Feed *data*; True if it was accepted. Only remote errors may come out."""
    try:
        hs.read_message(data)
    except LocalProtocolError:  # a typed error, but one that blames *us*: a bug
        raise
    except RemoteProtocolError:
        return False
    return True


@settings(max_examples=CHEAP)
@given(st.sampled_from(TRANSCRIPTS).flatmap(
    lambda t: st.tuples(st.just(t), _message(t.msgs[0]))))
def test_responder_reads_any_first_message(case: tuple[Transcript, bytes]) -> None:
    t, m1 = case
    r = t.side(False)
    if _read(r, m1):
        # A first message with no MAC (XX) or a PSK-bound one that survived
        # the edit: the responder answers, unless the key it read is a
        # low-order point, which its first DH refuses (a remote error too).
        try:
            r.write_message(b"")
        except LocalProtocolError:
            raise
        except RemoteProtocolError:
            assert m1[:32] in LOW_ORDER


@settings(max_examples=CHEAP)
@given(st.sampled_from(TRANSCRIPTS).flatmap(
    lambda t: st.tuples(st.just(t), _message(t.msgs[1]))))
def test_initiator_reads_any_second_message(case: tuple[Transcript, bytes]) -> None:
    t, m2 = case
    i = t.side(True)
    i.write_message()
    if _read(i, m2):
        assert m2 == t.msgs[1] or i.remote_static is not None


@settings(max_examples=CHEAP)
@given(st.sampled_from(TRANSCRIPTS).flatmap(
    lambda t: st.tuples(st.just(t), _message(t.msgs[2]))))
def test_responder_reads_any_third_message(case: tuple[Transcript, bytes]) -> None:
    t, m3 = case
    r = t.side(False)
    r.read_message(t.msgs[0])
    assert r.write_message(b"responder payload") == t.msgs[1]  # same state as the transcript
    if _read(r, m3):
        # Every byte of message 3 is authenticated: only the original passes.
        assert m3 == t.msgs[2]
        assert r.complete


# -- the handshake payload: a device's binding proof ---------------------------------------

_DEVICE = DeviceKeys.generate()
_PROOFS = [_DEVICE.binding_proof(), DeviceKeys.generate().binding_proof()]


@settings(max_examples=CHEAP)
@given(fuzz_inputs(_PROOFS, max_size=300))
def test_binding_proof_verifies_or_raises_handshake_error(data: bytes) -> None:
    # The payload every member connection's listener checks first: only a
    # HandshakeError may come out (the connection is then dropped).
    try:
        device = verify_binding_proof(data, _DEVICE.static_public)
    except HandshakeError:
        return
    assert device == _DEVICE.device_public
