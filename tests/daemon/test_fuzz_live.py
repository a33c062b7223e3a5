"""A live daemon gets fuzzed traffic on its TCP port, its member topics and its IPC socket.

Issue 18, second half: the decoders are fuzzed one by one in tests/fuzz/;
here the whole daemon is. One host daemon (Alice, owner of a space, with Bob a
member on another daemon) takes, concurrently and in bounded numbers:

* **TCP, unauthenticated**: random, truncated and oversized bytes; preambles
  that are too long, not msgpack or name unknown topics; preambles naming its
  live topics (the member topics of the space and of the identity, and a
  decoy invitation's link topic) followed by garbage, mutated or wrong-PSK
  Noise handshake messages;
* **TCP, authenticated**: complete Noise handshakes (the topic PSKs are
  computed from the swarm secret files in the host's home, and from the decoy
  code) followed by garbage: on the link topic, random and mutated invitation
  messages; on a member topic with a fresh static key, garbage handshake
  payloads and hellos; and as Carol, a real member device whose daemon is
  stopped, a valid hello followed by random, mutated and replayed sync
  messages (entries included), so the sync decoder and the log's ingest see
  them;
* **IPC**: random bytes, bad frames, random msgpack maps, and requests naming
  real methods with random params (a reply of code ``internal`` means a
  handler raised an untyped exception: a bug).

Afterwards the host process is alive, a real guest daemon joins with a PIN
invitation, Bob (admitted before the fuzzing) still syncs a role change the
host makes, and the host's stderr holds no Traceback.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from p2pinvite import ipc_codec
from p2pinvite.crypto.noise import HandshakeState, generate_private_key
from p2pinvite.errors import HandshakeTimeout, P2PInviteError
from p2pinvite.halo.identity import IdentityService
from p2pinvite.halo.keys import DeviceKeys
from p2pinvite.halo.swarm_secrets import SwarmSecrets
from p2pinvite.invitations.codes import LinkCode
from p2pinvite.net.manager import MAX_PREAMBLE, encode_preamble
from p2pinvite.net.secure import (
    PROTOCOL_XX,
    PROTOCOL_XXPSK0,
    SecureStream,
    full_prologue,
    open_secure_stream,
)
from p2pinvite.net.topics import Topic
from p2pinvite.swarm.hello import MAX_HELLO, Hello, encode_hello
from p2pinvite.sync.messages import MAX_MESSAGE, EntriesMsg, HeadsMsg, WantMsg, encode_message
from p2pinvite.wire import frame
from tests.fuzz.test_fuzz_invitations import MESSAGES as INVITATION_MESSAGES
from tests.soak import size

from .conftest import DaemonFactory, DaemonProc
from .test_e2e_members import admit, eventually, member_set
from .test_e2e_pairing import assert_alive, ok_json, tcp_address

pytestmark = pytest.mark.slow

#: Connections of each TCP family, and IPC connections (each carries a batch of frames).
TCP_CONNECTIONS = size(120, 1500)
IPC_CONNECTIONS = size(60, 600)
#: Connections in flight at once (below the unauthenticated cap of 64: eviction is
#: exercised by tests/daemon/test_e2e_pairing.py; here every attempt should be read).
PARALLEL = 16
#: How long one fuzz connection waits for the daemon to hang up.
DROP_WAIT = 2.0
#: IPC methods fuzzed: those that only read, those that fail on any param that does
#: not name a real thing, and two whose success is harmless (an identity exists
#: already; an unused invitation). Not spaces.create, spaces.leave or the
#: subscriptions (which stream until the client leaves).
FUZZED_METHODS = ("status", "identity.show", "identity.create", "devices.list", "spaces.list",
                  "spaces.members", "spaces.peers", "invitations.list", "invitations.create",
                  "invitations.validate", "invitations.revoke", "invitations.accept",
                  "spaces.role", "spaces.remove", "devices.remove", "no.such.method")


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """*data* after a few random byte edits (flip, overwrite, insert, delete, truncate)."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.choice(["flip", "set", "insert", "delete", "truncate"])
        i = rng.randint(0, max(len(out) - 1, 0))
        if op == "flip" and out:
            out[i] ^= 1 << rng.randint(0, 7)
        elif op == "set" and out:
            out[i] = rng.choice([0, 0x7F, 0xC1, 0xDC, 0xFF, rng.randint(0, 255)])
        elif op == "insert":
            out[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == "delete":
            del out[i : i + rng.randint(1, 16)]
        else:
            del out[i:]
    return bytes(out)


def _random_msgpack(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randint(0, 9 if depth < 3 else 6)
    simple: list[Callable[[], Any]] = [
        lambda: None, lambda: rng.random() < 0.5, lambda: rng.randint(-(2**63), 2**64 - 1),
        lambda: rng.randint(-3, 300), lambda: rng.randbytes(rng.choice([0, 16, 32, 64, 200])),
        lambda: "".join(chr(rng.randint(32, 0x2FF)) for _ in range(rng.randint(0, 20))),
        lambda: rng.random() * 1e300,
    ]
    if kind < len(simple):
        return simple[kind]()
    if kind == 7:
        return [_random_msgpack(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    keys = ["t", "v", "id", "method", "params", "space", "code", "pin", "member", "role",
            "heads", "entries", "ids", "log", "addrs", "x"]
    return {rng.choice(keys): _random_msgpack(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def _packed(value: Any) -> bytes:
    return bytes(msgpack.packb(value, use_bin_type=True))


@dataclass
class Target:
    """What the fuzzer knows of the host: its address and live topics, and Carol's keys."""

    addr: tuple[str, int]
    link: Topic  # a decoy invitation's topic (PSK from its code)
    swarms: list[Topic]  # the member topics of the space and of the identity
    space: bytes
    carol: DeviceKeys
    carol_identity: bytes
    carol_chain: tuple[bytes, ...]
    entries: list[bytes]  # real credentials (Carol's chain), mutated into sync entries


# -- TCP ----------------------------------------------------------------------------------


async def _hang_up_wait(stream: trio.SocketStream) -> None:
    """Read until the daemon closes (or a short while passes), then close our end."""
    with trio.move_on_after(DROP_WAIT):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            while await stream.receive_some(65536):
                pass
    await trio.aclose_forcefully(stream)


async def _raw(t: Target, rng: random.Random) -> None:
    """Unauthenticated garbage: random bytes, bad preambles, bad handshakes."""
    topic = rng.choice([t.link, *t.swarms])
    preamble = encode_preamble(topic.id)
    case = rng.randrange(9)
    if case == 0:
        data = rng.randbytes(rng.choice([1, 2, 3, 50, 4096]))
    elif case == 1:
        data = rng.randbytes(70_000)  # larger than any frame
    elif case == 2:
        data = frame(rng.randbytes(rng.randint(MAX_PREAMBLE + 1, 600)))
    elif case == 3:
        data = frame(_mutate(rng, preamble))
    elif case == 4:
        data = frame(preamble)[: rng.randint(1, len(preamble) + 1)]  # truncated
    elif case == 5:
        data = frame(encode_preamble(rng.randbytes(32))) + rng.randbytes(64)
    elif case == 6:  # a live topic, then handshake frames of any size
        data = frame(preamble) + b"".join(
            frame(rng.randbytes(rng.choice([0, 10, 32, 48, 96, 1000])))
            for _ in range(rng.randint(1, 3)))
    elif case == 7:  # a live topic, then a real first message with a mutation or a wrong PSK
        name = PROTOCOL_XX if rng.random() < 0.3 else PROTOCOL_XXPSK0
        hs = HandshakeState(name, initiator=True, prologue=full_prologue(name, preamble),
                            s=generate_private_key(),
                            psks=(rng.choice([topic.psk, rng.randbytes(32)]),)
                            if name == PROTOCOL_XXPSK0 else ())
        msg1 = hs.write_message()
        data = frame(preamble) + frame(_mutate(rng, msg1) if rng.random() < 0.5 else msg1)
    else:  # a live topic and a garbage stream
        data = frame(preamble) + rng.randbytes(rng.randint(1, 70_000))
    stream = await trio.open_tcp_stream(*t.addr)
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await stream.send_all(data)
    await _hang_up_wait(stream)


async def _handshake(t: Target, topic: Topic, static: bytes, payload: bytes) -> SecureStream:
    """A real Noise handshake on *topic*, as the library's own dialer does it; then the accept."""
    body = encode_preamble(topic.id)
    tcp = await trio.open_tcp_stream(*t.addr)
    secure = await open_secure_stream(tcp, initiator=True, static_key=static, psk=topic.psk,
                                      prologue=body, payload=payload, lead=frame(body),
                                      timeout=5)
    try:
        with trio.fail_after(5):
            await secure.receive_message(0)  # the accept
    except trio.TooSlowError:  # a busy machine, or a cap: counted as refused
        await trio.aclose_forcefully(secure)
        raise HandshakeTimeout("no accept within 5 s") from None
    return secure


async def _talk(secure: SecureStream, messages: list[bytes]) -> None:
    """Send *messages* (stop when the daemon hangs up), then wait for the hang-up."""
    try:
        for m in messages:
            await secure.send_message(m)
        with trio.move_on_after(DROP_WAIT):
            while True:
                await secure.receive_message()
    except (P2PInviteError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(secure)


async def _link_session(t: Target, rng: random.Random) -> None:
    """The decoy invitation's topic, authenticated, then garbage invitation messages."""
    keys = DeviceKeys.generate()
    secure = await _handshake(t, t.link, keys.static_private, keys.binding_proof())
    pool = INVITATION_MESSAGES
    messages = [rng.choice([
        lambda: rng.randbytes(rng.randint(0, 300)),
        lambda: _mutate(rng, rng.choice(pool)),
        lambda: rng.choice(pool),
        lambda: _packed(_random_msgpack(rng)),
    ])() for _ in range(rng.randint(1, 4))]
    await _talk(secure, messages)


async def _stranger_session(t: Target, rng: random.Random) -> None:
    """A member topic with a fresh static key: garbage payloads, hellos and more."""
    keys = DeviceKeys.generate()
    payload = rng.choice([b"", rng.randbytes(rng.randint(1, 200)),
                          _mutate(rng, keys.binding_proof()), keys.binding_proof()])
    secure = await _handshake(t, rng.choice(t.swarms), keys.static_private, payload)
    hello = encode_hello(Hello(t.space, (("127.0.0.1", 1),), rng.randbytes(32),
                               (rng.randbytes(100),)))
    messages = [rng.choice([
        lambda: rng.randbytes(rng.randint(0, 300)),
        lambda: _mutate(rng, hello),
        lambda: _packed(_random_msgpack(rng)),
        lambda: rng.randbytes(MAX_HELLO + 1),
    ])() for _ in range(rng.randint(1, 3))]
    await _talk(secure, messages)


async def _member_session(t: Target, rng: random.Random) -> None:
    """Carol's real device on the space's topic: a valid hello, then bad sync traffic."""
    secure = await _handshake(t, t.swarms[0], t.carol.static_private, t.carol.binding_proof())
    hello = encode_hello(Hello(t.space, (), t.carol_identity, t.carol_chain))
    some = t.entries
    valid = [encode_message(HeadsMsg((), ())), encode_message(WantMsg((rng.randbytes(32),))),
             encode_message(EntriesMsg(tuple(some)))]
    sync = [rng.choice([
        lambda: rng.randbytes(rng.randint(0, 300)),
        lambda: _mutate(rng, rng.choice(valid)),
        lambda: _packed(_random_msgpack(rng)),
        # entries that are mutated credentials: refused by the log, never a crash
        lambda: encode_message(EntriesMsg(tuple(
            _mutate(rng, e) or b"\x00" for e in rng.sample(some, rng.randint(1, len(some)))))),
        lambda: rng.choice(valid),
        lambda: rng.randbytes(MAX_MESSAGE + 1),
    ])() for _ in range(rng.randint(1, 4))]
    # The session wants heads first; after them, entries reach the log's ingest.
    heads = [valid[0]] if rng.random() < 0.7 else []
    await _talk(secure, [hello, *heads, *sync])


async def _fuzz_tcp(t: Target, seed: int) -> dict[str, int]:
    """Run every TCP family TCP_CONNECTIONS times, PARALLEL at once; count the outcomes."""
    families = {"raw": _raw, "link": _link_session, "stranger": _stranger_session,
                "member": _member_session}
    done: dict[str, int] = dict.fromkeys(families, 0)
    refused: dict[str, int] = dict.fromkeys(families, 0)
    limit = trio.CapacityLimiter(PARALLEL)

    async def one(name: str, k: int) -> None:
        async with limit:
            rng = random.Random(f"{seed}/{name}/{k}")
            try:
                with trio.fail_after(30):  # a hang here is a daemon bug
                    await families[name](t, rng)
                done[name] += 1
            except (P2PInviteError, OSError, trio.BrokenResourceError):
                refused[name] += 1  # the daemon refused the handshake (e.g. a cap)

    async with trio.open_nursery() as nursery:
        for k in range(TCP_CONNECTIONS):
            for name in families:
                nursery.start_soon(one, name, k)
    return {**done, **{f"{k} refused": v for k, v in refused.items()}}


# -- IPC ----------------------------------------------------------------------------------


#: Param names the daemon's methods read, and values that get past a first check.
PARAM_NAMES = ("space", "member", "role", "name", "code", "pin", "id", "device", "kind",
               "auth", "expires_in", "max_uses", "note", "all", "admission_key")


def _params(rng: random.Random) -> dict[str, Any]:
    """A params map with real names: wrong types, sizes and values, and a few right ones."""
    def value() -> Any:
        return rng.choice([
            lambda: _random_msgpack(rng),
            lambda: "Team",  # the fuzzed space's name: lookups get past it
            lambda: rng.randbytes(32).hex(),
            lambda: rng.randbytes(rng.choice([1, 31, 33])).hex(),
            lambda: rng.choice(["owner", "admin", "editor", "reader", "removed", "pin", "none",
                                "key", "device", "space", "P2PI1-", "123456", " ", ""]),
            lambda: rng.choice([0, -1, 2**63, 2**64 - 1, True]),
        ])()
    return {rng.choice(PARAM_NAMES): value() for _ in range(rng.randint(0, 4))}


def _ipc_frames(rng: random.Random) -> list[bytes]:
    frames: list[bytes] = []
    for rid in range(rng.randint(1, 12)):
        case = rng.randrange(6)
        if case == 0:
            body = rng.randbytes(rng.randint(0, 200))
        elif case == 1:
            body = _packed(_random_msgpack(rng))
        elif case == 2:
            body = _mutate(rng, ipc_codec.encode(ipc_codec.Request(rid, "status"))[4:])
        else:  # a well-formed request of a real method with random params
            params = _params(rng) if rng.random() < 0.8 else _random_msgpack(rng)
            body = _packed({"id": rid, "method": rng.choice(FUZZED_METHODS),
                            "params": params})
        frames.append(len(body).to_bytes(4, "big") + body)
    return frames


async def _fuzz_ipc_connection(path: Path, rng: random.Random) -> list[ipc_codec.Reply]:
    """Send one batch of frames (sometimes cut short) and collect the replies."""
    data = b"".join(_ipc_frames(rng))
    if rng.random() < 0.1:
        data = rng.choice([b"\xff\xff\xff\xff", b"\x00\x10\x00\x00" + b"x" * 100,
                           data[: rng.randint(0, len(data))]])
    replies: list[ipc_codec.Reply] = []
    stream = await trio.open_unix_socket(str(path))
    buf = b""
    # The daemon keeps a connection open after its replies: read for a while.
    with trio.move_on_after(DROP_WAIT):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await stream.send_all(data)
            while chunk := await stream.receive_some(65536):
                buf += chunk
                while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
                    n = int.from_bytes(buf[:4], "big")
                    replies.append(ipc_codec.decode_reply(buf[4 : 4 + n]))
                    buf = buf[4 + n :]
    await trio.aclose_forcefully(stream)
    return replies


async def _fuzz_ipc(path: Path, seed: int) -> list[ipc_codec.Reply]:
    """IPC_CONNECTIONS batches, PARALLEL at once (the daemon serves 64 at once)."""
    replies: list[ipc_codec.Reply] = []
    limit = trio.CapacityLimiter(PARALLEL)

    async def one(k: int) -> None:
        async with limit:
            with trio.fail_after(30):  # a hang here is a daemon bug
                replies.extend(await _fuzz_ipc_connection(path, random.Random(f"{seed}/ipc/{k}")))

    async with trio.open_nursery() as nursery:
        for k in range(IPC_CONNECTIONS):
            nursery.start_soon(one, k)
    return replies


# -- the test -----------------------------------------------------------------------------


def _target(host: DaemonProc, carol_home: Path, space: str, decoy_code: str) -> Target:
    # The member topics are derived from the swarm secrets, as any member derives them.
    store = SwarmSecrets.open(host.home)
    space_key = bytes.fromhex(space)
    space_secret = store.get(space_key)
    assert space_secret is not None
    swarms = [Topic.for_swarm(space_secret.secret),  # first: the space's, for Carol
              *(Topic.for_swarm(s.secret) for s in store.all() if s.log != space_key)]
    ident = IdentityService.open(carol_home)
    try:
        carol, carol_identity = ident.device, ident.identity_key
        carol_chain = tuple(ident.device_chain())
    finally:
        ident.close()
    members = ok_json(host, "space", "members", space)
    assert len(members) == 3
    return Target(addr=tcp_address(host), link=Topic.from_secret(LinkCode.parse(decoy_code).secret),
                  swarms=swarms, space=space_key, carol=carol, carol_identity=carol_identity,
                  carol_chain=carol_chain, entries=list(carol_chain))


def test_fuzzed_daemon_still_admits_a_guest_and_syncs_a_member(daemons: DaemonFactory) -> None:
    host, bob, carol, guest = (daemons.start() for _ in range(4))
    ids = {n: ok_json(d, "identity", "create", "--name", n)["identity_key"]
           for d, n in ((host, "Alice"), (bob, "Bob"), (carol, "Carol"), (guest, "Gina"))}
    space = ok_json(host, "space", "create", "Team")["space_id"]
    admit(host, bob, space, "editor")
    admit(host, carol, space, "reader")
    eventually(lambda: ok_json(host, "space", "peers", space), lambda p: len(p) == 2,
               what="the host sees Bob and Carol connected")
    carol_home = carol.home
    assert carol.stop() == 0  # its keys now speak for the fuzzer
    decoy = ok_json(host, "invite", "create", "--space", space, "--role", "reader")
    t = _target(host, carol_home, space, decoy["code"])

    seed = int.from_bytes(os.urandom(4), "big") if os.environ.get("P2PINVITE_SOAK") else 18
    started = time.monotonic()
    counts = trio.run(_fuzz_tcp, t, seed)
    tcp_seconds = time.monotonic() - started
    replies = trio.run(_fuzz_ipc, host.socket_path, seed)
    answered = len(replies)
    internal = [r for r in replies if isinstance(r, ipc_codec.ErrorReply) and r.code == "internal"]
    print(f"seed {seed}: tcp {counts} in {tcp_seconds:.1f} s; ipc replies {answered}")

    assert host.proc.poll() is None, host.stderr()[-5000:]
    assert not internal, internal[:5]
    for family in ("member", "link", "stranger"):  # each got past the handshake at times
        assert counts[family] > 0, counts
    assert answered > IPC_CONNECTIONS  # the socket kept answering all along
    assert_alive(host, bob)
    # The garbage got deep: past the handshakes into every protocol's decoder.
    log = host.stderr()
    for reached in ("guest broke the protocol", "failed its hello", "broke the sync protocol"):
        assert reached in log

    # A real guest still joins with a PIN invitation.
    admit(host, guest, space, "reader")
    # Bob, admitted before the fuzzing, still syncs: a role change and the new member.
    ok_json(host, "space", "role", space, ids["Bob"], "admin")
    expected = {(ids["Alice"], "owner"), (ids["Bob"], "admin"), (ids["Carol"], "reader"),
                (ids["Gina"], "reader")}
    eventually(lambda: member_set(bob, space), lambda s: s == expected,
               what="Bob sees the role change and the new member")
    assert_alive(host, bob, guest)
    assert "Traceback" not in host.stderr()
