"""The sealed candidates message: where to dial me (docs/RENDEZVOUS.md §3).

Each party puts one message in the mailbox: the addresses it can be reached
at and the transit relay it will wait at. The plaintext is canonical msgpack
(:mod:`p2pinvite.wire`)::

    {"v": 1, "addrs": [[host, port], ...],    # <= 8 direct addresses, IP literals
     "relay": [host, port] | nil}             # a transit relay: IP literal or DNS name

sealed under the rendezvous' sealing key (:mod:`.names`)::

    box = nonce (12 random bytes) || ChaCha20-Poly1305(key, nonce, plaintext, ad)
    ad  = "p2pinvite/rendezvous/v1/candidates" || 0x00 || sender's side (ASCII)

The mailbox sees only the box. Binding the sender's side means a box cannot
be reflected back to its sender as if the other party had written it; the
reader opens with the side it *expects* (the other role's), never with the
side the mailbox claims. Candidates are only hints: whoever answers at an
address must still finish the Noise handshake, so a replayed or stale box can
at worst make a join fail.

Pure functions, no I/O. Errors: :class:`~p2pinvite.errors.DecodeError` for
anything malformed (:class:`~p2pinvite.errors.FrameTooLarge` when too long),
:class:`~p2pinvite.errors.BadTag` when a box does not open (another key or
side, or tampering), :class:`~p2pinvite.errors.LocalProtocolError` when
*we* try to seal something out of bounds.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ..errors import BadTag, DecodeError, FrameTooLarge, LocalProtocolError
from ..wire import expect_int, expect_map, pack, unpack
from .names import LABEL_PREFIX

__all__ = [
    "AD_LABEL",
    "CANDIDATES_VERSION",
    "MAX_ADDRS",
    "MAX_CANDIDATES",
    "MAX_SEALED",
    "NONCE_SIZE",
    "PHASE",
    "Address",
    "Candidates",
    "decode_candidates",
    "encode_candidates",
    "offerable",
    "open_candidates",
    "seal_candidates",
]

CANDIDATES_VERSION: Final = 1
#: The mailbox phase the sealed candidates are added under.
PHASE: Final = "candidates"
#: Most direct addresses in one message.
MAX_ADDRS: Final = 8
#: Largest plaintext: 9 addresses of at most 253 characters each fit (measured: ~2.4 KiB).
MAX_CANDIDATES: Final = 3072
NONCE_SIZE: Final = 12
_TAG: Final = 16
#: Largest box: nonce + plaintext + tag.
MAX_SEALED: Final = NONCE_SIZE + MAX_CANDIDATES + _TAG
#: Fixed part of the associated data (the sender's side follows, after a zero byte).
AD_LABEL: Final = LABEL_PREFIX + b"candidates"
_KEY: Final = 32
_MAX_HOST: Final = 253
# A DNS name: dot-separated labels of letters, digits and inner hyphens (RFC 1123).
_LABEL_RE: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Candidates:
    """Where a party can be reached: direct addresses and, optionally, a relay."""

    addrs: tuple[Address, ...] = ()
    relay: Address | None = None


def _ip_host(host: str, what: str) -> str:
    if "%" in host:  # an IPv6 scope names one of the sender's interfaces: useless to us
        raise DecodeError(f"candidates: {what} host carries a scope id")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise DecodeError(f"candidates: {what} host is not an IP address") from None
    if ip.is_unspecified or ip.is_multicast:
        raise DecodeError(f"candidates: {what} host must be a unicast address")
    return str(ip)


def _relay_host(host: str) -> str:
    try:
        return _ip_host(host, "relay")
    except DecodeError:
        pass
    name = host[:-1] if host.endswith(".") else host
    if not (0 < len(host) <= _MAX_HOST and all(_LABEL_RE.fullmatch(x) for x in name.split("."))):
        raise DecodeError("candidates: relay host is neither an IP address nor a DNS name")
    return host


def _address(item: Any, what: str, *, names_ok: bool) -> Address:
    if not (isinstance(item, list | tuple) and len(item) == 2 and isinstance(item[0], str)
            and isinstance(item[1], int) and not isinstance(item[1], bool)):
        raise DecodeError(f"candidates: {what} is [host, port]")
    host, port = item
    if not 1 <= port <= 65535:
        raise DecodeError(f"candidates: {what} port out of range")
    if len(host) > _MAX_HOST:
        raise DecodeError(f"candidates: {what} host too long")
    return (_relay_host(host) if names_ok else _ip_host(host, what)), port


def encode_candidates(candidates: Candidates) -> bytes:
    """The canonical plaintext of *candidates* (``LocalProtocolError`` if out of bounds)."""
    if len(candidates.addrs) > MAX_ADDRS:
        raise LocalProtocolError(f"at most {MAX_ADDRS} candidate addresses")
    try:
        addrs = [list(_address(list(a), "an address", names_ok=False)) for a in candidates.addrs]
        relay = (None if candidates.relay is None
                 else list(_address(list(candidates.relay), "the relay", names_ok=True)))
    except DecodeError as exc:
        raise LocalProtocolError(str(exc)) from None
    return pack({"v": CANDIDATES_VERSION, "addrs": addrs, "relay": relay})


def decode_candidates(data: bytes) -> Candidates:
    """Decode a candidates plaintext strictly (``DecodeError``): exact fields, types, bounds."""
    if len(data) > MAX_CANDIDATES:
        raise FrameTooLarge(f"candidates of {len(data)} bytes exceed {MAX_CANDIDATES}")
    m: Mapping[str, Any] = expect_map(unpack(data, max_size=MAX_CANDIDATES, max_items=16),
                                      "candidates")
    if set(m) != {"v", "addrs", "relay"}:
        raise DecodeError("candidates have missing or unknown fields")
    if expect_int(m, "v") != CANDIDATES_VERSION:
        raise DecodeError("unsupported candidates version")
    addrs = m["addrs"]
    if not isinstance(addrs, list) or len(addrs) > MAX_ADDRS:
        raise DecodeError(f"candidates: addrs is a list of at most {MAX_ADDRS}")
    relay = m["relay"]
    return Candidates(
        tuple(_address(a, "an address", names_ok=False) for a in addrs),
        None if relay is None else _address(relay, "the relay", names_ok=True),
    )


def _ad(sender_side: str) -> bytes:
    if not isinstance(sender_side, str) or not sender_side.isascii() or not sender_side:
        raise LocalProtocolError("a side is a non-empty ASCII string")
    return AD_LABEL + b"\x00" + sender_side.encode("ascii")


def _aead(key: bytes) -> ChaCha20Poly1305:
    if not isinstance(key, bytes) or len(key) != _KEY:
        raise LocalProtocolError(f"a sealing key is {_KEY} bytes")
    return ChaCha20Poly1305(key)


def seal_candidates(key: bytes, candidates: Candidates, *, sender_side: str,
                    nonce: bytes | None = None) -> bytes:
    """Seal *candidates* under *key*, as written by *sender_side*.

    *nonce* fixes the nonce (test vectors only; never reuse one under a key):
    by default 12 fresh bytes from the OS CSPRNG. Random nonces are safe here
    because a key seals a handful of messages, far from the 2**32 bound.
    """
    if nonce is None:
        nonce = os.urandom(NONCE_SIZE)
    if len(nonce) != NONCE_SIZE:
        raise LocalProtocolError(f"a nonce is {NONCE_SIZE} bytes")
    aead, ad = _aead(key), _ad(sender_side)
    return nonce + aead.encrypt(nonce, encode_candidates(candidates), ad)


def open_candidates(key: bytes, box: bytes, *, sender_side: str) -> Candidates:
    """Open a box written by *sender_side* (the side we expect, not the one claimed)."""
    aead, ad = _aead(key), _ad(sender_side)
    if not isinstance(box, bytes) or len(box) < NONCE_SIZE + _TAG:
        raise DecodeError("a sealed candidates box is at least 28 bytes")
    if len(box) > MAX_SEALED:
        raise FrameTooLarge(f"a sealed candidates box of {len(box)} bytes exceeds {MAX_SEALED}")
    try:
        plain = aead.decrypt(box[:NONCE_SIZE], box[NONCE_SIZE:], ad)
    except InvalidTag:
        raise BadTag("the candidates do not open: another rendezvous or side, or tampered"
                     ) from None
    return decode_candidates(plain)


def offerable(addresses: Sequence[Address]) -> tuple[Address, ...]:
    """The addresses worth putting in our candidates: IP literals that are not
    loopback, unspecified or link-local (no peer elsewhere could use those), at
    most :data:`MAX_ADDRS`."""
    out: list[Address] = []
    for host, port in addresses:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            continue
        if not (ip.is_loopback or ip.is_unspecified or ip.is_link_local):
            out.append((str(ip), port))
    return tuple(out[:MAX_ADDRS])
