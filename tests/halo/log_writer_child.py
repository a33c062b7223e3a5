"""A toy validator for the storage-layer tests, and the child process of the kill -9 test.

The toy credential is the canonical msgpack map ``{signer, n, sig}``: ``sig`` is
an Ed25519 signature by ``signer`` over ``pack({signer, n})``. Rules: the signer
must be one of the allowed keys, and ``n`` must be strictly greater than the
last admitted ``n`` (so two racing appends of the same ``n`` admit one, like a
single-use invitation). It exercises every path of the log (signature checks,
rule refusals, snapshots) without depending on the membership rules.

Run as a script (``python log_writer_child.py LOG``) it opens LOG (creating it),
prints ``ready <length>``, then appends forever from 4 concurrent tasks,
printing ``<seq> <n>`` (flushed) after each ``append`` returns -- until the
parent kills it with SIGKILL.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from p2pinvite import wire
from p2pinvite.errors import CredentialError, DecodeError

#: The key every toy credential in the tests is signed with, unless a test forges one.
TOY_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
TOY_PUB = TOY_KEY.public_key().public_bytes_raw()
#: A key the validators do not allow.
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def make_credential(n: int, key: Ed25519PrivateKey = TOY_KEY) -> bytes:
    """A toy credential for *n*, signed by *key*."""
    signer = key.public_key().public_bytes_raw()
    sig = key.sign(wire.pack({"signer": signer, "n": n}))
    return wire.pack({"signer": signer, "n": n, "sig": sig})


@dataclass(frozen=True, slots=True)
class _Checked:
    n: int


class ToyValidator:
    """An EntryValidator over toy credentials; counts signature verifications."""

    def __init__(self, allowed: frozenset[bytes] = frozenset({TOY_PUB})) -> None:
        self.allowed = allowed
        self.ns: list[int] = []
        self.signature_checks = 0
        self.refuse_restore = False

    @property
    def last(self) -> int:
        """The last admitted n (-1 when empty)."""
        return self.ns[-1] if self.ns else -1

    def check(self, credential: bytes, *, verify_signatures: bool) -> object:
        """Decode and check against the current state."""
        try:
            m = wire.expect_map(wire.unpack(credential, max_size=4096, max_items=3))
            signer = wire.expect_bytes(m, "signer", size=32)
            n = wire.expect_int(m, "n")
            sig = wire.expect_bytes(m, "sig", size=64)
        except DecodeError as exc:
            raise CredentialError(f"malformed toy credential: {exc}", rule="malformed") from exc
        if set(m) != {"signer", "n", "sig"} or wire.pack(m) != credential:
            raise CredentialError("not canonical", rule="malformed")
        if signer not in self.allowed:
            raise CredentialError("unknown signer", rule="unknown_signer")
        if verify_signatures:
            self.signature_checks += 1
            try:
                Ed25519PublicKey.from_public_bytes(signer).verify(
                    sig, wire.pack({"signer": signer, "n": n})
                )
            except InvalidSignature:
                raise CredentialError("bad signature", rule="signature") from None
        if n <= self.last:
            raise CredentialError("n must increase", rule="n_not_increasing")
        return _Checked(n)

    def apply(self, checked: object) -> None:
        """Admit a checked credential."""
        assert isinstance(checked, _Checked)
        self.ns.append(checked.n)

    def snapshot(self) -> bytes:
        """The whole state."""
        return wire.pack({"ns": self.ns})

    def restore(self, data: bytes) -> None:
        """Load a snapshot into an empty validator."""
        assert not self.ns
        if self.refuse_restore:
            raise CredentialError("snapshot format unknown", rule="snapshot")
        m = wire.expect_map(wire.unpack(data, max_items=1 << 20))
        ns = m["ns"]
        assert isinstance(ns, list)
        self.ns = ns


async def _child(path: Path) -> None:
    import trio

    from p2pinvite.halo.log import SpaceLog

    validator = ToyValidator()
    log = SpaceLog.open(path, validator, create=True, checkpoint_every=16)
    print(f"ready {log.length}", flush=True)

    async def writer() -> None:
        while True:
            n = validator.last + 1  # no await before append: nobody else takes n
            seq = await log.append(make_credential(n))
            print(f"{seq} {n}", flush=True)

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(writer)


if __name__ == "__main__":
    import trio

    trio.run(_child, Path(sys.argv[1]))
