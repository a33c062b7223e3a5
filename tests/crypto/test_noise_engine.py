"""Unit tests of the sans-IO Noise engine: API misuse, peer errors, limits."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from noise.connection import Keypair, NoiseConnection

from p2pinvite.crypto import noise
from p2pinvite.crypto.noise import (
    MAX_MESSAGE,
    MAX_PLAINTEXT,
    PATTERNS,
    TAG,
    CipherState,
    HandshakeAuthFailed,
    HandshakeState,
    NoiseTransport,
    UnsupportedProtocol,
    generate_private_key,
    parse_protocol_name,
    public_key,
)
from p2pinvite.errors import (
    BadTag,
    DecodeError,
    FrameTooLarge,
    HandshakeError,
    InvalidKey,
    InvalidPoint,
    LocalProtocolError,
    NonceExhausted,
    P2PInviteError,
)

XX = "Noise_XX_25519_ChaChaPoly_BLAKE2b"
XXPSK3 = "Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b"
NK = "Noise_NK_25519_ChaChaPoly_BLAKE2b"

I_S = bytes(range(1, 33))
R_S = bytes(range(101, 133))
I_E = bytes(range(201, 233))
R_E = bytes(range(33, 65))
PSK = bytes(range(65, 97))

# Curve25519 points of small order (all give an all-zero shared secret).
LOW_ORDER_POINTS = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    bytes.fromhex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
]


def xx_pair(name: str = XX, **kw: object) -> tuple[HandshakeState, HandshakeState]:
    psks = (PSK,) if "psk" in name else ()
    i = HandshakeState(name, initiator=True, s=I_S, e=I_E, psks=psks, **kw)  # type: ignore[arg-type]
    r = HandshakeState(name, initiator=False, s=R_S, e=R_E, psks=psks, **kw)  # type: ignore[arg-type]
    return i, r


def run_xx(i: HandshakeState, r: HandshakeState) -> list[bytes]:
    m1 = i.write_message(b"")
    r.read_message(m1)
    m2 = r.write_message(b"resp")
    assert i.read_message(m2) == b"resp"
    m3 = i.write_message(b"init")
    assert r.read_message(m3) == b"init"
    return [m1, m2, m3]


# -- protocol names -----------------------------------------------------------


def test_parse_protocol_name() -> None:
    p = parse_protocol_name("Noise_XXpsk3_25519_ChaChaPoly_BLAKE2b")
    assert p.pattern.name == "XXpsk3"
    assert p.psk_positions == (3,)
    assert p.pattern.messages[-1] == ("s", "se", "psk")
    p = parse_protocol_name("Noise_NNpsk0+psk2_25519_AESGCM_SHA512")
    assert p.pattern.messages == (("psk", "e"), ("e", "ee", "psk"))
    assert (p.cipher, p.hash) == ("AESGCM", "SHA512")


@pytest.mark.parametrize(
    "name",
    [
        "Noise_XX_448_ChaChaPoly_BLAKE2b",  # other DH
        "Noise_XX_25519_Twofish_BLAKE2b",
        "Noise_XX_25519_ChaChaPoly_MD5",
        "Noise_ZZ_25519_ChaChaPoly_BLAKE2b",  # no such pattern
        "Noise_XXfallback_25519_ChaChaPoly_BLAKE2b",  # modifier we do not implement
        "Noise_XXpsk4_25519_ChaChaPoly_BLAKE2b",  # XX has 3 messages
        "Noise_XXpsk3+psk3_25519_ChaChaPoly_BLAKE2b",
        "Noise_XX_25519_ChaChaPoly",
        "Noise_XX_25519_ChaChaPoly_BLAKE2b_extra",
        "noise_XX_25519_ChaChaPoly_BLAKE2b",
        "",
    ],
)
def test_unsupported_names_are_refused(name: str) -> None:
    with pytest.raises(UnsupportedProtocol):
        HandshakeState(name, initiator=True, s=I_S)
    assert issubclass(UnsupportedProtocol, LocalProtocolError)


def test_pattern_table_is_complete() -> None:
    # 3 one-way + 12 fundamental + 23 deferred interactive patterns (spec 7.4, 7.5, 18)
    assert len(PATTERNS) == 38
    for p in PATTERNS.values():
        # a pattern never has both parties speak in a row, and every DH token
        # refers to keys that exist by then
        for tokens in p.messages:
            assert tokens
            assert set(tokens) <= {"e", "s", "ee", "es", "se", "ss"}


# -- keys and misuse ----------------------------------------------------------


@pytest.mark.parametrize("field", ["s", "e", "rs", "re"])
def test_wrong_length_keys(field: str) -> None:
    kw: dict[str, object] = {"s": I_S, field: b"\x01" * 31}
    with pytest.raises(InvalidKey):
        HandshakeState(XX, initiator=True, **kw)  # type: ignore[arg-type]


def test_psk_checks() -> None:
    with pytest.raises(InvalidKey):
        HandshakeState(XXPSK3, initiator=True, s=I_S)  # missing PSK
    with pytest.raises(InvalidKey):
        HandshakeState(XXPSK3, initiator=True, s=I_S, psks=[b"\x00" * 16])
    with pytest.raises(InvalidKey):
        HandshakeState(XX, initiator=True, s=I_S, psks=[PSK])  # XX takes none


def test_missing_required_keys() -> None:
    with pytest.raises(InvalidKey):
        HandshakeState(XX, initiator=True)  # XX sends s
    with pytest.raises(InvalidKey):
        HandshakeState(NK, initiator=True)  # NK needs the responder's key in advance
    HandshakeState(NK, initiator=True, rs=public_key(R_S))
    HandshakeState("Noise_NN_25519_ChaChaPoly_BLAKE2b", initiator=True)


def test_calls_out_of_turn() -> None:
    i, r = xx_pair()
    with pytest.raises(LocalProtocolError):
        i.read_message(b"\x00" * 32)
    with pytest.raises(LocalProtocolError):
        r.write_message()
    with pytest.raises(LocalProtocolError):
        i.split()
    with pytest.raises(LocalProtocolError):
        i.transport()
    run_xx(i, r)
    with pytest.raises(LocalProtocolError):
        i.write_message()
    with pytest.raises(LocalProtocolError):
        r.read_message(b"")


def test_split_is_idempotent_and_directional() -> None:
    i, r = xx_pair()
    run_xx(i, r)
    assert i.split() is i.split()
    ti, tr = i.transport(), r.transport()
    assert tr.decrypt(ti.encrypt(b"a->b")) == b"a->b"
    assert ti.decrypt(tr.encrypt(b"b->a")) == b"b->a"
    # a message can't be decrypted in the direction it was not meant for
    with pytest.raises(BadTag):
        ti.decrypt(ti.encrypt(b"reflected"))


def test_handshake_hash_and_remote_keys() -> None:
    i, r = xx_pair()
    before = i.remote_static
    run_xx(i, r)
    assert before is None
    assert i.handshake_hash == r.handshake_hash
    assert len(i.handshake_hash) == 64
    assert i.remote_static == public_key(R_S)
    assert r.remote_static == public_key(I_S)
    assert r.remote_ephemeral == public_key(I_E)


def test_prologue_mismatch_fails() -> None:
    i = HandshakeState(XX, initiator=True, s=I_S, prologue=b"a")
    r = HandshakeState(XX, initiator=False, s=R_S, prologue=b"b")
    r.read_message(i.write_message())
    with pytest.raises(HandshakeAuthFailed):
        i.read_message(r.write_message(b"x"))


def test_fresh_ephemerals_differ() -> None:
    a = HandshakeState(XX, initiator=True, s=I_S).write_message()
    b = HandshakeState(XX, initiator=True, s=I_S).write_message()
    assert len(a) == 32
    assert a != b


def test_keys_never_in_repr() -> None:
    i, r = xx_pair(XXPSK3)
    run_xx(i, r)
    c1, c2 = i.split()
    text = " ".join(repr(x) for x in (i, r, c1, c2, i.transport(), i._ss, i._s))
    for secret in (I_S, R_S, I_E, R_E, PSK):
        assert secret.hex() not in text
    assert "HandshakeState" in repr(i)


def test_public_key_helpers() -> None:
    k = generate_private_key()
    assert len(k) == 32
    assert len(public_key(k)) == 32
    assert public_key(k) == public_key(k)
    with pytest.raises(InvalidKey):
        public_key(b"short")


# -- peer errors --------------------------------------------------------------


def test_wrong_psk_fails_with_typed_error() -> None:
    i = HandshakeState(XXPSK3, initiator=True, s=I_S, psks=[PSK])
    r = HandshakeState(XXPSK3, initiator=False, s=R_S, psks=[bytes(32)])
    # psk3 is mixed at the end of message 3: messages 1 and 2 go through.
    r.read_message(i.write_message())
    i.read_message(r.write_message(b"resp"))
    m3 = i.write_message(b"init")
    with pytest.raises(HandshakeAuthFailed) as info:
        r.read_message(m3)
    assert isinstance(info.value, BadTag)
    assert isinstance(info.value, HandshakeError)
    # the handshake is dead: nothing can be continued or split
    with pytest.raises(LocalProtocolError):
        r.split()
    with pytest.raises(LocalProtocolError):
        r.write_message()
    assert not r.complete


@pytest.mark.parametrize("position", range(3))
def test_bit_flips_in_each_message_fail(position: int) -> None:
    ref = run_xx(*xx_pair())
    i, r = xx_pair()
    sides = [(i, r), (r, i), (i, r)]
    payloads = [b"", b"resp", b"init"]
    for k in range(3):
        w, rd = sides[k]
        m = w.write_message(payloads[k])
        assert m == ref[k]
        if k == position:
            bad = bytearray(m)
            bad[-1] ^= 1
            if position == 0:
                # message 1 of XX is unauthenticated (a bare ephemeral key);
                # the flip shows up when message 2 is read
                rd.read_message(bytes(bad))
                with pytest.raises(HandshakeAuthFailed):
                    w.read_message(rd.write_message(b"resp"))
            else:
                with pytest.raises(HandshakeAuthFailed):
                    rd.read_message(bytes(bad))
            failed = w if position == 0 else rd
            with pytest.raises(LocalProtocolError):
                failed.write_message()
            with pytest.raises(LocalProtocolError):
                failed.read_message(m)
            return
        rd.read_message(m)


@pytest.mark.parametrize("cut", [0, 1, 31])
def test_truncated_ephemeral(cut: int) -> None:
    _, r = xx_pair()
    with pytest.raises(DecodeError):
        r.read_message(b"\x01" * cut)
    with pytest.raises(LocalProtocolError):
        r.read_message(b"\x01" * 32)


@pytest.mark.parametrize("cut", [32, 32 + 20, 32 + 47, 32 + 48, 32 + 48 + 15])
def test_truncated_message_2(cut: int) -> None:
    i, r = xx_pair()
    r.read_message(i.write_message())
    m2 = r.write_message(b"")
    assert len(m2) == 32 + 48 + 16
    with pytest.raises(DecodeError):
        i.read_message(m2[:cut])


def test_oversized_messages() -> None:
    i, r = xx_pair()
    with pytest.raises(FrameTooLarge):
        xx_pair()[1].read_message(b"\x00" * (MAX_MESSAGE + 1))
    # our own oversized write is refused *before* any state changes
    with pytest.raises(LocalProtocolError):
        i.write_message(b"\x00" * (MAX_MESSAGE - 31))
    m1 = i.write_message(b"\x00" * (MAX_MESSAGE - 32))
    assert len(m1) == MAX_MESSAGE
    assert r.read_message(m1) == b"\x00" * (MAX_MESSAGE - 32)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_low_order_point_on_read(point: bytes) -> None:
    # NK: the responder computes DH(s, re) while reading message 1
    r = HandshakeState(NK, initiator=False, s=R_S)
    with pytest.raises(InvalidPoint):
        r.read_message(point + b"\x00" * TAG)
    with pytest.raises(LocalProtocolError):
        r.write_message()


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_low_order_point_on_write(point: bytes) -> None:
    # XX: the responder's first DH (ee) happens while writing message 2
    r = HandshakeState(XX, initiator=False, s=R_S)
    r.read_message(point)
    with pytest.raises(InvalidPoint):
        r.write_message()


def test_low_order_static_key() -> None:
    with pytest.raises(InvalidPoint):
        HandshakeState(NK, initiator=True, rs=LOW_ORDER_POINTS[0]).write_message()


# -- transport ------------------------------------------------------------------


def transports() -> tuple[NoiseTransport, NoiseTransport]:
    i, r = xx_pair()
    run_xx(i, r)
    return i.transport(), r.transport()


def test_transport_replay_reorder_flip() -> None:
    a, b = transports()
    c0, c1, c2 = (a.encrypt(bytes([k]) * 10) for k in range(3))
    assert b.decrypt(c0) == b"\x00" * 10
    with pytest.raises(BadTag):
        b.decrypt(c0)  # replay
    with pytest.raises(BadTag):
        b.decrypt(c2)  # reordered
    flipped = bytearray(c1)
    flipped[3] ^= 0x80
    with pytest.raises(BadTag):
        b.decrypt(bytes(flipped))
    # failures do not advance the receive nonce: the genuine next message still works
    assert b.decrypt(c1) == b"\x01" * 10
    assert b.decrypt(c2) == b"\x02" * 10


def test_transport_limits() -> None:
    a, b = transports()
    with pytest.raises(LocalProtocolError):
        a.encrypt(b"\x00" * (MAX_PLAINTEXT + 1))
    ct = a.encrypt(b"\x00" * MAX_PLAINTEXT)
    assert len(ct) == MAX_MESSAGE
    assert b.decrypt(ct) == b"\x00" * MAX_PLAINTEXT
    with pytest.raises(FrameTooLarge):
        b.decrypt(b"\x00" * (MAX_MESSAGE + 1))
    with pytest.raises(DecodeError):
        b.decrypt(b"\x00" * (TAG - 1))
    assert a.decrypt(b.encrypt(b"")) == b""


def test_nonce_exhaustion() -> None:
    a, b = transports()
    assert a.send_cipher is not None
    assert b.recv_cipher is not None
    a.send_cipher.n = b.recv_cipher.n = 2**64 - 2
    assert b.decrypt(a.encrypt(b"last")) == b"last"
    assert a.send_cipher.n == 2**64 - 1
    with pytest.raises(NonceExhausted):
        a.encrypt(b"one too many")
    with pytest.raises(NonceExhausted):
        b.decrypt(b"\x00" * 32)


def test_rekey() -> None:
    a, b = transports()
    assert a.send_cipher is not None
    assert b.recv_cipher is not None
    a.send_cipher.rekey()
    b.recv_cipher.rekey()
    assert b.decrypt(a.encrypt(b"after rekey")) == b"after rekey"
    a.send_cipher.rekey()  # one side only: keys now differ
    with pytest.raises(BadTag):
        b.decrypt(a.encrypt(b"x"))
    with pytest.raises(LocalProtocolError):
        CipherState().rekey()


def test_cipher_state_without_key_is_identity() -> None:
    cs = CipherState()
    assert not cs.has_key
    assert cs.encrypt_with_ad(b"ad", b"pt") == b"pt"
    with pytest.raises(InvalidKey):
        CipherState(k=b"short")


def test_one_way_transport_has_one_direction() -> None:
    name = "Noise_N_25519_ChaChaPoly_BLAKE2b"
    i = HandshakeState(name, initiator=True, rs=public_key(R_S))
    r = HandshakeState(name, initiator=False, s=R_S)
    r.read_message(i.write_message(b"hello"))
    ti, tr = i.transport(), r.transport()
    assert tr.decrypt(ti.encrypt(b"x")) == b"x"
    with pytest.raises(LocalProtocolError):
        tr.encrypt(b"x")
    with pytest.raises(LocalProtocolError):
        ti.decrypt(b"\x00" * 16)


# -- psk modifiers on any pattern, cross-checked against noiseprotocol ---------------

# noiseprotocol knows the one-way and fundamental patterns; our engine applies
# psk modifiers generically, so check a spread of placements the vectors miss.
CROSS = [
    "Noise_NN_25519_AESGCM_SHA256",
    "Noise_XX_25519_AESGCM_SHA512",
    "Noise_IK_25519_ChaChaPoly_BLAKE2s",
    "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b",
    "Noise_XXpsk1_25519_ChaChaPoly_SHA256",
    "Noise_XXpsk2_25519_AESGCM_BLAKE2b",
    "Noise_NNpsk0+psk2_25519_ChaChaPoly_BLAKE2s",
    "Noise_KKpsk1_25519_ChaChaPoly_SHA512",
    "Noise_IXpsk0+psk1+psk2_25519_ChaChaPoly_BLAKE2b",
    "Noise_Npsk1_25519_ChaChaPoly_SHA256",
    "Noise_XKpsk3_25519_AESGCM_SHA256",
]


def _their(name: str, initiator: bool, prologue: bytes, psks: list[bytes]) -> NoiseConnection:
    proto = parse_protocol_name(name)
    conn = NoiseConnection.from_name(name.encode())
    mine, peer = (I_S, R_S) if initiator else (R_S, I_S)
    p = proto.pattern
    if any("s" in m for m in p.messages) or "s" in (p.initiator_pre + p.responder_pre):
        conn.set_keypair_from_private_bytes(Keypair.STATIC, mine)
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, public_key(peer))
    if psks:
        conn.set_psks(psks=psks)
    conn.set_prologue(prologue)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.start_handshake()
    return conn


def _ours(name: str, initiator: bool, prologue: bytes, psks: list[bytes]) -> HandshakeState:
    p = parse_protocol_name(name).pattern
    mine, peer = (I_S, R_S) if initiator else (R_S, I_S)
    their_pre = p.responder_pre if initiator else p.initiator_pre
    my_pre = p.initiator_pre if initiator else p.responder_pre
    needs_s = "s" in my_pre or any(
        "s" in m for k, m in enumerate(p.messages) if (k % 2 == 0) == initiator
    )
    return HandshakeState(
        name, initiator=initiator, prologue=prologue, psks=psks,
        s=mine if needs_s else None,
        rs=public_key(peer) if "s" in their_pre else None,
    )


@pytest.mark.parametrize(("name", "we_initiate"), list(itertools.product(CROSS, [True, False])))
def test_cross_check_with_noiseprotocol(name: str, we_initiate: bool) -> None:
    npsk = len(parse_protocol_name(name).psk_positions)
    psks = [bytes([k + 7]) * 32 for k in range(npsk)]
    prologue = b"cross-check"
    ours = _ours(name, we_initiate, prologue, psks)
    theirs = _their(name, not we_initiate, prologue, psks)
    for k in range(ours.message_count):
        if ours.our_turn:
            assert bytes(theirs.read_message(ours.write_message(b"m%d" % k))) == b"m%d" % k
        else:
            assert ours.read_message(bytes(theirs.write_message(b"m%d" % k))) == b"m%d" % k
    assert ours.complete
    assert theirs.handshake_finished
    assert ours.handshake_hash == theirs.get_handshake_hash()
    t = ours.transport()
    if t.send_cipher is not None:
        assert bytes(theirs.decrypt(t.encrypt(b"ours"))) == b"ours"
    if t.recv_cipher is not None:
        assert t.decrypt(bytes(theirs.encrypt(b"theirs"))) == b"theirs"


# -- fuzzing: only typed errors ever escape ----------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([XX, XXPSK3, NK]))
def test_random_first_message(data: bytes, name: str) -> None:
    r = HandshakeState(name, initiator=False, s=R_S, psks=(PSK,) if "psk" in name else ())
    try:
        r.read_message(data)
        r.write_message(b"x")
    except P2PInviteError:
        return


REFERENCE = run_xx(*xx_pair(XXPSK3))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_transcript(data: st.DataObject) -> None:
    which = data.draw(st.sampled_from([0, 2]))  # initiator's messages 1 and 3
    msg = bytearray(REFERENCE[which])
    op = data.draw(st.sampled_from(["flip", "truncate", "extend", "replace"]))
    if op == "flip":
        pos = data.draw(st.integers(0, len(msg) - 1))
        msg[pos] ^= data.draw(st.integers(1, 255))
    elif op == "truncate":
        del msg[data.draw(st.integers(0, len(msg) - 1)) :]
    elif op == "extend":
        msg += data.draw(st.binary(min_size=1, max_size=40))
    else:
        msg = bytearray(data.draw(st.binary(max_size=120)))
    i, r = xx_pair(XXPSK3)
    got: list[bytes] = []
    try:
        for k, expect in enumerate(REFERENCE):
            sent = bytes(msg) if k == which else expect
            if k % 2 == 0:
                assert i.write_message(b"" if k == 0 else b"init") == expect
                got.append(r.read_message(sent))
            else:
                assert r.write_message(b"resp") == expect
                i.read_message(expect)
    except P2PInviteError:
        assert bytes(msg) != REFERENCE[which]
        return
    # success is only possible for the unmodified transcript
    assert bytes(msg) == REFERENCE[which]
    assert r.complete


def test_module_is_sans_io() -> None:
    # Importing the engine must not pull in trio or sockets (sans-IO core).
    code = (
        "import sys, p2pinvite.crypto.noise; "
        "print(sorted(m for m in ('trio', 'socket', 'asyncio') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert "import trio" not in Path(noise.__file__).read_text()
