"""Write tests/vectors/ed25519-strict.json: ``python -m tests.crypto.make_ed25519_vectors``.

Constructed vectors are built with the slow reference (:mod:`.ed25519_ref`)
from seeds and counters, so a rerun gives the same file. ``expected`` and
``rule`` come from the reference's classification of each vector under the
strict rules; ``openssl`` is what plain ``cryptography`` (OpenSSL) verification
answers on this machine. tests/crypto/test_ed25519.py re-derives all three,
so the file cannot silently drift from the rules or from the library.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import ed25519_ref as ref

OUT = Path(__file__).parent.parent / "vectors" / "ed25519-strict.json"

#: The order in which the strict verifier applies its rules; a vector that
#: breaks several is refused by (and labelled with) the first.
RULES = [
    ("A_non_canonical", "public key A: y >= p, or the sign bit set while x = 0 (y = 1 or p - 1)"),
    ("A_small_order", "public key A is one of the 8 points of order dividing 8"),
    ("R_non_canonical", "R (signature bytes 0..31): y >= p, or the sign bit set while x = 0"),
    ("R_small_order", "R is one of the 8 points of order dividing 8"),
    ("S_out_of_range", "S (signature bytes 32..63, little-endian) >= L"),
    ("equation", "the cofactorless equation [S]B = R + [k]A fails, k = SHA-512(R||A||M) mod L"),
]

DOC = {
    "description": (
        "Ed25519 verification vectors for p2pinvite's strict rules "
        "(p2pinvite/crypto/ed25519.py, docs/PROTOCOL.md Part 8 section 1.4). "
        "Plain RFC 8032 / OpenSSL verification accepts some of these (field "
        "'openssl'); the strict rules refuse every vector whose 'expected' is "
        "'invalid'. Regenerate with: python -m tests.crypto.make_ed25519_vectors"
    ),
    "rules": [f"{name}: {text}" for name, text in RULES],
    "fields": {
        "name": "unique name",
        "source": "where the vector comes from",
        "public_key": "hex, 32 bytes (A)",
        "message": "hex",
        "signature": "hex, 64 bytes: R (32) || S (32, little-endian)",
        "expected": "'valid' or 'invalid' under the strict rules",
        "rule": "for invalid vectors, the first rule (in 'rules' order) that refuses it",
        "openssl": "whether plain cryptography/OpenSSL Ed25519 verification accepts it",
        "why": "what the vector exercises",
    },
    "sources": {
        "rfc8032": "RFC 8032 section 7.1, TEST 1 and TEST 2",
        "taming": (
            "Chalkias, Garillot, Nikolaenko, 'Taming the many EdDSAs' (SSR 2020), "
            "cases 0-11 as published in novifinancial/ed25519-speccheck cases.txt "
            "(data only; 'why' is our own classification)"
        ),
        "constructed": "built for p2pinvite with tests/crypto/ed25519_ref.py",
    },
}

RFC8032 = [
    # (name, secret seed, public key, message, signature), RFC 8032 section 7.1.
    (
        "rfc8032_test1",
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "rfc8032_test2",
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
]

#: Chalkias et al., cases 0..11: (message, public key, signature), hex.
TAMING = [
    ("8c93255d71dcab10e8f379c26200f3c7bd5f09d9bc3068d3ef4edeb4853022b6",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"
     "0000000000000000000000000000000000000000000000000000000000000000"),
    ("9bd9f44f4dcc75bd531b56b2cd280b0bb38fc1cd6d1230e14861d861de092e79",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
     "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43"
     "a5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04"),
    ("aebf3f2601a0c8c5d39cc7d8911642f740b78168218da8471772b35f9d35b9ab",
     "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"
     "8c4bd45aecaca5b24fb97bc10ac27ac8751a7dfe1baff8b953ec9f5833ca260e"),
    ("9bd9f44f4dcc75bd531b56b2cd280b0bb38fc1cd6d1230e14861d861de092e79",
     "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
     "9046a64750444938de19f227bb80485e92b83fdb4b6506c160484c016cc1852f"
     "87909e14428a7a1d62e9f22f3d3ad7802db02eb2e688b6c52fcd6648a98bd009"),
    ("e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c",
     "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
     "160a1cb0dc9c0258cd0a7d23e94d8fa878bcb1925f2c64246b2dee1796bed512"
     "5ec6bc982a269b723e0668e540911a9a6a58921d6925e434ab10aa7940551a09"),
    ("e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c",
     "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
     "21122a84e0b5fca4052f5b1235c80a537878b38f3142356b2c2384ebad4668b7"
     "e40bc836dac0f71076f9abe3a53f9c03c1ceeeddb658d0030494ace586687405"),
    ("85e241a07d148b41e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec40",
     "442aad9f089ad9e14647b1ef9099a1ff4798d78589e66f28eca69c11f582a623",
     "e96f66be976d82e60150baecff9906684aebb1ef181f67a7189ac78ea23b6c0e"
     "547f7690a0e2ddcd04d87dbc3490dc19b3b3052f7ff0538cb68afb369ba3a514"),
    ("85e241a07d148b41e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec40",
     "442aad9f089ad9e14647b1ef9099a1ff4798d78589e66f28eca69c11f582a623",
     "8ce5b96c8f26d0ab6c47958c9e68b937104cd36e13c33566acd2fe8d38aa1942"
     "7e71f98a473474f2f13f06f97c20d58cc3f54b8bd0d272f42b695dd7e89a8c22"),
    ("9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41",
     "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
     "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
     "03be9678ac102edcd92b0210bb34d7428d12ffc5df5f37e359941266a4e35f0f"),
    ("9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41",
     "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43",
     "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
     "ca8c5b64cd208982aa38d4936621a4775aa233aa0505711d8fdcfdaa943d4908"),
    ("e96b7021eb39c1a163b6da4e3093dcd3f21387da4cc4572be588fafae23c155b",
     "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
     "a9d55260f765261eb9b84e106f665e00b867287a761990d7135963ee0a7d59dc"
     "a5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04"),
    ("39a591f5321bbe07fd5a23dc2f39d025d74526615746727ceefd6e82ae65c06f",
     "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
     "a9d55260f765261eb9b84e106f665e00b867287a761990d7135963ee0a7d59dc"
     "a5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04"),
]


# -- what the vectors record ----------------------------------------------------------


def openssl_accepts(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Plain (non-strict) verification by cryptography/OpenSSL."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except InvalidSignature:
        return False
    return True


def describe_point(enc: bytes) -> str:
    """'small order n', 'mixed order', 'order L', 'not a point'; '(non-canonical)' if so."""
    pt = ref.decode_lax(enc)
    if pt is None:
        return "not a point"
    if ref.order_divides(8, pt):
        n = next(n for n in (1, 2, 4, 8) if ref.order_divides(n, pt))
        kind = f"small order {n}"
    elif ref.order_divides(ref.L, pt):
        kind = "order L"
    else:
        kind = "mixed order"
    return kind + ("" if ref.canonical(enc) else " (non-canonical)")


# -- construction -------------------------------------------------------------------


def secret(seed: bytes) -> tuple[int, bytes]:
    """(a, A) for an RFC 8032 seed: the clamped scalar and the public key."""
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little") & ((1 << 254) - 8) | (1 << 254)
    return a, ref.encode(ref.mul(a, ref.B))


def find_message(tag: str, ok: Callable[[bytes], bool]) -> bytes:
    """The first message 'tag #i' (i = 0, 1, ...) for which *ok* holds."""
    for i in range(10_000):
        m = f"{tag} #{i}".encode()
        if ok(m):
            return m
    raise AssertionError(f"no message found for {tag}")


def le(n: int) -> bytes:
    """*n* as 32 little-endian bytes."""
    return n.to_bytes(32, "little")


def vector(name: str, source: str, a: bytes, m: bytes, sig: bytes, why: str) -> dict[str, Any]:
    """One JSON vector, with its expected result and OpenSSL's answer filled in."""
    rule = ref.strict_rule(a, sig, m)
    return {
        "name": name,
        "source": source,
        "public_key": a.hex(),
        "message": m.hex(),
        "signature": sig.hex(),
        "expected": "valid" if rule is None else "invalid",
        "rule": rule,
        "openssl": openssl_accepts(a, sig, m),
        "why": why,
    }


