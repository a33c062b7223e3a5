"""Pairing benchmark: PIN pairing latency and admission throughput on loopback.

Run: ./scripts/bench pairing [--json FILE] [--samples N] [--guests N]

How it is measured (one process, loopback TCP, mDNS off, real homes in a
temporary directory, real fsyncs):

* **latency**: a host node (identity "Alice") and a guest node (identity
  "Bob"), each with its own home. For each sample the host creates a new
  space and a single-use PIN space invitation (not timed), so every sample
  is the same work (a 3-entry log); the clock starts when the guest calls
  ``InvitationManager.accept`` (its first step is the TCP connect) and stops
  when the accept yields SUCCESS, i.e. after the host appended and fsynced
  the SpaceMember credential, and the guest verified every log entry and
  installed the space log in place (log file fsync + link + directory fsync;
  the space directory was made durable while the handshake ran). The host's
  record write of the use follows its `admitted` message and overlaps the
  guest's install (docs/PROTOCOL.md Part 7 §5.1); both nodes share one disk
  and one process here, so their fsyncs and CPU queue behind each other.
  The guest's closing of the connection after SUCCESS is not timed.
  Samples run one after the other; 3 warm-up samples are not counted.
* **throughput**: a fresh host and G guests (default 200), one multi-use
  PIN device invitation; all G accepts start at once and the rate is G /
  (time from start to the last SUCCESS).
* **crypto-only limit**, in the same run: the cryptography of those G
  admissions without any I/O: per admission one Noise XXpsk0 handshake (both
  sides), one CPace run with key confirmation (both sides), sealing and
  opening the guest's admit under the CPace key, binding-proof
  checks, issuing the AuthorizedDevice credential, verifying the two device
  chains, and the guest's verification of the log it receives (admission i
  verifies i + 2 entries, as above). Target: throughput >= 50 % of
  G / (that CPU time).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _report import Row, parser, percentile, report

from p2pinvite.crypto.cpace import CPace, CPaceRole
from p2pinvite.crypto.noise import HandshakeState
from p2pinvite.halo.credentials import (
    CredentialVerifier,
    issue_authorized_device,
    issue_identity_genesis,
)
from p2pinvite.halo.keys import DeviceKeys, SigningKey, verify_binding_proof
from p2pinvite.halo.log import decode_entry, entries_from_credentials
from p2pinvite.halo.state import LogKind, MembershipState
from p2pinvite.invitations.handlers import verify_device_chain
from p2pinvite.invitations.protocol import (
    AdmitMsg,
    State,
    cpace_channel_id,
    open_admit,
    seal_admit,
)
from p2pinvite.net.secure import PROTOCOL_XXPSK3, full_prologue
from tests.invitations.pairing_nodes import Node, open_node

PIN = b"493817"


async def _guests(stack: AsyncExitStack, root: Path, n: int, tag: str) -> list[Node]:
    return [await stack.enter_async_context(
        open_node(root / f"{tag}{i}", clock=time.time, step_timeout=60, connect_timeout=60))
        for i in range(n)]


async def _accept(guest: Node, code: str, pin: str | None) -> float:
    """Seconds from the accept call to its SUCCESS event (the stream then closes, untimed)."""
    t0 = time.perf_counter()
    elapsed = None
    last = None
    async for ev in guest.manager.accept(code, pin=pin):
        last = ev
        if ev.state is State.SUCCESS:
            elapsed = time.perf_counter() - t0
    if elapsed is None:
        raise SystemExit(f"pairing failed: {last}")
    return elapsed


async def measure_latency(root: Path, samples: int) -> list[float]:
    async with AsyncExitStack() as stack:
        host = await stack.enter_async_context(
            open_node(root / "lat-host", name="Alice", clock=time.time))
        guest = await stack.enter_async_context(
            open_node(root / "lat-guest", name="Bob", clock=time.time))
        out = []
        for i in range(samples + 3):
            space = host.spaces.create_space(f"space {i}")
            created = await host.manager.create(kind="space", space_id=space, auth="pin")
            t = await _accept(guest, created.code, created.pin)
            if i >= 3:  # warm-up
                out.append(t)
        return out


async def measure_throughput(root: Path, n: int) -> float:
    async with AsyncExitStack() as stack:
        host = await stack.enter_async_context(
            open_node(root / "tp-host", name="Alice", clock=time.time, step_timeout=120))
        guests = await _guests(stack, root, n, "tp-g")
        created = await host.manager.create(kind="device", auth="pin", max_uses=None)
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for g in guests:
                nursery.start_soon(_accept, g, created.code, created.pin)
        elapsed = time.perf_counter() - t0
        assert len(host.identity.devices()) == n + 1
        return elapsed


def crypto_only(n: int) -> float:
    """CPU seconds for the cryptography of *n* admissions into one identity."""
    host, identity = DeviceKeys.generate(), SigningKey.generate()
    guests = [DeviceKeys.generate() for _ in range(n)]
    psk = os.urandom(32)
    creds = [issue_identity_genesis(identity, name="Alice").encode(),
             issue_authorized_device(identity, identity=identity.public_key,
                                     device=host.device_public).encode()]
    host_chain = [creds[1]]
    host_verifier = CredentialVerifier()
    t0 = time.process_time()
    for guest in guests:
        # Noise XXpsk0, both sides, with the binding proofs as payloads.
        i = HandshakeState(PROTOCOL_XXPSK3, initiator=True, s=guest.static_private,
                           psks=(psk,), prologue=full_prologue(PROTOCOL_XXPSK3))
        r = HandshakeState(PROTOCOL_XXPSK3, initiator=False, s=host.static_private,
                           psks=(psk,), prologue=full_prologue(PROTOCOL_XXPSK3))
        r.read_message(i.write_message())
        guest_sees = i.read_message(r.write_message(host.binding_proof()))
        host_sees = r.read_message(i.write_message(guest.binding_proof()))
        verify_binding_proof(guest_sees, host.static_public)
        verify_binding_proof(host_sees, guest.static_public)
        hh = i.handshake_hash
        ci = cpace_channel_id(guest.static_public, host.static_public)
        a = CPace(PIN, role=CPaceRole.INITIATOR, sid=hh, ci=ci)
        b = CPace(PIN, role=CPaceRole.RESPONDER, sid=hh, ci=ci)
        msg_a = a.message()
        b.receive(msg_a)
        a.receive(b.message())
        sealed = seal_admit(a.isk, AdmitMsg(guest.device_public, name="Bob"))
        b.verify_confirmation_tag(a.confirmation_tag())
        open_admit(b.isk, sealed)
        a.verify_confirmation_tag(b.confirmation_tag())
        # Guest checks the host's chain; host issues; its log checks the credential.
        verify_device_chain(CredentialVerifier(), identity.public_key, host.device_public,
                            host_chain)
        cred = issue_authorized_device(host, identity=identity.public_key,
                                       device=guest.device_public, chain=host_chain).encode()
        host_verifier.decode_and_verify(cred)
        creds.append(cred)
        # Guest verifies the whole log it receives, with a fresh verifier.
        state = MembershipState(kind=LogKind.IDENTITY, verifier=CredentialVerifier())
        for body in entries_from_credentials(creds):
            state.add(decode_entry(body)[2])
    return time.process_time() - t0


async def run(samples: int, guests: int) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="bench-pairing-") as tmp:
        root = Path(tmp)
        lat = await measure_latency(root, samples)
        elapsed = await measure_throughput(root, guests)
    rate = guests / elapsed
    cpu = crypto_only(guests)
    limit = guests / cpu
    p50, p95 = percentile(lat, 50) * 1e3, percentile(lat, 95) * 1e3
    how = "guest accept() call -> verified SUCCESS, loopback, fsync on both sides"
    return [
        Row("PIN pairing latency p50", p50, "ms", "< 5 ms", p50 < 5.0,
            {"samples": len(lat), "how": how, "mean_ms": statistics.fmean(lat) * 1e3}),
        Row("PIN pairing latency p95", p95, "ms", "", None),
        Row(f"admissions/s, {guests} concurrent guests", rate, "1/s",
            f">= 50% of crypto limit ({0.5 * limit:,.0f}/s)", rate >= 0.5 * limit,
            {"wall_s": elapsed}),
        Row("crypto-only limit (same admissions, no I/O)", limit, "1/s", "", None,
            {"cpu_s": cpu}),
        Row("throughput / crypto limit", 100 * rate / limit, "%", ">= 50 %",
            rate >= 0.5 * limit),
    ]


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=100, help="latency samples (default 100)")
    p.add_argument("--guests", type=int, default=200, help="concurrent guests (default 200)")
    args = p.parse_args()
    rows = trio.run(run, args.samples, args.guests)
    return report("pairing", rows, args.json)


if __name__ == "__main__":
    sys.exit(main())
