"""Pairing benchmark: in-process PIN pairing latency against its floor, and where the rest goes.

Run: ./scripts/bench pairing [--json FILE] [--quick] [--samples N] [--profile N]

Everything runs in this process: two nodes (tests/invitations/pairing_nodes.py:
keys, identity, spaces, invitation store, network manager, invitation
manager, each in its own home in one temporary directory), real TCP on
127.0.0.1, mDNS off, real fsyncs. Every figure below is compared with
figures measured in the same run, never with an absolute time.

* **latency**: the host ("Alice") creates a space, its swarm secret (as the
  daemon does when it creates a space) and a single-use PIN space invitation
  (not timed), so every sample is the same work (a 3-entry log). The clock
  starts when the guest ("Bob") calls ``InvitationManager.accept`` (its first
  step is the TCP connect) and stops at its SUCCESS event: the host appended
  and fsynced the SpaceMember credential, and the guest verified the log,
  installed it and the swarm secret durably, and closed its connection
  (the guest reports SUCCESS once its session is closed). Both nodes share
  one event loop and one disk, so their CPU and fsyncs queue behind each
  other, as they do in the floor. 3 warm-up samples are not counted; before each sample the
  host's previous session has ended.
* **floor**, one sample right after each latency sample (so both see the same
  machine noise), as the sum of two parts:

  - *crypto*: the cryptography one such pairing makes, both sides, in one
    thread with nothing else: the link code's topic, Noise XXpsk0 (both
    sides, the binding proofs checked), the host chain check, CPace with key
    confirmation (both sides), sealing and opening the admit, the guest chain
    check, issuing the SpaceMember credential and the log's check of it,
    sealing and opening the swarm secret, the guest's verification of the
    3-entry log, and the Noise transport encryption and decryption of the
    application messages the real pairing sends (their count and sizes are
    recorded on one real pairing). The verifiers are long-lived, as the
    nodes' are, so cached chains count the same. A census (wrapping the
    primitives for one real pairing and one floor run) compares the calls
    each makes; the real path's extra calls are reported, as part of the rest.
  - *fsync*: the fsyncs on the pairing's critical path. They are counted on
    the real code path: a child process runs one pairing under ``strace -f
    -e trace=fsync,fdatasync,...`` (when strace exists; otherwise the list
    read from the code is used and the row says so). Two of them do not
    delay SUCCESS and are reported but left out of the floor: the guest's
    ``spaces/`` directory, made durable in a thread while the handshake runs,
    and the host's invitation record, written after it sent ``admitted``
    while the guest installs. Each counted fsync is replayed in the same
    temporary directory: a new file of the same size (written, then timed
    fsync), an append of the same size to an existing file (timed
    fdatasync), a directory after an entry was created in it (timed fsync).

  Target: latency <= 3x floor.
* **where the rest goes**: latency - floor per sample; the census's calls
  beyond the floor's; and N further pairings (same setup) under cProfile,
  whose self time on the event loop's thread is grouped by package (crypto,
  waiting in epoll, trio, socket calls, msgpack and the wire codec,
  p2pinvite's own code, the rest; a builtin's time goes to its callers'
  package unless its name says whose it is), summarised in rows as shares,
  with the top cumulative entries in the JSON ``extra``. cProfile sees one
  thread: the work handed to worker threads (the guest's install, the
  secret, record and log writes) is timed where it runs, by wrapping
  ``trio.to_thread.run_sync`` and ``trio.lowlevel.start_thread_soon``, as
  CPU and wall time per function. cProfile slows Python code more than C
  calls, so the shares overstate pure-Python work.

Admission throughput with many concurrent guests, on a real host daemon,
is bench/bench_scale.py.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import p2pinvite.crypto.ed25519 as ed25519_mod
import p2pinvite.halo.swarm_secrets as swarm_secrets_mod
import p2pinvite.invitations.protocol.messages as messages_mod
from bench._report import Row, parser, report
from p2pinvite.crypto.cpace import CPace, CPaceRole
from p2pinvite.crypto.noise import TAG, CipherState, HandshakeState, NoiseTransport
from p2pinvite.halo.credentials import (
    CredentialVerifier,
    Role,
    decode_credential,
    issue_authorized_device,
    issue_identity_genesis,
    issue_space_genesis,
    issue_space_member,
)
from p2pinvite.halo.keys import DeviceKeys, SigningKey, verify_binding_proof
from p2pinvite.halo.swarm_secrets import SwarmSecret, open_handover, seal_for_device
from p2pinvite.invitations.handlers import verify_device_chain
from p2pinvite.invitations.protocol import (
    AdmitMsg,
    State,
    cpace_channel_id,
    open_admit,
    seal_admit,
)
from p2pinvite.net.manager import encode_preamble
from p2pinvite.net.secure import PROTOCOL_XXPSK0, full_prologue
from p2pinvite.net.topics import Topic
from tests.invitations.pairing_nodes import Node, open_node

WARMUP = 3
PIN = b"493817"
# The marker the traced child writes (to /dev/null) around its one pairing.
MARK_BEGIN, MARK_END = b"p2pi-bench-begin", b"p2pi-bench-end"
SYNC_CALLS = "fsync,fdatasync,syncfs,sync_file_range,msync,sync"


# -- the real pairing ----------------------------------------------------------------------


@dataclass
class Pair:
    """The two nodes of the latency figure."""

    host: Node
    guest: Node
    count: int = 0


@contextlib.asynccontextmanager
async def open_pair(root: Path) -> Any:
    """A host ("Alice") and a guest ("Bob") node under *root*, real clock."""
    async with AsyncExitStack() as stack:
        host = await stack.enter_async_context(
            open_node(root / "host", name="Alice", clock=time.time))
        guest = await stack.enter_async_context(
            open_node(root / "guest", name="Bob", clock=time.time))
        yield Pair(host, guest)


async def prepare(pair: Pair) -> tuple[str, str, bytes]:
    """A new space with its swarm secret and a single-use PIN invitation: (code, pin, space)."""
    host = pair.host
    pair.count += 1
    space = host.spaces.create_space(f"space {pair.count}")
    # The daemon makes the secret when it creates a space (join_member_swarm);
    # without it the host would make it during the admission, two fsyncs the
    # real path does not have there.
    host.secrets.create(space)
    created = await host.manager.create(kind="space", space_id=space, auth="pin")
    assert created.pin is not None
    # The previous guest's session may still be closing on the host (linger):
    # start from an idle host.
    with trio.fail_after(10):
        while host.network.sessions:  # noqa: ASYNC110 - no event to wait on from outside
            await trio.sleep(0.001)
    return created.code, created.pin, space


async def pair_once(pair: Pair, code: str, pin: str,
                    during: Callable[[], contextlib.AbstractContextManager[Any]] | None = None
                    ) -> float:
    """Seconds from the guest's accept call to its SUCCESS event (the final one).

    *during* wraps that window, up to the end of the event stream just after
    it (the census, the strace markers, the profiler).
    """
    elapsed = None
    last = None
    with during() if during is not None else contextlib.nullcontext():
        t0 = time.perf_counter()
        async for ev in pair.guest.manager.accept(code, pin=pin):
            last = ev
            if ev.state is State.SUCCESS:
                elapsed = time.perf_counter() - t0
    if elapsed is None:
        raise SystemExit(f"pairing failed: {last}")
    return elapsed


# -- the crypto floor --------------------------------------------------------------------


@dataclass
class _Side:
    """One side's device keys, identity key, device chain and long-lived verifier."""

    keys: DeviceKeys
    identity: SigningKey
    chain: list[bytes]
    verifier: CredentialVerifier = field(default_factory=CredentialVerifier)

    @classmethod
    def make(cls, name: str) -> _Side:
        keys, identity = DeviceKeys.generate(), SigningKey.generate()
        genesis = issue_identity_genesis(identity, name=name)
        device = issue_authorized_device(identity, identity=identity.public_key,
                                         device=keys.device_public, parents=[genesis.id])
        return cls(keys, identity, [device.encode()])


