"""CPACE-X25519-SHA512 against the published vectors.

Sources:
* ``tests/vectors/cpace-x25519.json`` -- the draft's testvectors.json subset
  (``G_25519`` and ``X25519_points``); every value is checked.
* draft-irtf-cfrg-cpace-21 text, appendices A and B.1 -- values the json does
  not carry (string utilities, generator string, transcripts, the expected
  scalar_mult_vfy results q0..qb), copied here as hex.
* RFC 9380 appendix J (curve25519_XMD:SHA-512_ELL2_NU_) -- u and Q = map(u),
  which test Elligator 2 on its own, including the sign of v.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from p2pinvite.crypto.cpace import (
    DSI,
    NEUTRAL,
    CPace,
    CPaceRole,
    calculate_generator,
    derive_isk,
    generator_string,
    lexicographically_larger,
    lv_cat,
    o_cat,
    prepend_len,
    scalar_mult,
    scalar_mult_vfy,
    sid_output,
    transcript_ir,
    transcript_oc,
)
from p2pinvite.crypto.elligator import P, decode_u_coordinate, map_to_curve_elligator2
from p2pinvite.errors import InvalidPoint

_JSON = json.loads(
    (Path(__file__).parent.parent / "vectors" / "cpace-x25519.json").read_text()
)
V: dict[str, str] = _JSON["G_25519"]
INVALID_POINTS: dict[str, str] = _JSON["X25519_points"]


def h(name: str) -> bytes:
    return bytes.fromhex(V[name])


def _hex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# --------------------------------------------------------------------------
# Appendix A: string utilities
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "00"),
        (b"1234", "0431323334"),
        (bytes(range(127)), "7f" + bytes(range(127)).hex()),
        (bytes(range(128)), "8001" + bytes(range(128)).hex()),
    ],
)
def test_prepend_len(data: bytes, expected: str) -> None:
    assert prepend_len(data).hex() == expected


def test_lv_cat() -> None:
    assert lv_cat(b"1234", b"5", b"", b"678").hex() == "043132333401350003363738"


@pytest.mark.parametrize(
    ("a", "b", "larger"),
    [
        (b"\0", b"\0\0", False),
        (b"\1", b"\0\0", True),
        (b"\0\0", b"\0", True),
        (b"\0\0", b"\1", False),
        (b"\0\1", b"\1", False),
        (b"ABCD", b"BCD", False),
    ],
)
def test_lexicographically_larger(a: bytes, b: bytes, larger: bool) -> None:
    assert lexicographically_larger(a, b) is larger


def test_o_cat() -> None:
    assert o_cat(b"ABCD", b"BCD").hex() == "6f6342434441424344"
    assert o_cat(b"BCD", b"ABCDE").hex() == "6f634243444142434445"


def test_transcript_functions() -> None:
    assert transcript_ir(b"123", b"PartyA", b"234", b"PartyB").hex() == (
        "03313233065061727479410332333406506172747942"
    )
    assert transcript_ir(b"3456", b"PartyA", b"2345", b"PartyB").hex() == (
        "043334353606506172747941043233343506506172747942"
    )
    assert transcript_oc(b"123", b"PartyA", b"234", b"PartyB").hex() == (
        "6f6303323334065061727479420331323306506172747941"
    )
    assert transcript_oc(b"3456", b"PartyA", b"2345", b"PartyB").hex() == (
        "6f63043334353606506172747941043233343506506172747942"
    )


# --------------------------------------------------------------------------
# B.1.1: generator
# --------------------------------------------------------------------------

# B.1.1 generator_string (170 bytes), its SHA-512[:32], and the decoded field element.
GEN_STR = _hex(
    """
    0843506163653235350850617373776f72646d000000000000000000
    00000000000000000000000000000000000000000000000000000000
    00000000000000000000000000000000000000000000000000000000
    00000000000000000000000000000000000000000000000000000000
    00000000000000000000000000000000180b415f696e69746961746f
    720b425f726573706f6e646572107e4b4791d6a8ef019b936c79fb7f
    2c57
    """
)
GEN_HASH = _hex("03998087bdb1a2617bbe25ef5a7c18cd4f84f902328701790958755ee4aed1d3")
GEN_U = _hex("03998087bdb1a2617bbe25ef5a7c18cd4f84f902328701790958755ee4aed153")


def test_inputs_match_the_draft_text() -> None:
    # The json's inputs are the draft's: PRS b"Password", CI, sid.
    assert h("PRS") == b"Password"
    assert h("CI") == b"\x0bA_initiator\x0bB_responder"
    assert h("ADa") == b"ADa"
    assert h("ADb") == b"ADb"


def test_generator_string() -> None:
    gen_str = generator_string(DSI, h("PRS"), h("CI"), h("sid"))
    assert len(gen_str) == 170
    assert gen_str == GEN_STR
    # ZPAD length 109: DSI, PRS and the padding fill exactly one SHA-512 block.
    assert len(lv_cat(DSI, h("PRS"), bytes(109))) == 128


def test_generator_hash_and_decoded_u() -> None:
    digest = hashlib.sha512(GEN_STR).digest()[:32]
    assert digest == GEN_HASH
    assert decode_u_coordinate(digest) == int.from_bytes(GEN_U, "little")


def test_generator_g() -> None:
    assert calculate_generator(h("PRS"), h("CI"), h("sid")) == h("g")


# --------------------------------------------------------------------------
# B.1.2 - B.1.7: shares, K, ISK, sid output
# --------------------------------------------------------------------------


def test_public_shares() -> None:
    assert scalar_mult(h("ya"), h("g")) == h("Ya")
    assert scalar_mult(h("yb"), h("g")) == h("Yb")


def test_k_both_sides() -> None:
    assert scalar_mult_vfy(h("ya"), h("Yb")) == h("K")
    assert scalar_mult_vfy(h("yb"), h("Ya")) == h("K")


TRANSCRIPT_IR = _hex(
    """
    201d13c89278cdadd826f6d8d7f887701430f8380ddc17611cdd6dc9
    89ce0c9f320341446120248cccf6d5cdc3646f0ad593f9e6cef4e69d
    4945f8372e623512ecea3218562303414462
    """
)
TRANSCRIPT_OC = _hex(
    """
    6f6320248cccf6d5cdc3646f0ad593f9e6cef4e69d4945f8372e6235
    12ecea3218562303414462201d13c89278cdadd826f6d8d7f8877014
    30f8380ddc17611cdd6dc989ce0c9f3203414461
    """
)


def test_transcripts_of_the_run() -> None:
    assert transcript_ir(h("Ya"), h("ADa"), h("Yb"), h("ADb")) == TRANSCRIPT_IR
    assert transcript_oc(h("Ya"), h("ADa"), h("Yb"), h("ADb")) == TRANSCRIPT_OC
    # Ordered concatenation does not depend on who is "a".
    assert transcript_oc(h("Yb"), h("ADb"), h("Ya"), h("ADa")) == TRANSCRIPT_OC


def test_isk_ir_and_sy_from_functions() -> None:
    assert derive_isk(h("sid"), h("K"), TRANSCRIPT_IR) == h("ISK_IR")
    assert derive_isk(h("sid"), h("K"), TRANSCRIPT_OC) == h("ISK_SY")


def test_sid_outputs_from_functions() -> None:
    assert sid_output(TRANSCRIPT_IR) == h("sid_output_ir")
    assert sid_output(TRANSCRIPT_OC) == h("sid_output_oc")


def _party(role: CPaceRole, side: str) -> CPace:
    return CPace(
        h("PRS"),
        role=role,
        sid=h("sid"),
        ci=h("CI"),
        ad=h("AD" + side),
        scalar=h("y" + side.lower()),
    )


def test_initiator_responder_run_reproduces_every_value() -> None:
    a = _party(CPaceRole.INITIATOR, "a")
    b = _party(CPaceRole.RESPONDER, "b")
    assert a.share == h("Ya")
    assert b.share == h("Yb")
    assert a.message() == lv_cat(h("Ya"), h("ADa"))
    assert b.message() == lv_cat(h("Yb"), h("ADb"))
    assert a.receive(b.message()) == h("ISK_IR")
    assert b.receive(a.message()) == h("ISK_IR")
    assert a.isk == b.isk == h("ISK_IR")
    assert a.sid_output() == b.sid_output() == h("sid_output_ir")
    assert a.peer_ad == b"ADb"
    assert b.peer_ad == b"ADa"


def test_symmetric_run_reproduces_every_value() -> None:
    a = _party(CPaceRole.SYMMETRIC, "a")
    b = _party(CPaceRole.SYMMETRIC, "b")
    assert a.receive(b.message()) == h("ISK_SY")
    assert b.receive(a.message()) == h("ISK_SY")
    assert a.sid_output() == b.sid_output() == h("sid_output_oc")


# --------------------------------------------------------------------------
# B.1.10: scalar_mult_vfy with low-order and non-canonical points
# --------------------------------------------------------------------------

LOW_ORDER_SCALAR = _hex("af46e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449aff")
# The draft's expected results q0..qb, keyed like the json's points.
EXPECTED_Q = {
    "Invalid Y0": NEUTRAL.hex(),
    "Invalid Y1": NEUTRAL.hex(),
    "Invalid Y2": NEUTRAL.hex(),
    "Invalid Y3": NEUTRAL.hex(),
    "Invalid Y4": NEUTRAL.hex(),
    "Invalid Y5": NEUTRAL.hex(),
    "Invalid Y6": "d8e2c776bbacd510d09fd9278b7edcd25fc5ae9adfba3b6e040e8d3b71b21806",
    "Invalid Y7": NEUTRAL.hex(),
    "Invalid Y8": "c85c655ebe8be44ba9c0ffde69f2fe10194458d137f09bbff725ce58803cdb38",
    "Invalid Y9": "db64dafa9b8fdd136914e61461935fe92aa372cb056314e1231bc4ec12417456",
    "Invalid Y10": "e062dcd5376d58297be2618c7498f55baa07d7e03184e8aada20bca28888bf7a",
    "Invalid Y11": "993c6ad11c4c29da9a56f7691fd0ff8d732e49de6250b6c2e80003ff4629a175",
}
# The seven the draft says MUST abort through K == G.I.
DRAFT_ABORTS = {f"Invalid Y{i}" for i in (0, 1, 2, 3, 4, 5, 7)}


def test_there_are_twelve_invalid_points() -> None:
    assert len(INVALID_POINTS) == 12
    assert set(INVALID_POINTS) == set(EXPECTED_Q)


@pytest.mark.parametrize("name", sorted(INVALID_POINTS))
def test_scalar_mult_vfy_results(name: str) -> None:
    point = bytes.fromhex(INVALID_POINTS[name])
    assert scalar_mult_vfy(LOW_ORDER_SCALAR, point).hex() == EXPECTED_Q[name]
    assert (EXPECTED_Q[name] == NEUTRAL.hex()) is (name in DRAFT_ABORTS)


def test_points_the_draft_accepts_are_all_non_canonical() -> None:
    # The five with a non-neutral q have bit 255 set: no X25519 output looks
    # like that, and p2pinvite refuses them as non-canonical encodings.
    for name in set(INVALID_POINTS) - DRAFT_ABORTS:
        assert int.from_bytes(bytes.fromhex(INVALID_POINTS[name]), "little") >= P, name


@pytest.mark.parametrize("role", list(CPaceRole))
@pytest.mark.parametrize("name", sorted(INVALID_POINTS))
def test_invalid_point_as_peer_share_is_refused(name: str, role: CPaceRole) -> None:
    me = _party(role, "a")
    with pytest.raises(InvalidPoint):
        me.receive(lv_cat(bytes.fromhex(INVALID_POINTS[name]), b"ADb"))


def test_all_twelve_invalid_points_refused_in_one_pass() -> None:
    refused = 0
    for hex_point in INVALID_POINTS.values():
        me = _party(CPaceRole.RESPONDER, "b")
        try:
            me.receive(lv_cat(bytes.fromhex(hex_point), b"ADa"))
        except InvalidPoint:
            refused += 1
    assert refused == 12


# --------------------------------------------------------------------------
# RFC 9380 appendix J, curve25519_XMD:SHA-512_ELL2_NU_: Q = map_to_curve(u)
# --------------------------------------------------------------------------

RFC9380_MAP: list[tuple[str, str, str]] = [
    (
        "608d892b641f0328523802a6603427c26e55e6f27e71a91a478148d45b5093cd",
        "51125222da5e763d97f3c10fcc92ea6860b9ccbbd2eb1285728f566721c1e65b",
        "343d2204f812d3dfc5304a5808c6c0d81a903a5d228b342442aa3c9ba5520a3d",
    ),
    (
        "46f5b22494bfeaa7f232cc8d054be68561af50230234d7d1d63d1d9abeca8da5",
        "7d56d1e08cb0ccb92baf069c18c49bb5a0dcd927eff8dcf75ca921ef7f3e6eeb",
        "404d9a7dc25c9c05c44ab9a94590e7c3fe2dcec74533a0b24b188a5d5dacf429",
    ),
    (
        "235fe40c443766ce7e18111c33862d66c3b33267efa50d50f9e8e5d252a40aaa",
        "3fbe66b9c9883d79e8407150e7c2a1c8680bee496c62fabe4619a72b3cabe90f",
        "08ec476147c9a0a3ff312d303dbbd076abb7551e5fce82b48ab14b433f8d0a7b",
    ),
]


@pytest.mark.parametrize(("u", "qx", "qy"), RFC9380_MAP)
def test_elligator2_rfc9380_vectors(u: str, qx: str, qy: str) -> None:
    # RFC 9380 prints field elements as big-endian integers.
    assert map_to_curve_elligator2(int(u, 16)) == (int(qx, 16), int(qy, 16))


def test_json_has_no_unchecked_values() -> None:
    checked: set[Any] = {
        "PRS", "CI", "sid", "g", "ya", "ADa", "Ya", "yb", "ADb", "Yb", "K",
        "ISK_IR", "ISK_SY", "sid_output_ir", "sid_output_oc",
    }
    assert set(V) == checked


# --------------------------------------------------------------------------
# Key confirmation (draft 10.4 with MAC = HMAC-SHA512). The draft publishes no
# vectors for it, so these are p2pinvite's own, pinned here so a change in the
# formula is caught and docs/PROTOCOL.md Part 6 can quote them. They are also
# recomputed with `cryptography`'s HMAC, an implementation the module does not use.
# --------------------------------------------------------------------------

CONFIRMATION = {
    "ir": {
        "mac_key": "29258cb342b2d939adf80ab06e7970741080d8f9655ed5adc75813e5f7803a45"
        "4c9058b8f0f479cf6e7506c73818c7b626fcdbb703e74688879b0b2d39cfe4c8",
        "Ta": "214b05fed53d47d1ac815b42eae64cc68f93f2013db81db04cc9a4f12a1a5ca5"
        "13cb2458c9071bbecf720556872de984260fdc2b576c8f5331c455de81bd22dd",
        "Tb": "b792827dc20f93390415cba5f17cbdbb00556053ce74d334e16ffd52258c1320"
        "36f933ece5527ca39ccd6d25ac7030c15b15ae6ee45b7665e5df9dc651ad9362",
    },
    "sy": {
        "mac_key": "08e5dfb1727fb4525902976c47ef31a5796ec1e6bcdce63dde20f310d9be97f4"
        "fefa9cf8dd76c00c049483c0bb8a35b8f9ccf58cd00c597e33ea8d9d5bb1b2de",
        "Ta": "9cd23472497a871d1149138cbbab15a2681aebdc1d500cdf590930777e1fbbe1"
        "ef8d05abc7f1bf2487c08fdcb42cd2231cbae94258cab060f55a06fb49eb92aa",
        "Tb": "cda6f7e6c992490ea98d1fc3207cd8d30e9590725b88fdb63b4ad9d670a11bdb"
        "5ca1e9e50b83100318d4e7a9573a2179dc90e29f13a8a29e3dfdc09b956165c0",
    },
}


def _independent_hmac(key: bytes, data: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import hmac as crypto_hmac

    mac = crypto_hmac.HMAC(key, hashes.SHA512())
    mac.update(data)
    return mac.finalize()


@pytest.mark.parametrize(
    ("mode", "roles", "isk_name"),
    [
        ("ir", (CPaceRole.INITIATOR, CPaceRole.RESPONDER), "ISK_IR"),
        ("sy", (CPaceRole.SYMMETRIC, CPaceRole.SYMMETRIC), "ISK_SY"),
    ],
)
def test_confirmation_tags(mode: str, roles: tuple[CPaceRole, CPaceRole], isk_name: str) -> None:
    expected = CONFIRMATION[mode]
    mac_key = hashlib.sha512(b"CPaceMac" + h("sid") + h(isk_name)).digest()
    assert mac_key.hex() == expected["mac_key"]
    assert _independent_hmac(mac_key, lv_cat(h("Ya"), h("ADa"))).hex() == expected["Ta"]
    assert _independent_hmac(mac_key, lv_cat(h("Yb"), h("ADb"))).hex() == expected["Tb"]
    a = CPace(h("PRS"), role=roles[0], sid=h("sid"), ci=h("CI"), ad=h("ADa"), scalar=h("ya"))
    b = CPace(h("PRS"), role=roles[1], sid=h("sid"), ci=h("CI"), ad=h("ADb"), scalar=h("yb"))
    a.receive(b.message())
    b.receive(a.message())
    assert a.confirmation_tag().hex() == expected["Ta"]
    assert b.confirmation_tag().hex() == expected["Tb"]
    a.verify_confirmation_tag(b.confirmation_tag())
    b.verify_confirmation_tag(a.confirmation_tag())
