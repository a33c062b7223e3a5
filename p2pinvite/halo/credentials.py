"""Credentials: signed, canonical msgpack statements about identities and spaces.

A credential says "*issuer* asserts something about *subject*": this device
belongs to this identity (:class:`AuthorizedDevice`), this identity is a
member of this space with this role (:class:`SpaceMember`), or it starts a log
(:class:`IdentityGenesis`, :class:`SpaceGenesis`). docs/PROTOCOL.md Part 8
is the normative description; the short version:

* Encoding: one canonical msgpack map (:func:`p2pinvite.wire.pack` rules: keys
  sorted by their encoded bytes, shortest ints, ``bin`` for bytes), with the
  common fields ``v type issuer subject issued_at parents signer chain sig``
  plus the fields of its type. Decoding is strict: exact field set per type,
  exact sizes, and the input must *be* the canonical encoding (no second
  encoding of one credential exists, so ids cannot be malleated).
* Parents: the ids of the heads of the issuer's copy of the log when it
  issued the credential, strictly ascending (one encoding), at most
  :data:`MAX_PARENTS`, empty exactly for a genesis. They are signed, so
  nobody can re-parent an entry, and an entry's id covers its parents' ids:
  a log is a Merkle DAG of credentials.
* Signature: Ed25519 by ``signer`` over ``SIGNATURE_CONTEXT || pack(map
  without "sig" and "chain")``, verified strictly (:mod:`p2pinvite.crypto.ed25519`:
  no small-order or non-canonical key or ``R``, ``S`` below L).
* Id: ``BLAKE2b-256(pack(map with "chain" emptied))``: the signed content plus
  the signature, independent of the evidence in ``chain``. It is the entry id
  of the credential in its log.
* Chain: when ``signer != issuer``, ``chain`` lists ``AuthorizedDevice``
  credentials (each with its own chain emptied) proving that ``signer`` is a
  device of ``issuer``: ``chain[0]`` authorizes ``signer``, ``chain[i+1]``
  authorizes ``chain[i].signer``, and the last one is signed by ``issuer``
  itself. The chain is evidence, not signed content: any valid chain proves
  the same fact, and leaving it out of the signature keeps chains linear in
  size (a signed chain would have to embed its elements' chains, which grows
  exponentially with depth).

:class:`CredentialVerifier` checks signatures and chains and remembers every
chain element it has verified, so a log of 100,000 credentials issued by the
same device verifies that device's chain once, not 100,000 times.
"""

from __future__ import annotations

import enum
import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import msgpack

from ..crypto.ed25519 import VerifyingKey
from ..errors import CredentialError, DecodeError, SignatureError
from .keys import Signer

__all__ = [
    "CHECK_SIZE",
    "CREDENTIAL_VERSION",
    "MAX_CHAIN_DEPTH",
    "MAX_CREDENTIAL_SIZE",
    "MAX_GRANTS",
    "MAX_INVITATION_ID",
    "MAX_NAME",
    "MAX_PARENTS",
    "SEALED_SECRET_SIZE",
    "SIGNATURE_CONTEXT",
    "Assertion",
    "AuthorizedDevice",
    "Credential",
    "CredentialVerifier",
    "Grant",
    "IdentityGenesis",
    "MalformedCredential",
    "RevokedDevice",
    "Role",
    "SpaceGenesis",
    "SpaceMember",
    "SwarmKey",
    "decode_credential",
    "issue_authorized_device",
    "issue_device_revocation",
    "issue_identity_genesis",
    "issue_member_removal",
    "issue_role_change",
    "issue_space_genesis",
    "issue_space_member",
    "issue_swarm_key",
    "now_ms",
    "verify_credential",
]

#: Value of the ``v`` field.
CREDENTIAL_VERSION: Final = 2
#: Prefix of every credential signature input.
SIGNATURE_CONTEXT: Final = b"p2pinvite/credential/v1\x00"
#: Largest encoded credential, chain included (fits one log entry, whose
#: limit halo/log.py sets at 60,000 bytes).
MAX_CREDENTIAL_SIZE: Final = 60_000
#: Most elements in a ``chain`` (devices between an identity and a signer).
MAX_CHAIN_DEPTH: Final = 8
#: Longest profile, device or space name, in characters.
MAX_NAME: Final = 128
#: Longest invitation id, in bytes.
MAX_INVITATION_ID: Final = 64
#: Most ``parents`` of one credential (heads of the issuer's copy of the log).
MAX_PARENTS: Final = 64
#: Most ``grants`` of one ``swarm_key`` (member devices a rotation seals to).
MAX_GRANTS: Final = 64
#: Size of a sealed swarm secret: ephemeral key, 32-byte secret, tag.
SEALED_SECRET_SIZE: Final = 32 + 32 + 16
#: Size of a ``swarm_key`` check value.
CHECK_SIZE: Final = 16