def build() -> list[dict[str, Any]]:
    """Every vector, in file order."""
    out: list[dict[str, Any]] = []
    tors = ref.torsion()
    order = {0: 1, 4: 2, 2: 4, 6: 4, 1: 8, 3: 8, 5: 8, 7: 8}
    ident = ref.encode(ref.IDENTITY)
    zero = bytes(32)

    for name, seed, pub, msg, sig in RFC8032:
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed))
        assert key.public_key().public_bytes_raw().hex() == pub
        assert key.sign(bytes.fromhex(msg)).hex() == sig
        out.append(vector(name, "rfc8032", bytes.fromhex(pub), bytes.fromhex(msg),
                          bytes.fromhex(sig), "a valid signature: must verify"))
    test1 = out[0]
    t1_a, t1_sig = bytes.fromhex(test1["public_key"]), bytes.fromhex(test1["signature"])

    # The security review's forgery: one signature valid for every message.
    for i, m in enumerate((b"p2pinvite: any message at all", b"\x00\xffa second, unrelated one")):
        out.append(vector(
            f"review_forgery_identity_{i + 1}", "constructed", ident, m, ident + zero,
            "A = R = identity, S = 0: [0]B = identity + [k]identity holds for every "
            "message, so plain verification accepts it; refused because A has small order"))

    # Each small-order A with R = identity and S = 0: the equation holds when
    # [k]A = identity, i.e. k = 0 mod the order of A; search the message.
    for i in sorted(range(8), key=lambda i: (order[i], i)):
        a_enc = ref.encode(tors[i])
        n = order[i]
        m = find_message(f"small-order A, order {n}",
                         lambda m, a_enc=a_enc, n=n: ref.challenge(ident, a_enc, m) % n == 0)
        out.append(vector(
            f"small_order_A_order{n}_{a_enc[:2].hex()}_{a_enc[31]:02x}", "constructed",
            a_enc, m, ident + zero,
            f"A has order {n}, R = identity, S = 0, message chosen so that k = 0 mod {n}: "
            "the equation holds (a forgery with no secret); refused because A has small order"))

    # Small-order R with an equation that holds. With a prime-order A = [a]B only
    # R = identity can work (S = k a: a signature with nonce r = 0). With a
    # mixed-order A = [a]B + T (T of order 8) every small R = [j]T can: choose
    # the message so that [k]T = -R, then S = k a.
    a, a_pub = secret(b"\x42" * 32)
    pub = Ed25519PrivateKey.from_private_bytes(b"\x42" * 32).public_key().public_bytes_raw()
    assert a_pub == pub
    m = b"small-order R = identity"
    k = ref.challenge(ident, a_pub, m)
    out.append(vector(
        "small_order_R_identity", "constructed", a_pub, m, ident + le(k * a % ref.L),
        "A of order L, R = identity, S = k a: the equation holds (nonce r = 0, which "
        "also leaks a); refused because R has small order"))
    mixed = ref.add(ref.mul(a, ref.B), tors[1])
    mixed_pub = ref.encode(mixed)
    for j in range(1, 8):
        r_enc = ref.encode(tors[j])
        m = find_message(f"small-order R, order {order[j]}",
                         lambda m, r_enc=r_enc, j=j:
                         (ref.challenge(r_enc, mixed_pub, m) + j) % 8 == 0)
        k = ref.challenge(r_enc, mixed_pub, m)
        out.append(vector(
            f"small_order_R_order{order[j]}_{r_enc[:2].hex()}_{r_enc[31]:02x}", "constructed",
            mixed_pub, m, r_enc + le(k * a % ref.L),
            f"A = [a]B + T (mixed order), R of order {order[j]}, S = k a, message chosen so "
            "that R + [k]T = identity: the equation holds; refused because R has small order"))

    # Mixed-order A: accepted when the cofactorless equation holds (the torsion
    # part cancels), refused by the equation otherwise; never by a key rule.
    r = int.from_bytes(hashlib.sha512(b"nonce").digest(), "little") % ref.L
    r_enc = ref.encode(ref.mul(r, ref.B))
    for name, cancels in (("mixed_order_A_valid", True), ("mixed_order_A_torsion_left", False)):
        m = find_message(name, lambda m, cancels=cancels:
                         (ref.challenge(r_enc, mixed_pub, m) % 8 == 0) == cancels)
        k = ref.challenge(r_enc, mixed_pub, m)
        why = ("A = [a]B + T has a small-order component but is not of small order; "
               "R = [r]B, S = r + k a, " + (
                   "k = 0 mod 8 so [k]T vanishes and the equation holds: valid (the strict "
                   "rules refuse only small-order points, as ed25519-dalek verify_strict does)"
                   if cancels else
                   "k != 0 mod 8 so [k]T remains: only a cofactored verifier would accept; "
                   "refused by the cofactorless equation"))
        out.append(vector(name, "constructed", mixed_pub, m, r_enc + le((r + k * a) % ref.L),
                          why))

    # Non-canonical A that plain verification decodes to a small-order point.
    for name, a_enc, n, what in (
        ("non_canonical_A_y_p_plus_1", le(ref.P + 1), 1, "y = p + 1 (the identity, y >= p)"),
        ("non_canonical_A_y_p", le(ref.P), 4, "y = p (an order-4 point, y >= p)"),
        ("non_canonical_A_identity_sign_bit", le(1 | 1 << 255), 1,
         "y = 1 with the sign bit set (the identity, x = 0)"),
        ("non_canonical_A_order2_sign_bit", le(ref.P - 1 | 1 << 255), 2,
         "y = p - 1 with the sign bit set (the order-2 point, x = 0)"),
    ):
        m = find_message(name, lambda m, a_enc=a_enc, n=n: ref.challenge(ident, a_enc, m) % n == 0)
        out.append(vector(name, "constructed", a_enc, m, ident + zero,
                          f"A encoded as {what}, R = identity, S = 0, k = 0 mod {n}: the "
                          "equation holds for the point it stands for; refused because A is "
                          "not canonical"))

    # Non-canonical R standing for the identity, with S = k a so the group
    # equation holds; OpenSSL refuses these already (it compares R byte-wise).
    for name, r_enc, what in (
        ("non_canonical_R_y_p_plus_1", le(ref.P + 1), "y = p + 1"),
        ("non_canonical_R_identity_sign_bit", le(1 | 1 << 255), "y = 1 with the sign bit set"),
    ):
        m = name.encode()
        k = ref.challenge(r_enc, a_pub, m)
        out.append(vector(name, "constructed", a_pub, m, r_enc + le(k * a % ref.L),
                          f"A of order L, R = the identity encoded as {what}, S = k a: the "
                          "group equation holds; refused because R is not canonical"))

    # S out of range: a valid signature with L added to S.
    s = int.from_bytes(t1_sig[32:], "little")
    out.append(vector("S_plus_L_rfc8032_test1", "constructed", t1_a, b"",
                      t1_sig[:32] + le(s + ref.L),
                      "RFC 8032 TEST 1 with S + L: [S + L]B = [S]B, so the equation still "
                      "holds; refused because S >= L (a second signature for one message)"))
    out.append(vector("S_all_ones", "constructed", t1_a, b"",
                      t1_sig[:32] + b"\xff" * 32,
                      "RFC 8032 TEST 1's R with S = 2^256 - 1; refused because S >= L"))

    # Ordinary failures, so the file also says what "invalid" means for good keys.
    out.append(vector("rfc8032_test1_other_message", "constructed", t1_a, b"\x00", t1_sig,
                      "RFC 8032 TEST 1's signature on another message: the equation fails"))
    flipped = bytes([t1_sig[0] ^ 1]) + t1_sig[1:]
    out.append(vector("rfc8032_test1_R_bit_flipped", "constructed", t1_a, b"", flipped,
                      "RFC 8032 TEST 1 with one bit of R flipped: the equation fails"))

    for i, (msg, pub, sig) in enumerate(TAMING):
        a_enc, sig_b, m = bytes.fromhex(pub), bytes.fromhex(sig), bytes.fromhex(msg)
        s_int = int.from_bytes(sig_b[32:], "little")
        s_text = "S = 0" if s_int == 0 else "0 < S < L" if s_int < ref.L else "S >= L"
        cofactored = ref.equal(
            ref.mul(8, ref.mul(s_int, ref.B)),
            ref.mul(8, ref.add(ref.decode_lax(sig_b[:32]) or ref.IDENTITY,
                               ref.mul(ref.challenge(sig_b[:32], a_enc, m),
                                       ref.decode_lax(a_enc) or ref.IDENTITY))))
        why = (f"Taming the many EdDSAs, case {i}: A {describe_point(a_enc)}, "
               f"R {describe_point(sig_b[:32])}, {s_text}; cofactorless equation "
               f"{'holds' if ref.verify_cofactorless(a_enc, sig_b, m) else 'fails'}, "
               f"cofactored {'holds' if cofactored else 'fails'}")
        out.append(vector(f"taming_case_{i}", "taming", a_enc, m, sig_b, why))
    return out


def main() -> None:
    """Write the vector file."""
    assert tuple(name for name, _ in RULES) == ref.STRICT_RULES
    doc = {**DOC, "vectors": build()}
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {len(doc['vectors'])} vectors to {OUT}")


if __name__ == "__main__":
    main()