@dataclass
class _FloorSpace:
    """What exists before a pairing starts: the space, its secret, the invitation's topic."""

    space: bytes
    entries: list[bytes]
    owner_entry: bytes
    secret: SwarmSecret
    link_secret: bytes
    host_topic: Topic


def _psk(topic: Topic) -> bytes:
    """A link topic's PSK."""
    assert topic.psk is not None  # a link topic has one
    return topic.psk


class CryptoFloor:
    """The cryptography of one PIN space pairing, both sides, in this thread.

    :meth:`run` mirrors the calls the real path makes (see the module
    docstring); the census in :func:`census` checks that.
    """

    def __init__(self, transport_sizes: list[int]) -> None:
        self.host = _Side.make("Alice")
        self.guest = _Side.make("Bob")
        self.host_payload = self.host.keys.binding_proof()
        self.guest_payload = self.guest.keys.binding_proof()
        # Which messages the real pairing encrypted, and which of them it also
        # decrypted before SUCCESS (the last end-of-stream markers are not).
        sent = [n for n in transport_sizes if n >= 0]
        read = Counter(-n for n in transport_sizes if n < 0)
        self.messages: list[tuple[int, bool]] = []
        for n in sent:
            self.messages.append((n, read[n] > 0))
            read[n] -= 1
        self._zeros = bytes(max(sent, default=0))
        self._spare = NoiseTransport(send=CipherState(k=bytes(32)), recv=None)

    def prepare(self) -> _FloorSpace:
        """A fresh space (genesis and owner, signed by a space key) and link secret."""
        space_key = SigningKey.generate()
        space = space_key.public_key
        owner = self.host.identity.public_key
        genesis = issue_space_genesis(space_key, owner=owner, name="space")
        member = issue_space_member(space_key, issuer=space, space=space, member=owner,
                                    role=Role.OWNER, name="Alice", parents=[genesis.id])
        link_secret = os.urandom(32)
        return _FloorSpace(space, [genesis.encode(), member.encode()], member.id,
                           SwarmSecret(space, 1, os.urandom(32)), link_secret,
                           Topic.from_secret(link_secret))

    def run(self, s: _FloorSpace) -> None:
        """One pairing's cryptography (the timed part)."""
        host, guest = self.host, self.guest
        # Guest: the topic and PSK from the code.
        topic = Topic.from_secret(s.link_secret)
        body = encode_preamble(topic.id)
        # Noise XXpsk0; each side checks the other's binding proof.
        i = HandshakeState(PROTOCOL_XXPSK0, initiator=True,
                           prologue=full_prologue(PROTOCOL_XXPSK0, body),
                           s=guest.keys.static_private, psks=(_psk(topic),))
        r = HandshakeState(PROTOCOL_XXPSK0, initiator=False,
                           prologue=full_prologue(PROTOCOL_XXPSK0, body),
                           s=host.keys.static_private, psks=(_psk(s.host_topic),))
        r.read_message(i.write_message())
        host_proof = i.read_message(r.write_message(self.host_payload))
        assert i.remote_static is not None
        verify_binding_proof(host_proof, i.remote_static)
        guest_proof = r.read_message(i.write_message(self.guest_payload))
        assert r.remote_static is not None
        verify_binding_proof(guest_proof, r.remote_static)
        ti, tr = i.transport(), r.transport()
        # Guest: the host's device chain.
        verify_device_chain(guest.verifier, host.identity.public_key, host.keys.device_public,
                            host.chain)
        # CPace, both sides, with key confirmation; the admit sealed under ISK.
        ci = cpace_channel_id(guest.keys.static_public, host.keys.static_public)
        a = CPace(PIN, role=CPaceRole.INITIATOR, sid=i.handshake_hash, ci=ci)
        b = CPace(PIN, role=CPaceRole.RESPONDER, sid=r.handshake_hash, ci=ci)
        share_a = a.message()
        b.receive(share_a)
        a.receive(b.message())
        a.verify_confirmation_tag(b.confirmation_tag())
        sealed = seal_admit(a.isk, AdmitMsg(guest.keys.device_public,
                                            guest.identity.public_key, tuple(guest.chain),
                                            "Bob"))
        b.verify_confirmation_tag(a.confirmation_tag())
        admit = open_admit(b.isk, sealed)
        # Host: the guest's chain, the credential issued, the log's check of it,
        # the swarm secret sealed to the guest's static key.
        assert admit.identity is not None
        verify_device_chain(host.verifier, admit.identity, admit.device, admit.chain)
        cred = issue_space_member(
            host.keys, issuer=host.identity.public_key, space=s.space, member=admit.identity,
            role=Role.EDITOR, name=admit.name, parents=[s.owner_entry], chain=host.chain,
            invitation=bytes(16))
        host.verifier.verify(cred)
        box = seal_for_device(s.secret, r.remote_static)
        # Guest: the swarm secret, then every entry of the log it receives.
        open_handover(guest.keys.static_private, s.space, 1, box)
        for data in [*s.entries, cred.encode()]:
            guest.verifier.verify(decode_credential(data))
        # The application messages, on one pair of ciphers (the cost does not
        # depend on the direction): encrypted, and decrypted if the real
        # pairing did before SUCCESS (in nonce order, so those it did not go
        # through a cipher of their own).
        zeros = self._zeros
        for n, read in self.messages:
            if read:
                tr.decrypt(ti.encrypt(zeros[:n]))
            else:
                self._spare.encrypt(zeros[:n])