_KEY = 32
_SIG = 64


class MalformedCredential(CredentialError, DecodeError):
    """Bytes that are not a well-formed canonical credential (rule ``malformed``).

    A :class:`CredentialError` for the membership rules and a
    :class:`DecodeError` for the network layer, which drops the peer.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, rule="malformed")


class Role(enum.StrEnum):
    """A member's role in a space. REMOVED revokes membership."""

    OWNER = "OWNER"
    ADMIN = "ADMIN"
    EDITOR = "EDITOR"
    READER = "READER"
    REMOVED = "REMOVED"


# -- assertions (the type-specific part) ----------------------------------------


@dataclass(frozen=True, slots=True)
class IdentityGenesis:
    """First entry of an identity's HALO log; issuer = subject = signer = identity key."""

    name: str


@dataclass(frozen=True, slots=True)
class AuthorizedDevice:
    """The issuing identity owns the subject device key.

    ``invitation`` is the device invitation it redeemed, if any.
    """

    invitation: bytes | None = None


@dataclass(frozen=True, slots=True)
class SpaceGenesis:
    """First entry of a space log; issuer = subject = signer = space key."""

    owner: bytes
    name: str


@dataclass(frozen=True, slots=True)
class SpaceMember:
    """The subject identity is a member of ``space`` with ``role`` (REMOVED: not any more)."""

    space: bytes
    role: Role
    name: str
    invitation: bytes | None = None


@dataclass(frozen=True, slots=True)
class RevokedDevice:
    """The issuing identity no longer owns the subject device key (``device remove``)."""


@dataclass(frozen=True, slots=True)
class Grant:
    """A log's swarm secret sealed to one member device's Noise static key.

    ``member`` is the device's identity (the identity key itself in an
    identity log), ``device`` its device key, ``static`` its X25519 static
    key, ``box`` the secret sealed to it (docs/PROTOCOL.md Part 12 §7).
    """

    member: bytes
    device: bytes
    static: bytes
    box: bytes


@dataclass(frozen=True, slots=True)
class SwarmKey:
    """A swarm secret of the subject log: a rotation, or more grants of the secret in force.

    ``epoch`` numbers the secret, ``check`` commits to it (a receiver checks
    what it opened against it), ``grants`` seal it to member devices,
    strictly ascending by device key.
    """

    epoch: int
    check: bytes
    grants: tuple[Grant, ...] = ()


Assertion = (IdentityGenesis | AuthorizedDevice | SpaceGenesis | SpaceMember | RevokedDevice
             | SwarmKey)

_TYPE_NAMES: Final[dict[type[Any], str]] = {
    IdentityGenesis: "identity_genesis",
    AuthorizedDevice: "authorized_device",
    SpaceGenesis: "space_genesis",
    SpaceMember: "space_member",
    RevokedDevice: "revoked_device",
    SwarmKey: "swarm_key",
}
_COMMON: Final = frozenset(
    {"v", "type", "issuer", "subject", "issued_at", "parents", "signer", "chain", "sig"}
)
#: Types that start a log: the only credentials without parents.
_GENESIS_TYPES: Final = (IdentityGenesis, SpaceGenesis)
_FIELDS: Final[dict[str, frozenset[str]]] = {
    "identity_genesis": _COMMON | {"profile"},
    "authorized_device": _COMMON | {"invitation"},
    "space_genesis": _COMMON | {"owner", "name"},
    "space_member": _COMMON | {"space", "role", "profile", "invitation"},
    "revoked_device": _COMMON,
    "swarm_key": _COMMON | {"epoch", "check", "grants"},
}


def _canonical_order(keys: Sequence[str]) -> tuple[str, ...]:
    # Canonical msgpack sorts map keys by their *encoded* bytes (wire.pack);
    # the keys are known, so sort them once instead of on every encode.
    return tuple(sorted(keys, key=lambda k: msgpack.packb(k)))


