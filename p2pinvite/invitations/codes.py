"""Invitation codes as people carry them: link codes, short codes and PINs.

* :class:`LinkCode` -- ``p2pinvite:`` + RFC 4648 base32 of a compact binary
  record ending in a CRC-32. Everything a guest needs to find the host and
  check it is the right one (the exact layout is in docs/PROTOCOL.md Part 3).
* :class:`ShortCode` -- 12 digits, ``DDDD-SSSS-SSSC``: a public 4-digit
  discriminator, a 7-digit secret (the CPace password) and a Damm check digit.
* PINs -- 6 digits from the CSPRNG, shown on the host, typed on the guest.

Parsing is strict and total: any text that is not a valid code raises
:class:`~p2pinvite.errors.CodeError` (``"not a valid p2pinvite code: ..."``)
and nothing else. Input length is capped before any decoding work, and error
messages never quote the input (it may hold a secret).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import secrets
import struct
import zlib
from dataclasses import dataclass, field
from typing import Final

from ..errors import CodeError, RendezvousAddressError
from .model import AuthMethod, Invitation, InvitationKind

__all__ = [
    "LINK_CODE_VERSION",
    "LINK_PREFIX",
    "MAX_HINTS",
    "MAX_LINK_CODE_LENGTH",
    "PIN_LENGTH",
    "CodeError",
    "LinkCode",
    "ShortCode",
    "damm_check_digit",
    "damm_valid",
    "generate_pin",
    "is_trivial_digits",
    "parse_pin",
]

LINK_PREFIX: Final = "p2pinvite:"
LINK_CODE_VERSION: Final = 1
#: The version of a link code that names a rendezvous mailbox (the extension
#: after the hints); without one a code stays version 1, byte for byte.
LINK_CODE_VERSION_MAILBOX: Final = 2
#: At most this many address hints fit in a link code.
MAX_HINTS: Final = 8
#: Longest mailbox URL a link code carries, in bytes (ASCII).
MAX_MAILBOX_URL: Final = 200
_EXT_MAILBOX: Final = 1  # extension type: the mailbox URL

_KIND_CODES: Final = {InvitationKind.DEVICE: 0, InvitationKind.SPACE: 1}
# Value 2 is AuthMethod.SHORT: a short-code pairing has no link, so a link
# code naming it is refused (the value stays reserved so numbering matches
# the record's enum order).
_AUTH_CODES: Final = {AuthMethod.NONE: 0, AuthMethod.PIN: 1, AuthMethod.KEY: 3}
_KINDS_BY_CODE: Final = {v: k for k, v in _KIND_CODES.items()}
_AUTHS_BY_CODE: Final = {v: k for k, v in _AUTH_CODES.items()}

# version u8, kind u8, auth u8, id 16, secret 32, target 32, host key 32, expiry u32
_FIXED: Final = struct.Struct(">BBB16s32s32s32sI")
_HINT_FAMILIES: Final = {4: 4, 6: 16}  # family byte -> address length
_CRC_LEN: Final = 4
_MAX_BINARY: Final = (_FIXED.size + 1 + MAX_HINTS * (1 + 16 + 2) + 2 + MAX_MAILBOX_URL
                      + _CRC_LEN)
#: Longest valid link code in characters (8 IPv6 hints and the longest
#: mailbox URL): 10 + ceil(478*8/5).
MAX_LINK_CODE_LENGTH: Final = len(LINK_PREFIX) + (_MAX_BINARY * 8 + 4) // 5
#: Anything longer than this is refused before even stripping whitespace.
_MAX_INPUT: Final = 1024
_B32_ALPHABET: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
# Unpadded base32 lengths are never 1, 3 or 6 (mod 8): no byte count gives them.
_B32_BAD_REMAINDERS: Final = frozenset({1, 3, 6})


def _invalid(why: str) -> CodeError:
    return CodeError(f"not a valid p2pinvite code: {why}")


# -- link codes ----------------------------------------------------------------


def check_mailbox_url(url: str) -> str:
    """*url* if it is a mailbox URL a link code can carry, else :class:`CodeError`.

    At most :data:`MAX_MAILBOX_URL` printable ASCII characters, and a URL the
    rendezvous client accepts (``ws://`` or ``wss://``, a host, no user
    information, query or fragment: :func:`~p2pinvite.rendezvous.mailbox_wire.check_mailbox_url`).
    """
    if not (isinstance(url, str) and url.isascii() and url.isprintable()
            and 0 < len(url) <= MAX_MAILBOX_URL):
        raise _invalid(f"a mailbox URL is 1..{MAX_MAILBOX_URL} printable ASCII characters")
    # Here, not at the top: most codes name no mailbox, and the CLI's start-up
    # should not pay for urllib.
    from ..rendezvous.mailbox_wire import check_mailbox_url as check_url

    try:
        return check_url(url)
    except RendezvousAddressError as exc:
        raise _invalid(str(exc)) from None


def _canonical_hint(hint: tuple[str, int]) -> tuple[str, int]:
    try:
        host, port = hint
        addr = ipaddress.ip_address(host)
    except (TypeError, ValueError):
        raise _invalid("an address hint must be (IPv4 or IPv6 address, port)") from None
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
        # 16 bytes cannot carry a scope; the guest picks its own interface.
        raise _invalid("an address hint cannot carry an IPv6 scope id")
    if not (isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 0xFFFF):
        raise _invalid("an address hint's port must be 1..65535")
    return (str(addr), port)


@dataclass(frozen=True, slots=True)
class LinkCode:
    """The content of a link code (``p2pinvite:...``).

    ``target`` is the space id (space invitations) or identity key (device
    invitations); ``host_device_key`` is the Ed25519 device key the guest must
    see in the host's Noise handshake payload. ``expires_at`` is informative
    for the guest (fail fast, show the date); the host's record is
    authoritative. ``hints`` are ``(address, port)`` pairs, canonicalised.
    ``mailbox`` is the URL of the rendezvous mailbox the host meets guests at
    beyond the LAN (docs/RENDEZVOUS.md), or None.
    """

    kind: InvitationKind
    invitation_id: bytes
    secret: bytes = field(repr=False)
    target: bytes
    host_device_key: bytes
    auth: AuthMethod
    expires_at: int
    hints: tuple[tuple[str, int], ...] = ()
    mailbox: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, InvitationKind):
            raise _invalid("unknown invitation kind")
        if self.auth not in _AUTH_CODES:
            raise _invalid("a link code's auth method is none, pin or key")
        if not (isinstance(self.invitation_id, bytes) and len(self.invitation_id) == 16):
            raise _invalid("the invitation id must be 16 bytes")
        for name in ("secret", "target", "host_device_key"):
            v = getattr(self, name)
            if not (isinstance(v, bytes) and len(v) == 32):
                raise _invalid(f"{name} must be 32 bytes")
        if not (isinstance(self.expires_at, int) and not isinstance(self.expires_at, bool)
                and 0 <= self.expires_at < 2**32):
            raise _invalid("the expiry must be unix seconds in [0, 2**32)")
        if not isinstance(self.hints, tuple | list) or len(self.hints) > MAX_HINTS:
            raise _invalid(f"at most {MAX_HINTS} address hints")
        object.__setattr__(self, "hints", tuple(_canonical_hint(h) for h in self.hints))
        if self.mailbox is not None:
            check_mailbox_url(self.mailbox)

    @classmethod
    def for_invitation(
        cls,
        invitation: Invitation,
        *,
        host_device_key: bytes,
        hints: tuple[tuple[str, int], ...] = (),
        mailbox: str | None = None,
    ) -> LinkCode:
        """The link code for a host-side *invitation* (auth none, pin or key)."""
        return cls(
            kind=invitation.kind,
            invitation_id=invitation.id,
            secret=invitation.secret,
            target=invitation.target,
            host_device_key=host_device_key,
            auth=invitation.auth,
            expires_at=int(invitation.expires_at),  # floor: the guest errs on "expired"
            hints=hints,
            mailbox=mailbox,
        )

    def to_binary(self) -> bytes:
        """The checksummed binary form that the text form carries in base32."""
        version = LINK_CODE_VERSION if self.mailbox is None else LINK_CODE_VERSION_MAILBOX
        out = bytearray(_FIXED.pack(
            version, _KIND_CODES[self.kind], _AUTH_CODES[self.auth],
            self.invitation_id, self.secret, self.target, self.host_device_key,
            self.expires_at,
        ))
        out.append(len(self.hints))
        for host, port in self.hints:
            packed = ipaddress.ip_address(host).packed
            out.append(4 if len(packed) == 4 else 6)
            out += packed
            out += port.to_bytes(2, "big")
        if self.mailbox is not None:
            url = self.mailbox.encode("ascii")
            out += bytes((_EXT_MAILBOX, len(url))) + url
        out += zlib.crc32(out).to_bytes(_CRC_LEN, "big")
        return bytes(out)

    def encode(self) -> str:
        """``p2pinvite:`` followed by the upper-case, unpadded base32 body."""
        body = base64.b32encode(self.to_binary()).decode("ascii").rstrip("=")
        return LINK_PREFIX + body

    def qr_text(self) -> str:
        """The code in upper case only, so a QR encoder uses alphanumeric mode.

        QR alphanumeric mode (11 bits per 2 characters) holds ``0-9 A-Z`` and
        ``:`` but not lower case; :meth:`parse` accepts either case.
        """
        return self.encode().upper()

    @classmethod
    def parse(cls, text: str) -> LinkCode:
        """Decode a link code; surrounding whitespace and case are ignored.

        Raises :class:`CodeError` for anything else: wrong prefix, characters
        outside base32, a non-canonical length or trailing bits, a checksum
        mismatch, an unsupported version, bad lengths or enum values.
        """
        if not isinstance(text, str) or len(text) > _MAX_INPUT:
            raise _invalid("not a string of plausible length")
        text = text.strip()
        if len(text) > MAX_LINK_CODE_LENGTH:
            raise _invalid("too long")
        # ASCII first: str.upper() maps some non-ASCII letters onto ASCII
        # ones (U+017F 'ſ' -> 'S'), which would let altered text decode.
        if not text.isascii():
            raise _invalid("contains non-ASCII characters")
        if text[: len(LINK_PREFIX)].lower() != LINK_PREFIX:
            raise _invalid(f"does not start with {LINK_PREFIX!r}")
        body = text[len(LINK_PREFIX):].upper()
        if not body or not set(body) <= _B32_ALPHABET:
            raise _invalid("the body is not base32")
        if len(body) % 8 in _B32_BAD_REMAINDERS:
            raise _invalid("the body has an impossible base32 length")
        try:
            data = base64.b32decode(body + "=" * (-len(body) % 8))
        except binascii.Error:
            raise _invalid("the body is not base32") from None
        # The last character may carry unused low bits. Refusing non-zero ones
        # makes the text <-> bytes map one-to-one, so a change confined to
        # those bits cannot slip past the checksum.
        if base64.b32encode(data).decode("ascii").rstrip("=") != body:
            raise _invalid("the body is not canonical base32")
        return cls.from_binary(data)

    @classmethod
    def from_binary(cls, data: bytes) -> LinkCode:
        """Decode the binary form (see :meth:`to_binary`), checksum first."""
        if not _FIXED.size + 1 + _CRC_LEN <= len(data) <= _MAX_BINARY:
            raise _invalid("wrong length")
        # Why CRC-32 catches every single-character change: one base32
        # character carries 5 contiguous bits of the binary stream, and the
        # canonical check above pins the unused bits, so changing one
        # character flips a burst of at most 5 bits somewhere in
        # data || crc. A CRC with a degree-32 generator (x^0 term set)
        # detects every error burst no longer than 32 bits: such an error
        # polynomial x^i * e(x), deg e < 32, is never a multiple of G(x).
        # zlib's initial value and final XOR do not change that (they add
        # the same constant to both codewords of equal length).
        payload, crc = data[:-_CRC_LEN], data[-_CRC_LEN:]
        if zlib.crc32(payload).to_bytes(_CRC_LEN, "big") != crc:
            raise _invalid("checksum mismatch (mistyped or altered)")
        version, kind, auth, inv_id, secret, target, host_key, expiry = (
            _FIXED.unpack_from(payload))
        if version not in (LINK_CODE_VERSION, LINK_CODE_VERSION_MAILBOX):
            raise _invalid(f"unsupported version {version}")
        if kind not in _KINDS_BY_CODE:
            raise _invalid(f"unknown invitation kind {kind}")
        if auth not in _AUTHS_BY_CODE:
            raise _invalid(f"unknown or unsupported auth method {auth}")
        count = payload[_FIXED.size]
        if count > MAX_HINTS:
            raise _invalid(f"more than {MAX_HINTS} address hints")
        pos = _FIXED.size + 1
        hints: list[tuple[str, int]] = []
        for _ in range(count):
            if pos >= len(payload):
                raise _invalid("truncated address hints")
            alen = _HINT_FAMILIES.get(payload[pos])
            if alen is None:
                raise _invalid("unknown address family in a hint")
            end = pos + 1 + alen + 2
            if end > len(payload):
                raise _invalid("truncated address hints")
            addr = ipaddress.ip_address(payload[pos + 1: pos + 1 + alen])
            port = int.from_bytes(payload[end - 2: end], "big")
            if port == 0:
                raise _invalid("an address hint has port 0")
            hints.append((str(addr), port))
            pos = end
        mailbox = None
        if version == LINK_CODE_VERSION_MAILBOX:
            # Version 2: exactly one extension, the mailbox URL.
            if pos + 2 > len(payload) or payload[pos] != _EXT_MAILBOX:
                raise _invalid("a version 2 code names a mailbox")
            end = pos + 2 + payload[pos + 1]
            if end > len(payload):
                raise _invalid("truncated mailbox URL")
            try:
                mailbox = check_mailbox_url(payload[pos + 2: end].decode("ascii"))
            except UnicodeDecodeError:
                raise _invalid("the mailbox URL is not ASCII") from None
            pos = end
        if pos != len(payload):
            raise _invalid("trailing bytes")
        return cls(
            kind=_KINDS_BY_CODE[kind], invitation_id=inv_id, secret=secret, target=target,
            host_device_key=host_key, auth=_AUTHS_BY_CODE[auth], expires_at=expiry,
            hints=tuple(hints), mailbox=mailbox,
        )


# -- digits: check digit and the trivial-code rule ---------------------------

# Damm's order-10 weakly totally anti-symmetric quasigroup (Damm 2004, the
# table every implementation uses). Row = interim digit, column = next digit.
_DAMM: Final = (
    (0, 3, 1, 7, 5, 9, 8, 6, 4, 2),
    (7, 0, 9, 2, 1, 5, 4, 8, 6, 3),
    (4, 2, 0, 6, 8, 7, 1, 3, 5, 9),
    (1, 7, 5, 0, 9, 8, 3, 4, 2, 6),
    (6, 1, 2, 3, 0, 4, 5, 9, 7, 8),
    (3, 6, 7, 4, 2, 0, 9, 5, 8, 1),
    (5, 8, 6, 9, 7, 2, 0, 1, 3, 4),
    (8, 9, 4, 5, 3, 6, 2, 0, 1, 7),
    (9, 4, 3, 8, 6, 1, 7, 2, 0, 5),
    (2, 5, 8, 1, 4, 3, 6, 7, 9, 0),
)


def _damm_interim(digits: str) -> int:
    interim = 0
    for ch in digits:
        interim = _DAMM[interim][ord(ch) - 48]
    return interim


def damm_check_digit(digits: str) -> str:
    """The Damm check digit of an ASCII digit string.

    Damm rather than Luhn: Luhn misses the transposition 09 <-> 90 (doubling
    maps 0 -> 0 and 9 -> 18 -> 1+8 = 9, so both orders add 9). Damm detects
    every single-digit error and every adjacent transposition, with one
    10x10 table and no separate inverse/permutation tables (Verhoeff needs
    three).
    """
    return chr(48 + _damm_interim(digits))


def damm_valid(digits: str) -> bool:
    """True when *digits* ends in its correct Damm check digit."""
    return _damm_interim(digits) == 0


def is_trivial_digits(digits: str) -> bool:
    """The trivial-code rule for PINs and short-code secrets (ASCII digits in).

    A digit string is trivial when it is

    * an arithmetic progression modulo 10 with any step: every digit minus the
      one before it (mod 10) is the same. Step 0 is "all digits equal"
      (0000000), step 1 / 9 are runs (1234567, 7654321, wrapping: 8901234),
      other steps are skips (1357913); or
    * periodic with period 2 or 3 (1212121, 1231231, 907907).

    People and guessers try exactly these first. The rule removes at most
    100 + 100 + 1000 strings, 0.12 % of 6-digit PINs and 0.012 % of
    7-digit secrets: a negligible entropy cost.
    """
    d = [ord(c) - 48 for c in digits]
    if len(d) < 3:
        return True
    step = (d[1] - d[0]) % 10
    if all((d[i] - d[i - 1]) % 10 == step for i in range(2, len(d))):
        return True
    return any(all(d[i] == d[i - p] for i in range(p, len(d))) for p in (2, 3))


def _ascii_digits(text: str, n: int) -> bool:
    return len(text) == n and text.isascii() and text.isdigit()


def _random_digits(n: int) -> str:
    return "".join(secrets.choice("0123456789") for _ in range(n))


def _random_nontrivial(n: int) -> str:
    while True:  # rejection sampling keeps the result uniform over non-trivial strings
        s = _random_digits(n)
        if not is_trivial_digits(s):
            return s


# -- short codes -------------------------------------------------------------

_DISCRIMINATOR_LEN: Final = 4
_SECRET_LEN: Final = 7
_SHORT_LEN: Final = _DISCRIMINATOR_LEN + _SECRET_LEN + 1
#: Short-code input longer than this is refused before any processing.
_MAX_SHORT_INPUT: Final = 64


@dataclass(frozen=True, slots=True)
class ShortCode:
    """A short numeric pairing code, shown as ``DDDD-SSSS-SSSC``.

    ``discriminator`` (4 digits) is public: the host advertises it over mDNS
    so the guest finds the right host. ``secret`` (7 digits, not in the repr)
    is the CPace password, as ASCII bytes (:attr:`password`). The last digit is
    the Damm check digit over the 11 digits before it.
    """

    discriminator: str
    secret: str = field(repr=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.discriminator, str)
                and _ascii_digits(self.discriminator, _DISCRIMINATOR_LEN)):
            raise _invalid("the discriminator must be 4 digits")
        if not (isinstance(self.secret, str) and _ascii_digits(self.secret, _SECRET_LEN)):
            raise _invalid("the secret part must be 7 digits")
        if is_trivial_digits(self.secret):
            raise _invalid("the secret part is a trivial pattern")

    @classmethod
    def generate(cls, discriminator: str | None = None) -> ShortCode:
        """A fresh code from the CSPRNG (random discriminator unless given)."""
        disc = _random_digits(_DISCRIMINATOR_LEN) if discriminator is None else discriminator
        return cls(disc, _random_nontrivial(_SECRET_LEN))

    @property
    def check_digit(self) -> str:
        """The Damm check digit over discriminator + secret."""
        return damm_check_digit(self.discriminator + self.secret)

    @property
    def password(self) -> bytes:
        """The CPace password: the secret part's 7 ASCII digits."""
        return self.secret.encode("ascii")

    def encode(self) -> str:
        """``DDDD-SSSS-SSSC``: 4 + 4 + 4 digits separated by dashes."""
        s = self.discriminator + self.secret + self.check_digit
        return f"{s[0:4]}-{s[4:8]}-{s[8:12]}"

    @classmethod
    def parse(cls, text: str) -> ShortCode:
        """Decode a typed short code; dashes and spaces anywhere are ignored."""
        if not isinstance(text, str) or len(text) > _MAX_SHORT_INPUT:
            raise _invalid("not a string of plausible length")
        digits = "".join(text.split()).replace("-", "")
        if not _ascii_digits(digits, _SHORT_LEN):
            raise _invalid("a short code is 12 digits")
        if not damm_valid(digits):
            raise _invalid("check digit mismatch (mistyped?)")
        return cls(digits[:_DISCRIMINATOR_LEN],
                   digits[_DISCRIMINATOR_LEN: _DISCRIMINATOR_LEN + _SECRET_LEN])


# -- PINs --------------------------------------------------------------------

PIN_LENGTH: Final = 6


def generate_pin() -> str:
    """Six digits from the CSPRNG, never a trivial pattern (:func:`is_trivial_digits`).

    The PIN is only ever compared through CPace, so refusing the ~0.12 % of
    trivial values costs nothing measurable and keeps a user from doubting a
    "123456" or a guesser from starting with a lucky one.
    """
    return _random_nontrivial(PIN_LENGTH)


def parse_pin(text: str) -> str:
    """Normalise a PIN typed by the guest (spaces and dashes ignored).

    Trivial PINs are refused here too: the host never issues one, so the guest
    can be told at once without spending one of its attempts.
    """
    if not isinstance(text, str) or len(text) > _MAX_SHORT_INPUT:
        raise CodeError("not a valid PIN: not a string of plausible length")
    digits = "".join(text.split()).replace("-", "")
    if not _ascii_digits(digits, PIN_LENGTH):
        raise CodeError("not a valid PIN: a PIN is 6 digits")
    if is_trivial_digits(digits):
        raise CodeError("not a valid PIN: never issued (trivial pattern)")
    return digits