# -- census of crypto calls -------------------------------------------------------------------


@contextlib.contextmanager
def census() -> Iterator[tuple[Counter[str], list[int]]]:
    """Count the crypto primitives called inside the block, and the transport plaintext sizes
    (encrypted: the size; decrypted: minus the size).

    Wraps, for the block's duration, the Python-level entry points every
    such call goes through (Ed25519 verify and sign, Noise handshake
    messages, CPace, the sealed boxes, the admit seal key, transport
    encrypt/decrypt); C functions cannot be wrapped, their callers are.
    """
    calls: Counter[str] = Counter()
    sizes: list[int] = []
    patches: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str, label: str,
             size: Callable[[tuple[Any, ...]], int] | None = None) -> None:
        orig = owner.__dict__[name]
        fn = orig.__func__ if isinstance(orig, staticmethod | classmethod) else orig

        def counted(*args: Any, **kw: Any) -> Any:
            calls[label] += 1
            if size is not None:
                sizes.append(size(args))
            return fn(*args, **kw)

        patches.append((owner, name, orig))
        setattr(owner, name, counted)

    wrap(ed25519_mod, "_verify_checked", "ed25519 verify")
    wrap(SigningKey, "sign", "ed25519 sign")
    wrap(DeviceKeys, "sign", "ed25519 sign")
    wrap(HandshakeState, "write_message", "noise handshake write")
    wrap(HandshakeState, "read_message", "noise handshake read")
    wrap(CPace, "message", "cpace share")
    wrap(CPace, "receive", "cpace receive")
    wrap(CPace, "confirmation_tag", "cpace tag")
    wrap(CPace, "verify_confirmation_tag", "cpace tag verify")
    wrap(messages_mod, "admit_seal_key", "admit seal key")
    wrap(swarm_secrets_mod, "seal", "sealed box seal")
    wrap(swarm_secrets_mod, "open_sealed", "sealed box open")
    wrap(NoiseTransport, "encrypt", "transport encrypt", lambda a: len(a[1]))
    wrap(NoiseTransport, "encrypt_into", "transport encrypt", lambda a: len(a[1]))
    wrap(NoiseTransport, "decrypt", "transport decrypt", lambda a: -(len(a[1]) - TAG))
    try:
        yield calls, sizes
    finally:
        for owner, name, orig in reversed(patches):
            setattr(owner, name, orig)