_ORDER: Final[dict[str, tuple[str, ...]]] = {
    t: _canonical_order(list(f)) for t, f in _FIELDS.items()
}
#: Upper bound of a credential's encoding without its chain elements
#: (parents and grants included).
_MAX_OWN_FIELDS: Final = 1024 + MAX_PARENTS * 34 + MAX_GRANTS * (3 * 34 + 82 + 1)


def _packb(ordered: dict[str, Any]) -> bytes:
    # Keys are already in canonical order, so plain msgpack is canonical here.
    out = msgpack.packb(ordered, use_bin_type=True)
    assert isinstance(out, bytes)
    return out


def now_ms() -> int:
    """The current time as unix milliseconds (the unit of ``issued_at``)."""
    return time.time_ns() // 1_000_000


def _check_key(value: bytes, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != _KEY:
        raise MalformedCredential(f"{what} must be {_KEY} bytes")


def _check_name(value: str, what: str) -> None:
    if not isinstance(value, str) or len(value) > MAX_NAME:
        raise MalformedCredential(f"{what} must be a string of at most {MAX_NAME} characters")


def _check_invitation(value: bytes | None) -> None:
    if value is not None and (
        not isinstance(value, bytes) or not 1 <= len(value) <= MAX_INVITATION_ID
    ):
        raise MalformedCredential(f"invitation must be nil or 1..{MAX_INVITATION_ID} bytes")


def _check_parents(parents: tuple[bytes, ...], *, genesis: bool) -> None:
    if not isinstance(parents, tuple) or len(parents) > MAX_PARENTS:
        raise MalformedCredential(f"parents must hold at most {MAX_PARENTS} entry ids")
    prev = b""
    for p in parents:
        if not isinstance(p, bytes) or len(p) != _KEY:
            raise MalformedCredential(f"parents must be {_KEY}-byte entry ids")
        # Strictly ascending: one encoding per set, no duplicates.
        if p <= prev:
            raise MalformedCredential("parents must be strictly ascending")
        prev = p
    if genesis and parents:
        raise MalformedCredential("a genesis has no parents")
    if not genesis and not parents:
        raise MalformedCredential("only a genesis has no parents")


def _check_assertion(a: Assertion) -> None:
    if isinstance(a, IdentityGenesis):
        _check_name(a.name, "profile name")
    elif isinstance(a, AuthorizedDevice):
        _check_invitation(a.invitation)
    elif isinstance(a, SpaceGenesis):
        _check_key(a.owner, "owner")
        _check_name(a.name, "space name")
    elif isinstance(a, SpaceMember):
        _check_key(a.space, "space")
        if not isinstance(a.role, Role):
            raise MalformedCredential("role must be a Role")
        _check_name(a.name, "profile name")
        _check_invitation(a.invitation)
    elif isinstance(a, SwarmKey):
        _check_swarm_key(a)
    elif not isinstance(a, RevokedDevice):
        raise MalformedCredential(f"unknown assertion {type(a).__name__}")


def _check_swarm_key(a: SwarmKey) -> None:
    if not isinstance(a.epoch, int) or isinstance(a.epoch, bool) or not 2 <= a.epoch < 2**32:
        raise MalformedCredential("a swarm_key epoch is 2..2**32-1 (1 is the log's first)")
    if not isinstance(a.check, bytes) or len(a.check) != CHECK_SIZE:
        raise MalformedCredential(f"a swarm_key check is {CHECK_SIZE} bytes")
    if not isinstance(a.grants, tuple) or len(a.grants) > MAX_GRANTS:
        raise MalformedCredential(f"a swarm_key has at most {MAX_GRANTS} grants")
    prev = b""
    for g in a.grants:
        if not isinstance(g, Grant):
            raise MalformedCredential("grants must be Grant values")
        for value, what in ((g.member, "grant member"), (g.device, "grant device"),
                            (g.static, "grant static key")):
            _check_key(value, what)
        if not isinstance(g.box, bytes) or len(g.box) != SEALED_SECRET_SIZE:
            raise MalformedCredential(f"a grant's box is {SEALED_SECRET_SIZE} bytes")
        # One encoding per set of grants, one grant per device.
        if g.device <= prev:
            raise MalformedCredential("grants must be strictly ascending by device")
        prev = g.device


@dataclass(frozen=True, slots=True)
class Credential:
    """A signed credential. Build with an ``issue_*`` function or :meth:`decode`.

    Constructing one checks the fields' types and sizes but *not* the
    signature (use :class:`CredentialVerifier`). ``id``, ``payload`` and the
    encoding are computed on first use: replaying a trusted log needs none
    of them.
    """

    issuer: bytes
    subject: bytes
    assertion: Assertion
    issued_at: int
    parents: tuple[bytes, ...]
    signer: bytes
    chain: tuple[bytes, ...] = field(repr=False)
    signature: bytes = field(repr=False)
    version: int = CREDENTIAL_VERSION
    _payload: bytes | None = field(default=None, init=False, repr=False, compare=False)
    _id: bytes | None = field(default=None, init=False, repr=False, compare=False)
    _core: bytes | None = field(default=None, init=False, repr=False, compare=False)
    _encoded: bytes | None = field(default=None, init=False, repr=False, compare=False)
    _map: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.version != CREDENTIAL_VERSION:
            raise MalformedCredential(f"unsupported credential version {self.version!r}")
        _check_key(self.issuer, "issuer")
        _check_key(self.subject, "subject")
        _check_key(self.signer, "signer")
        if not isinstance(self.signature, bytes) or len(self.signature) != _SIG:
            raise MalformedCredential(f"signature must be {_SIG} bytes")
        if (
            not isinstance(self.issued_at, int)
            or isinstance(self.issued_at, bool)
            or not 0 <= self.issued_at < 2**63
        ):
            raise MalformedCredential("issued_at must be an integer in [0, 2**63)")
        _check_parents(self.parents, genesis=isinstance(self.assertion, _GENESIS_TYPES))
        if not isinstance(self.chain, tuple) or len(self.chain) > MAX_CHAIN_DEPTH:
            raise MalformedCredential(f"chain must hold at most {MAX_CHAIN_DEPTH} credentials")
        if not all(isinstance(c, bytes) for c in self.chain):
            raise MalformedCredential("chain elements must be bytes")
        # Every other field is bounded (names by MAX_NAME characters), so this
        # bounds the whole encoding without computing it.
        if sum(map(len, self.chain)) > MAX_CREDENTIAL_SIZE - _MAX_OWN_FIELDS:
            raise MalformedCredential(f"credential larger than {MAX_CREDENTIAL_SIZE} bytes")
        _check_assertion(self.assertion)

    def _base(self) -> dict[str, Any]:
        """Every field in canonical key order, ``chain`` empty (built once, then cached)."""
        if self._map is None:
            fields = self._fields()
            m = {k: fields[k] for k in _ORDER[fields["type"]]}
            object.__setattr__(self, "_map", m)
            return m
        return self._map

    @property
    def payload(self) -> bytes:
        """What ``signer`` signs: ``SIGNATURE_CONTEXT || pack(map without sig and chain)``."""
        if self._payload is None:
            signed = {k: v for k, v in self._base().items() if k != "sig" and k != "chain"}
            data = SIGNATURE_CONTEXT + _packb(signed)
            object.__setattr__(self, "_payload", data)
            return data
        return self._payload

    @property
    def core(self) -> bytes:
        """The encoding with ``chain`` emptied: what the id hashes, the chain-element form."""
        if self._core is None:
            data = _packb(self._base())
            object.__setattr__(self, "_core", data)
            return data
        return self._core

    @property
    def id(self) -> bytes:
        """BLAKE2b-256 of :attr:`core`, the encoding with ``chain`` emptied (32 bytes)."""
        if self._id is None:
            digest = hashlib.blake2b(self.core, digest_size=32).digest()
            object.__setattr__(self, "_id", digest)
            return digest
        return self._id

    def _fields(self) -> dict[str, Any]:
        a = self.assertion
        m: dict[str, Any] = {
            "v": self.version,
            "type": _TYPE_NAMES[type(a)],
            "issuer": self.issuer,
            "subject": self.subject,
            "issued_at": self.issued_at,
            "parents": list(self.parents),
            "signer": self.signer,
            "chain": [],
            "sig": self.signature,
        }
        if isinstance(a, IdentityGenesis):
            m["profile"] = {"name": a.name}
        elif isinstance(a, AuthorizedDevice):
            m["invitation"] = a.invitation
        elif isinstance(a, SpaceGenesis):
            m["owner"] = a.owner
            m["name"] = a.name
        elif isinstance(a, SwarmKey):
            m["epoch"] = a.epoch
            m["check"] = a.check
            m["grants"] = [[g.member, g.device, g.static, g.box] for g in a.grants]
        elif isinstance(a, RevokedDevice):
            pass
        else:
            m["space"] = a.space
            m["role"] = a.role.value
            m["profile"] = {"name": a.name}
            m["invitation"] = a.invitation
        return m

    @property
    def is_genesis(self) -> bool:
        """Whether this credential starts a log (it then has no parents)."""
        return isinstance(self.assertion, _GENESIS_TYPES)

    @property
    def type_name(self) -> str:
        """The wire ``type`` string (``"space_member"``, ...)."""
        return _TYPE_NAMES[type(self.assertion)]

    def encode(self) -> bytes:
        """The canonical encoding (what logs store and peers exchange)."""
        if self._encoded is None:
            data = self.core if not self.chain else _packb(
                {**self._base(), "chain": list(self.chain)})
            object.__setattr__(self, "_encoded", data)
            return data
        return self._encoded

    def to_map(self) -> dict[str, Any]:
        """The credential as the msgpack map it encodes (for docs, tests, debugging)."""
        m = self._fields()
        m["chain"] = list(self.chain)
        return m

    def stripped(self) -> Credential:
        """This credential with an empty chain: the form used as a chain element."""
        return self if not self.chain else replace(self, chain=())

    @classmethod
    def decode(cls, data: bytes) -> Credential:
        """Strictly decode a credential; :class:`MalformedCredential` for anything off."""
        return decode_credential(data)


def _refuse_ext(code: int, data: bytes) -> Any:
    raise MalformedCredential(f"msgpack ext type {code} is not allowed")


def _get(m: dict[str, Any], key: str, kind: type[Any] | tuple[type[Any], ...]) -> Any:
    v = m[key]
    if not isinstance(v, kind) or isinstance(v, bool):
        raise MalformedCredential(f"field {key!r} has the wrong type")
    return v


def _get_profile(m: dict[str, Any]) -> str:
    p = m["profile"]
    if not isinstance(p, dict) or set(p) != {"name"}:
        raise MalformedCredential("profile must be a map with exactly the field 'name'")
    name = p["name"]
    if not isinstance(name, str):
        raise MalformedCredential("profile name must be a string")
    return name


def _grant(item: Any) -> Grant:
    if not (isinstance(item, list) and len(item) == 4
            and all(isinstance(x, bytes) for x in item)):
        raise MalformedCredential("a grant is [member, device, static, box]")
    return Grant(*item)


def decode_credential(data: bytes) -> Credential:
    """Strictly decode *data* into a :class:`Credential` (signature not checked).

    Raises :class:`MalformedCredential` when *data* is larger than
    :data:`MAX_CREDENTIAL_SIZE`, is not msgpack, has missing, extra or
    mistyped fields, or is not the canonical encoding of what it decodes to.
    """
    if not isinstance(data, bytes):
        raise MalformedCredential("a credential is bytes")
    if len(data) > MAX_CREDENTIAL_SIZE:
        raise MalformedCredential(f"credential larger than {MAX_CREDENTIAL_SIZE} bytes")
    # msgpack.unpackb with wire.unpack's limits: the one-call form costs half
    # as much, and every append decodes a credential.
    try:
        m = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True,
                            ext_hook=_refuse_ext, max_str_len=MAX_CREDENTIAL_SIZE,
                            max_bin_len=MAX_CREDENTIAL_SIZE, max_array_len=64,
                            max_map_len=64, max_ext_len=MAX_CREDENTIAL_SIZE)
    except Exception as exc:  # msgpack raises a zoo of types for bad input
        raise MalformedCredential(
            f"credential is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(m, dict):
        raise MalformedCredential("a credential is a map")
    type_name = m.get("type")
    if not isinstance(type_name, str) or type_name not in _FIELDS:
        raise MalformedCredential("unknown credential type")
    if tuple(m) != _ORDER[type_name]:
        if m.keys() != _FIELDS[type_name]:
            raise MalformedCredential(f"{type_name} credential has missing or extra fields")
        raise MalformedCredential("credential is not in canonical encoding (key order)")
    # Keys are in canonical order; re-packing the decoded map now reproduces
    # the input iff every value used its shortest canonical form.
    if msgpack.packb(m, use_bin_type=True) != data:
        raise MalformedCredential("credential is not in canonical encoding")
    version = _get(m, "v", int)
    if version != CREDENTIAL_VERSION:
        raise MalformedCredential(f"unsupported credential version {version!r}")
    parents = _get(m, "parents", list)
    chain = _get(m, "chain", list)
    if len(chain) > MAX_CHAIN_DEPTH:
        raise MalformedCredential(f"chain is longer than {MAX_CHAIN_DEPTH}")
    assertion: Assertion
    if type_name == "identity_genesis":
        assertion = IdentityGenesis(name=_get_profile(m))
    elif type_name == "authorized_device":
        inv = m["invitation"]
        assertion = AuthorizedDevice(invitation=inv)
    elif type_name == "space_genesis":
        assertion = SpaceGenesis(owner=_get(m, "owner", bytes), name=_get(m, "name", str))
    elif type_name == "revoked_device":
        assertion = RevokedDevice()
    elif type_name == "swarm_key":
        assertion = SwarmKey(epoch=_get(m, "epoch", int), check=_get(m, "check", bytes),
                             grants=tuple(_grant(g) for g in _get(m, "grants", list)))
    else:
        role = _get(m, "role", str)
        if role not in Role.__members__:
            raise MalformedCredential("unknown role")
        assertion = SpaceMember(
            space=_get(m, "space", bytes),
            role=Role(role),
            name=_get_profile(m),
            invitation=m["invitation"],
        )
    cred = Credential(
        issuer=_get(m, "issuer", bytes),
        subject=_get(m, "subject", bytes),
        assertion=assertion,
        issued_at=_get(m, "issued_at", int),
        parents=tuple(parents),
        signer=_get(m, "signer", bytes),
        chain=tuple(chain),
        signature=_get(m, "sig", bytes),
        version=version,
    )
    object.__setattr__(cred, "_encoded", data)
    # What the id and the signature cover, from the decoded map (in canonical
    # order already), rather than rebuilt from the fields.
    object.__setattr__(cred, "_core", data if not chain else _packb({**m, "chain": []}))
    del m["sig"], m["chain"]
    object.__setattr__(cred, "_payload", SIGNATURE_CONTEXT + _packb(m))
    return cred


# -- verification ----------------------------------------------------------------

_CACHE_LIMIT: Final = 4096


class CredentialVerifier:
    """Checks signatures and chains, remembering what it has already verified.

    Chain elements are cached by their exact bytes (a stripped element's
    bytes determine its signature check), and checked public keys by key, so
    a chain shared by many credentials costs one verification per element
    and a signer's key is checked once however many credentials it signs.
    Signatures are verified strictly (:mod:`p2pinvite.crypto.ed25519`).
    A verifier holds only public data; share one per log or per process.
    """

    __slots__ = ("_chain_ok", "_pubkeys")

    def __init__(self) -> None:
        self._chain_ok: dict[bytes, Credential] = {}
        self._pubkeys: dict[bytes, VerifyingKey] = {}

    def _public(self, key: bytes) -> VerifyingKey:
        # Only keys that pass the strict key check are cached; a refused key
        # raises WeakPublicKey here every time it is named as a signer.
        pk = self._pubkeys.get(key)
        if pk is None:
            pk = VerifyingKey.from_bytes(key)
            if len(self._pubkeys) >= _CACHE_LIMIT:
                self._pubkeys.clear()
            self._pubkeys[key] = pk
        return pk

    def check_signature(self, cred: Credential) -> None:
        """Raise ``CredentialError(rule="bad_signature")`` unless ``signer`` signed *cred*.

        The refusal's cause is the :class:`~p2pinvite.errors.SignatureError`
        saying why (a small-order signer key, a wrong signature, ...).
        """
        try:
            self._public(cred.signer).verify(cred.signature, cred.payload)
        except SignatureError as exc:
            raise CredentialError(
                f"{cred.type_name} credential has a bad signature ({exc})", rule="bad_signature"
            ) from exc

    def _chain_element(self, data: bytes) -> Credential:
        cached = self._chain_ok.get(data)
        if cached is not None:
            return cached
        try:
            elem = decode_credential(data)
        except MalformedCredential as exc:
            raise CredentialError(f"malformed chain element: {exc}", rule="bad_chain") from None
        if not isinstance(elem.assertion, AuthorizedDevice) or elem.chain:
            raise CredentialError(
                "chain elements must be AuthorizedDevice credentials with an empty chain",
                rule="bad_chain",
            )
        try:
            self.check_signature(elem)
        except CredentialError as exc:
            raise CredentialError(
                f"chain element has a bad signature ({exc.__cause__ or exc})", rule="bad_chain"
            ) from exc
        if len(self._chain_ok) >= _CACHE_LIMIT:
            self._chain_ok.clear()
        self._chain_ok[data] = elem
        return elem

    def check_chain(self, cred: Credential) -> None:
        """Check that ``cred.signer`` may sign for ``cred.issuer`` (rule ``bad_chain``).

        An empty chain means the issuer key signed it itself. Otherwise each
        element must be a validly signed ``AuthorizedDevice`` from the issuer,
        linking the signer back to a device the issuer key authorized.
        """
        if not cred.chain:
            if cred.signer != cred.issuer:
                raise CredentialError(
                    "signer is not the issuer and no chain was given", rule="bad_chain"
                )
            return
        if cred.signer == cred.issuer:
            raise CredentialError(
                "a credential signed by its issuer carries no chain", rule="bad_chain"
            )
        expected = cred.signer
        for i, data in enumerate(cred.chain):
            elem = self._chain_element(data)
            if elem.subject != expected or elem.issuer != cred.issuer:
                raise CredentialError(
                    f"chain element {i} does not authorize the previous signer for the issuer",
                    rule="bad_chain",
                )
            last = i == len(cred.chain) - 1
            if (elem.signer == cred.issuer) != last:
                raise CredentialError(
                    "chain must end, and only end, with a credential signed by the issuer",
                    rule="bad_chain",
                )
            expected = elem.signer

    def verify(self, cred: Credential) -> None:
        """Check *cred*'s chain and signature; :class:`CredentialError` if either fails."""
        self.check_chain(cred)
        self.check_signature(cred)

    def decode_and_verify(self, data: bytes) -> Credential:
        """Decode *data* strictly and verify it."""
        cred = decode_credential(data)
        self.verify(cred)
        return cred


def verify_credential(cred: Credential | bytes) -> Credential:
    """Verify one credential (decoding it first if given bytes); return it."""
    if isinstance(cred, bytes):
        cred = decode_credential(cred)
    CredentialVerifier().verify(cred)
    return cred


# -- builders ---------------------------------------------------------------------


def _parents(parents: Iterable[bytes]) -> tuple[bytes, ...]:
    # The canonical form: sorted, no duplicates (the constructor checks the rest).
    return tuple(sorted(set(parents)))


def _issue(
    signer: Signer,
    *,
    issuer: bytes,
    subject: bytes,
    assertion: Assertion,
    parents: Iterable[bytes],
    chain: Sequence[bytes],
    issued_at: int | None,
) -> Credential:
    draft = Credential(
        issuer=issuer,
        subject=subject,
        assertion=assertion,
        issued_at=now_ms() if issued_at is None else issued_at,
        parents=_parents(parents),
        signer=signer.public_key,
        chain=tuple(chain),
        signature=bytes(_SIG),
    )
    payload = draft.payload
    cred = replace(draft, signature=signer.sign(payload))
    object.__setattr__(cred, "_payload", payload)  # the signature is not in it
    return cred


def issue_identity_genesis(
    identity_key: Signer, *, name: str, issued_at: int | None = None
) -> Credential:
    """The genesis of an identity's HALO log, signed by the identity key itself."""
    k = identity_key.public_key
    return _issue(
        identity_key, issuer=k, subject=k, assertion=IdentityGenesis(name=name), parents=(),
        chain=(), issued_at=issued_at,
    )


def issue_authorized_device(
    signer: Signer,
    *,
    identity: bytes,
    device: bytes,
    parents: Iterable[bytes],
    chain: Sequence[bytes] = (),
    invitation: bytes | None = None,
    issued_at: int | None = None,
) -> Credential:
    """*identity* authorizes *device*; signed by the identity key or an authorized device.

    *parents* are the heads of the identity log the issuer holds (the
    genesis, for the first device). When *signer* is a device, *chain* is
    that device's chain (:meth:`MembershipState.device_chain`).
    """
    return _issue(
        signer, issuer=identity, subject=device,
        assertion=AuthorizedDevice(invitation=invitation), parents=parents, chain=chain,
        issued_at=issued_at,
    )


def issue_space_genesis(
    space_key: Signer, *, owner: bytes, name: str, issued_at: int | None = None
) -> Credential:
    """The genesis of a space log naming its *owner* identity, signed by the space key."""
    k = space_key.public_key
    return _issue(
        space_key, issuer=k, subject=k, assertion=SpaceGenesis(owner=owner, name=name),
        parents=(), chain=(), issued_at=issued_at,
    )


def issue_space_member(
    signer: Signer,
    *,
    issuer: bytes,
    space: bytes,
    member: bytes,
    role: Role,
    name: str,
    parents: Iterable[bytes],
    chain: Sequence[bytes] = (),
    invitation: bytes | None = None,
    issued_at: int | None = None,
) -> Credential:
    """*issuer* admits *member* into *space* with *role* and profile *name*.

    *parents* are the heads of the space log the issuer holds. The owner's
    first membership is issued and signed by the space key (``issuer ==
    space``, empty chain, the genesis as parent); every later one by a member
    identity, signed by one of its devices with that device's *chain*. For a
    subject that is already a member the same credential is a role change
    (:func:`issue_role_change`).
    """
    return _issue(
        signer, issuer=issuer, subject=member,
        assertion=SpaceMember(space=space, role=role, name=name, invitation=invitation),
        parents=parents, chain=chain, issued_at=issued_at,
    )


def issue_role_change(
    signer: Signer,
    *,
    issuer: bytes,
    space: bytes,
    member: bytes,
    role: Role,
    parents: Iterable[bytes],
    chain: Sequence[bytes] = (),
    issued_at: int | None = None,
) -> Credential:
    """*issuer* gives the current member *member* of *space* a new *role* (REMOVED: removes).

    A ``SpaceMember`` with an empty profile name and no invitation: a role
    change keeps the member's name and admission; only the role changes.
    With ``issuer == member`` and role REMOVED it is the member leaving.
    """
    return issue_space_member(
        signer, issuer=issuer, space=space, member=member, role=role, name="",
        parents=parents, chain=chain, issued_at=issued_at,
    )


def issue_member_removal(
    signer: Signer,
    *,
    issuer: bytes,
    space: bytes,
    member: bytes,
    parents: Iterable[bytes],
    chain: Sequence[bytes] = (),
    issued_at: int | None = None,
) -> Credential:
    """*issuer* removes *member* from *space* (role REMOVED); *member* = *issuer* leaves."""
    return issue_role_change(
        signer, issuer=issuer, space=space, member=member, role=Role.REMOVED,
        parents=parents, chain=chain, issued_at=issued_at,
    )


def issue_device_revocation(
    signer: Signer,
    *,
    identity: bytes,
    device: bytes,
    parents: Iterable[bytes],
    chain: Sequence[bytes] = (),
    issued_at: int | None = None,
) -> Credential:
    """*identity* revokes its *device* (``device remove``), signed by another of its devices."""
    return _issue(
        signer, issuer=identity, subject=device, assertion=RevokedDevice(), parents=parents,
        chain=chain, issued_at=issued_at,
    )


def issue_swarm_key(
    signer: Signer,
    *,
    issuer: bytes,
    log: bytes,
    epoch: int,
    check: bytes,
    grants: Iterable[Grant],
    parents: Iterable[bytes],
    chain: Sequence[bytes] = (),
    issued_at: int | None = None,
) -> Credential:
    """*issuer* seals the swarm secret *epoch* of *log* (committed to by *check*) to *grants*.

    A new *epoch* is a rotation (OWNER/ADMIN of a space, any device of an
    identity); the epoch and check in force are more grants of it (any member).
    """
    ordered = tuple(sorted(grants, key=lambda g: g.device))
    return _issue(
        signer, issuer=issuer, subject=log,
        assertion=SwarmKey(epoch=epoch, check=check, grants=ordered), parents=parents,
        chain=chain, issued_at=issued_at,
    )
