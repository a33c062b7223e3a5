"""Generate tests/vectors/rendezvous.json (docs/RENDEZVOUS.md §8).

Fixed inputs (the secret ``00 01 .. 1f``, device keys ``0x40..`` and ``0x20..``
given in the "wrong" order on purpose, a fixed nonce) and every output another
implementation must reproduce: the derived names of an invitation and of a
member pair, the handshake line for the relay, a candidates plaintext, its
sealed box, and the mailbox ``add`` frame that carries it.
tests/rendezvous/test_names.py checks the file against an independent HKDF
(hmac alone) and the primitives, so the file is not just our own output.

Run from the repository root: ``python -m tests.rendezvous.make_vectors``.
The output is deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from p2pinvite.rendezvous.candidates import (
    AD_LABEL,
    PHASE,
    Candidates,
    encode_candidates,
    seal_candidates,
)
from p2pinvite.rendezvous.mailbox_wire import encode_add
from p2pinvite.rendezvous.names import (
    APPID,
    CONTEXT_INVITATION,
    CONTEXT_MEMBER_PAIR,
    RendezvousNames,
    for_invitation,
    for_member_pair,
)
from p2pinvite.rendezvous.transit import relay_line

OUT = Path(__file__).resolve().parents[1] / "vectors" / "rendezvous.json"
SECRET = bytes(range(32))
DEVICE_A = bytes(range(0x40, 0x60))  # the larger key: side 1
DEVICE_B = bytes(range(0x20, 0x40))  # the smaller key: side 0
NONCE = bytes(range(0xA0, 0xAC))
MESSAGE_ID = "0001020304050607"
CANDIDATES = Candidates(addrs=(("192.0.2.7", 40123), ("2001:db8::7", 40123)),
                        relay=("relay.example.net", 4001))


def _names(n: RendezvousNames, context: bytes) -> dict[str, Any]:
    return {"context": context.hex(), "mailbox_id": n.mailbox_id,
            "sealing_key": n.sealing_key.hex(), "relay_token": n.relay_token.hex(),
            "sides": list(n.sides)}


def build() -> dict[str, Any]:
    """The vector as a JSON-ready dict."""
    inv = for_invitation(SECRET)
    pair = for_member_pair(SECRET, DEVICE_A, DEVICE_B)
    side = inv.side(0)
    box = seal_candidates(inv.sealing_key, CANDIDATES, sender_side=side, nonce=NONCE)
    return {
        "description": "p2pinvite rendezvous (docs/RENDEZVOUS.md): HKDF-SHA256 names, "
                       "sealed candidates (ChaCha20-Poly1305), relay line, mailbox add frame",
        "appid": APPID,
        "secret": SECRET.hex(),
        "invitation": _names(inv, CONTEXT_INVITATION),
        "member_pair": {"device_a": DEVICE_A.hex(), "device_b": DEVICE_B.hex(),
                        **_names(pair, CONTEXT_MEMBER_PAIR + DEVICE_B + DEVICE_A)},
        "relay_line": relay_line(inv.relay_token, inv.side(1)).decode("ascii"),
        "candidates": {
            "sealing_key": inv.sealing_key.hex(),
            "sender_side": side,
            "addrs": [list(a) for a in CANDIDATES.addrs],
            "relay": list(CANDIDATES.relay) if CANDIDATES.relay else None,
            "plaintext": encode_candidates(CANDIDATES).hex(),
            "nonce": NONCE.hex(),
            "ad": (AD_LABEL + b"\x00" + side.encode("ascii")).hex(),
            "box": box.hex(),
        },
        "add_frame": encode_add(PHASE, box, MESSAGE_ID),
    }


def main() -> None:
    OUT.write_text(json.dumps(build(), indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