# -- fsyncs: counted under strace, replayed --------------------------------------------------


@dataclass(frozen=True)
class SyncOp:
    """One fsync-family call of the pairing: which side, what, how, how big."""

    who: str  # "host" or "guest"
    rel: str  # the path relative to that side's home (temporary names made final)
    call: str  # fsync or fdatasync
    kind: str  # "new" file, "append" to a file, or "dir"
    size: int
    critical: bool

    @property
    def label(self) -> str:
        what = re.sub(r"[0-9a-f]{32,64}", "<id>", self.rel)
        return f"{self.who} {self.call} {what} ({self.kind}, {self.size} B)"


# The two that do not delay SUCCESS (see the module docstring).
def _overlapped(who: str, rel: str) -> bool:
    return (who, rel) == ("guest", "spaces") or (who == "host" and rel.startswith("invitations/"))


# Read from the code (handlers.py, spaces.py, identity.py, swarm_secrets.py, store.py),
# for machines without strace: what one pairing of this benchmark fsyncs, in order.
FROM_CODE: list[tuple[str, str, str, str]] = [
    ("guest", "spaces", "fsync", "dir"),
    ("host", "spaces/<id>/space.log", "fdatasync", "append"),
    ("guest", "swarm/<id>.swarm", "fsync", "new"),
    ("guest", "swarm", "fsync", "dir"),
    ("host", "invitations/<inv>.inv", "fdatasync", "append"),
    ("guest", "spaces/<id>/space.log", "fsync", "new"),
    ("guest", "spaces/<id>", "fsync", "dir"),
]


def _final_name(rel: str) -> str:
    """The final name of a temporary file: ``.NAME.PID.tmp``, ``.NAME.PID.new.tmp`` -> ``NAME``."""
    head, _, name = rel.rpartition("/")
    name = re.sub(r"^\.(.+?)\.\d+(?:\.new)?\.tmp$", r"\1", name)
    return f"{head}/{name}" if head else name


def _snapshot(root: Path) -> dict[str, int]:
    """Every path under *root*: file size, or -1 for a directory."""
    out = {}
    for p in root.rglob("*"):
        with contextlib.suppress(OSError):
            out[str(p.relative_to(root))] = -1 if p.is_dir() else p.stat().st_size
    return out


async def _trace_child(root: Path) -> None:
    """``--trace-child``: warm up, then one marked pairing; print the homes' file sizes."""
    marker = os.open(os.devnull, os.O_WRONLY)
    async with open_pair(root) as pair:
        for _ in range(2):
            code, pin, _ = await prepare(pair)
            await pair_once(pair, code, pin)
        code, pin, _ = await prepare(pair)
        before = _snapshot(root)

        @contextlib.contextmanager
        def marked() -> Iterator[None]:
            os.write(marker, MARK_BEGIN)
            yield
            os.write(marker, MARK_END)

        await pair_once(pair, code, pin, marked)
        after = _snapshot(root)
    print(json.dumps({"root": str(root), "before": before, "after": after}))


def count_fsyncs(tmp: Path) -> tuple[list[SyncOp], str]:
    """The fsync-family calls of one pairing, from strace; or the list read from the code."""
    strace = shutil.which("strace")
    if strace is None:
        return _from_code(), "read from the code (no strace here)"
    out = tmp / "strace.txt"
    child_root = tmp / "traced"
    proc = subprocess.run(
        [strace, "-f", "-y", "-qq", "-e", f"trace={SYNC_CALLS},write", "-o", str(out),
         sys.executable, str(Path(__file__).resolve()), "--trace-child", str(child_root)],
        capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        print(f"note: strace run failed ({proc.stderr.strip()[-200:]}); using the code's list",
              file=sys.stderr)
        return _from_code(), "read from the code (strace failed)"
    sizes = json.loads(proc.stdout.strip().splitlines()[-1])
    before, after, root = sizes["before"], sizes["after"], sizes["root"]
    ops: list[SyncOp] = []
    inside = False
    call_re = re.compile(r"^\d+\s+(\w+)\(\d+<([^>]*)>")
    for line in out.read_text().splitlines():
        if MARK_BEGIN.decode() in line:
            inside = True
        elif MARK_END.decode() in line:
            break
        elif inside and (m := call_re.match(line)) and m.group(1) in SYNC_CALLS.split(","):
            path = m.group(2)
            rel_home = os.path.relpath(path, root)
            who, _, rel = rel_home.partition("/")
            rel = _final_name(rel or ".")
            key = f"{who}/{rel}"
            if after.get(key) == -1:
                kind, size = "dir", 0
            elif key in before:
                kind, size = "append", max(0, after.get(key, 0) - before[key])
            else:
                kind, size = "new", after.get(key, 0)
            ops.append(SyncOp(who, rel, m.group(1), kind, size, not _overlapped(who, rel)))
    # A resumed (unfinished) line of strace names no path; nothing is lost: the
    # call's own line, with the path, was matched.
    return ops, "counted with strace on one pairing"


def _from_code() -> list[SyncOp]:
    # Sizes as this benchmark's pairing makes them (3-entry log, one secret).
    size = {"append": 600, "new": 2000, "dir": 0}
    return [SyncOp(who, rel, call, kind, 100 if "swarm/" in rel else size[kind],
                   not _overlapped(who, rel)) for who, rel, call, kind in FROM_CODE]


class FsyncReplay:
    """Replays a list of :class:`SyncOp` in a scratch directory; times only the fsync calls."""

    def __init__(self, base: Path, ops: list[SyncOp]) -> None:
        self.base = base
        self.ops = ops
        self.n = 0
        for op in ops:
            p = self._path(op)
            if op.kind == "dir":
                p.mkdir(parents=True, exist_ok=True)
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                if op.kind == "append":
                    p.write_bytes(bytes(4096))  # an existing file to append to

    def _path(self, op: SyncOp) -> Path:
        return self.base / op.who / op.rel.replace("<", "_").replace(">", "_")

    def run(self, critical: bool) -> float:
        """Seconds spent in the fsyncs of the ops on (or off) the critical path."""
        self.n += 1
        total = 0.0
        sync = {"fsync": os.fsync, "fdatasync": os.fdatasync}
        for k, op in enumerate(self.ops):
            if op.critical != critical:
                continue
            p = self._path(op)
            do = sync.get(op.call, os.fsync)
            if op.kind == "dir":
                (p / f"entry.{self.n}.{k}").mkdir()  # a change for the journal to commit
                fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
            elif op.kind == "append":
                fd = os.open(p, os.O_WRONLY | os.O_APPEND)
                os.write(fd, os.urandom(op.size))
            else:
                tmp = p.with_name(f".{p.name}.{self.n}.{k}.tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.write(fd, os.urandom(op.size))
            try:
                t0 = time.perf_counter()
                do(fd)
                total += time.perf_counter() - t0
            finally:
                os.close(fd)
            if op.kind == "new":
                os.replace(tmp, p.with_name(f"{p.name}.{self.n}.{k}"))
        return total


# -- the profile ------------------------------------------------------------------------------

GROUPS = ["crypto", "idle in epoll (waiting for worker threads)",
          "trio (scheduling, I/O, thread hand-off)", "socket calls", "msgpack and wire codec",
          "p2pinvite code (protocol, halo, net)", "stdlib and other builtins"]
CRYPTO, EPOLL, TRIO, SOCKET, MSGPACK, OURS, OTHER = GROUPS

# Builtins whose name says whose they are; any other builtin's time goes to its callers.
_BUILTIN_NAMES = [
    (EPOLL, ("select.epoll",)),
    (SOCKET, ("_socket.socket",)),
    (MSGPACK, ("msgpack",)),
    (CRYPTO, ("_hashlib", "_blake2", "_hmac", "ed25519", "x25519", "chacha20", "aesgcm",
              "hkdf", "cryptography")),
]


def _file_group(file: str) -> str:
    """The group of a function defined in *file*."""
    if "/p2pinvite/crypto/" in file or "/cryptography/" in file or file.endswith("/hmac.py"):
        return CRYPTO
    if "/trio/" in file or "/outcome/" in file or "/sniffio/" in file:
        return TRIO
    if "/msgpack/" in file or file.endswith("p2pinvite/wire.py"):
        return MSGPACK
    if file.endswith("/socket.py"):
        return SOCKET
    if "/p2pinvite/" in file or "/tests/" in file:
        return OURS
    return OTHER


def _self_time_by_group(raw: dict[Any, Any]) -> defaultdict[str, float]:
    """Self time per group; a builtin's own is split among its callers' groups
    (``pow`` called from elligator.py is crypto, a lock released by trio's
    thread cache is trio), unless its name says whose it is."""
    by_group: defaultdict[str, float] = defaultdict(float)
    for (file, _, func), (_, _, tt, _, callers) in raw.items():
        if file != "~":
            by_group[_file_group(file)] += tt
            continue
        name = func.lower()
        named = next((g for g, keys in _BUILTIN_NAMES if any(k in name for k in keys)), None)
        if named is not None or not callers:
            by_group[named or OTHER] += tt
            continue
        # Each caller's entry holds the self time this builtin spent under it.
        shares = {c: v[2] for c, v in callers.items()}
        total = sum(shares.values())
        for (cfile, _, _), part in shares.items():
            by_group[_file_group(cfile) if cfile != "~" else OTHER] += (
                tt * part / total if total else tt / len(shares))
    return by_group


def profile_summary(prof: cProfile.Profile, pairings: int) -> dict[str, Any]:
    """Self time per group (seconds and share) and the top cumulative entries."""
    raw: dict[Any, Any] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    by_group = _self_time_by_group(raw)
    total = sum(by_group.values()) or 1.0
    top = sorted(raw.items(), key=lambda kv: kv[1][3], reverse=True)[:30]
    return {
        "pairings": pairings,
        "profiled_s": total,
        "groups_ms_per_pairing": {g: by_group[g] / pairings * 1e3 for g in GROUPS},
        "shares": {g: by_group[g] / total for g in GROUPS},
        "top_cumulative": [
            {"function": f"{Path(file).name}:{line}({func})" if file != "~" else func,
             "calls": nc, "cum_ms_per_pairing": round(ct / pairings * 1e3, 3),
             "self_ms_per_pairing": round(tt / pairings * 1e3, 3)}
            for (file, line, func), (_, nc, tt, ct, _) in top],
    }


# -- the run ------------------------------------------------------------------------------------


async def measure(root: Path, samples: int, profiled: int,
                  ops: list[SyncOp]) -> dict[str, Any]:
    """Latency, floor (interleaved), census, profile; raw figures."""
    out: dict[str, Any] = {"lat": [], "crypto": [], "fsync": [], "overlapped": []}
    replay = FsyncReplay(root / "fsync-replay", ops)
    async with open_pair(root / "nodes") as pair:
        for _ in range(WARMUP):
            code, pin, _ = await prepare(pair)
            await pair_once(pair, code, pin)
        # One real pairing under the census: its crypto calls and message sizes.
        code, pin, _ = await prepare(pair)
        real: tuple[Counter[str], list[int]] | None = None

        @contextlib.contextmanager
        def counting() -> Iterator[None]:
            nonlocal real
            with census() as real:
                yield

        await pair_once(pair, code, pin, counting)
        assert real is not None
        real_calls, sizes = real
        floor = CryptoFloor(sizes)
        for _ in range(WARMUP):  # the floor's verifiers cache the chains, as the nodes' do
            floor.run(floor.prepare())
        one = floor.prepare()
        with census() as (floor_calls, _):
            floor.run(one)
        out["census"] = {"real": dict(real_calls), "floor": dict(floor_calls),
                         "transport_sizes": sizes}
        for _ in range(samples):
            code, pin, _ = await prepare(pair)
            out["lat"].append(await pair_once(pair, code, pin))
            s = floor.prepare()
            t0 = time.perf_counter()
            floor.run(s)
            out["crypto"].append(time.perf_counter() - t0)
            out["fsync"].append(replay.run(critical=True))
            out["overlapped"].append(replay.run(critical=False))
        prof = cProfile.Profile()
        threads: defaultdict[str, float] = defaultdict(float)
        walls = []
        for _ in range(profiled):
            code, pin, _ = await prepare(pair)
            walls.append(await pair_once(pair, code, pin, lambda: _profiling(prof, threads)))
        out["profile"] = profile_summary(prof, profiled)
        out["profile"]["wall_ms_per_pairing"] = statistics.median(walls) * 1e3
        out["profile"]["threads_ms_per_pairing"] = {
            k: round(v / profiled * 1e3, 3)
            for k, v in sorted(threads.items(), key=lambda kv: -kv[1])}
    return out


@contextlib.contextmanager
def _profiling(prof: cProfile.Profile, threads: defaultdict[str, float]) -> Iterator[None]:
    """cProfile on the event loop's thread; the worker threads' work timed by function.

    cProfile sees one thread only: what the pairing runs in worker threads
    (fsyncs, the guest's install of the log, the log's committer) shows there
    as time waiting in epoll. Wrapping trio's two ways into a thread times
    each such function where it runs: wall time (fsyncs and waits included)
    and the thread's CPU time.
    """
    run_sync, start_soon = trio.to_thread.run_sync, trio.lowlevel.start_thread_soon

    def timed(fn: Callable[..., Any]) -> Callable[..., Any]:
        name = getattr(fn, "__qualname__", type(fn).__name__)

        def inner(*a: Any) -> Any:
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*a)
            finally:
                threads[f"wall {name}"] += time.perf_counter() - t0
                threads[f"cpu {name}"] += time.thread_time() - c0
        return inner

    async def run_sync_timed(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return await run_sync(timed(fn), *args, **kw)

    def start_soon_timed(fn: Callable[[], Any], deliver: Callable[[Any], object],
                         **kw: Any) -> None:
        start_soon(timed(fn), deliver, **kw)

    trio.to_thread.run_sync = run_sync_timed  # type: ignore[assignment]
    trio.lowlevel.start_thread_soon = start_soon_timed  # type: ignore[assignment]
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        trio.to_thread.run_sync = run_sync
        trio.lowlevel.start_thread_soon = start_soon


def rows_of(m: dict[str, Any], ops: list[SyncOp], how: str) -> list[Row]:
    """The table: latency, floor, ratio, then the breakdown."""
    lat, crypto, fs = m["lat"], m["crypto"], m["fsync"]
    floors = [c + f for c, f in zip(crypto, fs, strict=True)]
    lat_med, floor_med = statistics.median(lat), statistics.median(floors)
    ratio = lat_med / floor_med
    rest = [a - b for a, b in zip(lat, floors, strict=True)]
    critical = [op for op in ops if op.critical]
    real, fl = Counter(m["census"]["real"]), Counter(m["census"]["floor"])
    beyond = {k: real[k] - fl[k] for k in real | fl if real[k] != fl[k]}
    prof = m["profile"]
    ms = 1e3
    rows = [
        Row.of("PIN pairing latency (accept -> SUCCESS)", lat, "ms", scale=ms,
               extra={"samples_ms": [round(x * ms, 3) for x in lat]}),
        Row.of("floor: crypto + critical-path fsyncs", floors, "ms", scale=ms,
               floor="one thread, nothing else: the pairing's cryptography, then its "
                     "critical-path fsyncs replayed"),
        Row("latency / floor", ratio, "x", "<= 3x", ratio <= 3.0,
            {"latency_median_ms": lat_med * ms, "floor_median_ms": floor_med * ms}),
        Row.of("  crypto (both sides)", crypto, "ms", scale=ms,
               extra={"calls": m["census"]["floor"],
                      "transport_sizes": m["census"]["transport_sizes"]}),
        Row.of(f"  fsyncs on the critical path ({len(critical)} of {len(ops)})", fs, "ms",
               scale=ms, extra={"ops": [op.label for op in critical], "how": how}),
        Row.of("  the rest: latency - floor", rest, "ms", scale=ms),
        Row("    crypto calls beyond the floor's (census)",
            sum(v for v in beyond.values() if v > 0), "calls",
            extra={"real_minus_floor": beyond, "census": m["census"]}),
        Row(f"    event loop, profiled ({prof['pairings']} pairings): time per pairing",
            prof["profiled_s"] / prof["pairings"] * ms, "ms",
            extra={"unprofiled_median_ms": lat_med * ms,
                   "profiled_wall_median_ms": prof["wall_ms_per_pairing"],
                   "groups_ms_per_pairing": prof["groups_ms_per_pairing"],
                   "top_cumulative": prof["top_cumulative"]}),
    ]
    rows += [Row(f"      {g}", 100 * prof["shares"][g], "% of it") for g in GROUPS]
    threads = prof["threads_ms_per_pairing"]
    rows += [
        Row("    worker threads' CPU per profiled pairing (install, writes)",
            sum(v for k, v in threads.items() if k.startswith("cpu ")), "ms",
            extra={"by_function_ms": threads,
                   "note": "the guest's install includes the log verification the crypto "
                           "floor counts; wall includes fsyncs and waits (the log's "
                           "committer waits up to 5 ms for a next batch after a commit, "
                           "off the pairing's path)"}),
        Row.of(f"fsyncs beside the critical path ({len(ops) - len(critical)}, not in floor)",
               m["overlapped"], "ms", scale=ms,
               extra={"ops": [op.label for op in ops if not op.critical], "how": how}),
    ]
    return rows


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, help="latency samples (default 200; quick 10)")
    p.add_argument("--profile", type=int, help="profiled pairings (default 50; quick 5)")
    p.add_argument("--trace-child", metavar="DIR", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.trace_child:
        trio.run(_trace_child, Path(args.trace_child))
        return 0
    samples = args.samples or (10 if args.quick else 200)
    profiled = args.profile or (5 if args.quick else 50)
    with tempfile.TemporaryDirectory(prefix="bench-pairing-") as tmp:
        ops, how = count_fsyncs(Path(tmp))
        m = trio.run(measure, Path(tmp), samples, profiled, ops)
    return report("pairing", rows_of(m, ops, how), args.json, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
