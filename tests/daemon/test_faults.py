"""Faults on the wire between two real daemons, at every protocol step.

Adversarial suite, fault part (issue 18). A proxy (tests/net/faultproxy.py)
sits between two daemon processes and, at one frame of one direction, drops
the connection, delays, truncates, duplicates or corrupts a byte. Every frame
of a p2pinvite connection is one protocol step (the preamble, a Noise
handshake message, or one application message in its own Noise transport
message), so sweeping the frame index sweeps the protocol:

* **Invitation** (PROTOCOL Part 7): a guest joins with a PIN through the
  proxy. The link code the host printed is re-encoded with the proxy as its
  only address hint (mDNS is off: hints are the only path). Whatever the
  fault, the join ends in success or one clear error line (no traceback
  anywhere); no guest is half-admitted: the host lists the guest iff the
  guest holds the space, and after a retry through a clean path the guest is
  admitted exactly once (one admission in the host's log, the invitation's
  use count 1, no PIN attempt spent); both daemons keep serving.
* **Sync** (PROTOCOL Part 11): a member's only connection to the owner runs
  through the proxy (it was admitted through it: a new member's first swarm
  peer is the address it reached its host at, and the owner never dials it).
  Each side appends one entry while they are apart, then they reconnect
  through the fault. Every entry of either log verifies (a corrupted frame
  must fail the Noise AEAD and end the connection, never reach the log), no
  entry is rejected, and the logs converge.

A *transient* fault hits the first connection that reaches the step; later
ones are clean, so the daemons' own retries (the guest's resume, the swarm's
redial) must repair it. A *persistent* fault hits every connection until the
test clears it.

Sizes (tests/soak.py): in CI every fault kind at three steps of each protocol
(its first frame, the frame that matters most in its middle, and its last
frame that carries the admission or the entries' aftermath), plus a few
persistent faults; with ``P2PINVITE_SOAK=1`` every step x every fault, and
every persistent one.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from p2pinvite.halo.credentials import SpaceMember, decode_credential
from p2pinvite.halo.log import SpaceLog
from p2pinvite.halo.spaces import SPACE_LOG, SPACES_DIR
from p2pinvite.invitations.codes import LinkCode

from ..net.faultproxy import Direction, Fault, FaultPlan, ThreadedProxy, running_proxy
from ..soak import SOAK, size
from .conftest import DaemonFactory, DaemonProc, run_cli
from .test_e2e_members import eventually
from .test_e2e_pairing import failure_line, join, ok_json

pytestmark = pytest.mark.slow

UP, DOWN = Direction.UP, Direction.DOWN
#: A delay far below every timeout on the path (the 5 s wait for the guest's
#: request is the shortest): a slow network must cost time, nothing else.
DELAY = 1.0
#: A transient fault is repaired by the guest's own redial or resume within this.
TRANSIENT_JOIN = 15.0
#: Longest a join may take whatever the fault: the 30 s connect timeout (a
#: persistent fault in the handshake leaves the guest no host) plus slack. A
#: join still running then is a hang, and the test says so.
JOIN_BOUND = 50.0
#: How long a persistent sync fault is left in place before it is cleared.
PERSIST_FOR = size(2, 5)


@dataclass(frozen=True)
class Step:
    """One protocol step: the *frame*-th frame *direction* carries on the connection."""

    direction: Direction
    frame: int
    name: str

    @property
    def id(self) -> str:
        return f"{self.direction.value}{self.frame}-{self.name}"


def _steps(*rows: tuple[Direction, int, str]) -> tuple[Step, ...]:
    return tuple(Step(*row) for row in rows)


#: A PIN join, frame by frame, in protocol order (UP: the guest, who dials).
#: test_the_step_tables_match_a_clean_run checks it against the wire.
INVITATION_STEPS = _steps(
    (UP, 0, "preamble"), (UP, 1, "noise1"), (DOWN, 0, "noise2"), (UP, 2, "noise3"),
    (DOWN, 1, "accept"), (UP, 3, "request"), (DOWN, 2, "challenge"), (UP, 4, "pake"),
    (DOWN, 3, "pake"), (UP, 5, "confirm"), (UP, 6, "admit_sealed"), (DOWN, 4, "confirm"),
    (DOWN, 5, "admitted"), (DOWN, 6, "end"), (UP, 7, "end"),
)
#: A member connection where each side holds one entry the other lacks (UP:
#: the member, who dials; the owner never dials it).
SYNC_STEPS = _steps(
    (UP, 0, "preamble"), (UP, 1, "noise1"), (DOWN, 0, "noise2"), (UP, 2, "noise3"),
    (DOWN, 1, "accept"), (UP, 3, "hello"), (DOWN, 2, "hello"), (UP, 4, "heads"),
    (DOWN, 3, "heads"), (UP, 5, "entries"), (DOWN, 4, "entries"), (UP, 6, "heads"),
    (DOWN, 5, "heads"),
)
# CI: the first frame (the preamble: the handshake never starts), the guest's
# PIN proof (a corrupted tag must fail the AEAD, never count as a wrong PIN),
# and the host's answer after its log append (the resume path).
_CI_INVITATION = {(UP, 0), (UP, 5), (DOWN, 5)}
# CI: the first frame, the owner's entries (a corrupted batch must never be
# written), and the member's last heads (the end of the exchange).
_CI_SYNC = {(UP, 0), (DOWN, 4), (UP, 6)}


def _cases(steps: tuple[Step, ...], ci: set[tuple[Direction, int]]) -> list[Any]:
    return [pytest.param(step, fault, id=f"{fault.value}-{step.id}")
            for step in steps if SOAK or (step.direction, step.frame) in ci
            for fault in Fault]


def _persistent_cases(steps: tuple[Step, ...], ci: list[tuple[Fault, Direction, int]]
                      ) -> list[Any]:
    # A persistent delay is as harmless as a transient one: left out.
    chosen = [(f, s) for s in steps for f in Fault if f is not Fault.DELAY
              and (SOAK or (f, s.direction, s.frame) in ci)]
    return [pytest.param(step, fault, id=f"{fault.value}-{step.id}") for fault, step in chosen]


# -- helpers ------------------------------------------------------------------------------


def via(code: str, address: tuple[str, int]) -> str:
    """*code* with *address* as its only hint, re-encoded by the library."""
    return dataclasses.replace(LinkCode.parse(code), hints=(address,)).encode()


def address_of(d: DaemonProc) -> tuple[str, int]:
    [[host, port]] = ok_json(d, "status")["addresses"]
    return host, port


def no_traceback(*ds: DaemonProc) -> None:
    for d in ds:
        assert d.proc.poll() is None, f"{d.home} exited:\n{d.stderr()[-3000:]}"
        assert ok_json(d, "status")["pid"] == d.proc.pid
        assert "Traceback" not in d.stderr(), d.stderr()[-5000:]


def copy_log(d: DaemonProc, space: str) -> list[bytes]:
    """Every entry of *space*'s log in *d*'s home, each verified again by the library.

    The daemon holds the log's lock, so a copy of the file is opened: without
    its checkpoint, opening verifies every record (structure, signature,
    parents, rules); a record being appended while the copy is made is a torn
    tail, which opening drops.
    """
    with tempfile.TemporaryDirectory(prefix="p2p-log-") as tmp:
        dest = Path(tmp) / SPACE_LOG
        shutil.copy(d.home / SPACES_DIR / space / SPACE_LOG, dest)
        log = SpaceLog.open(dest, full_verify=True)
        try:
            assert log.report.verified == log.report.entries
            return log.raw_entries()
        finally:
            log.close()


def admissions_by(entries: list[bytes], invitation: str) -> list[bytes]:
    """Subjects of the ``space_member`` entries issued through *invitation* (doubles kept)."""
    out = []
    for raw in entries:
        cred = decode_credential(raw)
        if (isinstance(cred.assertion, SpaceMember)
                and cred.assertion.invitation == bytes.fromhex(invitation)):
            out.append(cred.subject)
    return out


def member_ids(d: DaemonProc, space: str) -> list[str]:
    return [m["identity_key"] for m in ok_json(d, "space", "members", space)]


def holds_space(d: DaemonProc, space: str) -> bool:
    return space in [s["space_id"] for s in ok_json(d, "space", "list")]


def record_of(host: DaemonProc, invitation: str) -> dict[str, Any]:
    [record] = [r for r in ok_json(host, "invite", "list", "--all") if r["id"] == invitation]
    assert isinstance(record, dict)
    return record


def pin_join(guest: DaemonProc, code: str, pin: str) -> subprocess.CompletedProcess[str]:
    """``join`` with the code and PIN on standard input, bounded by :data:`JOIN_BOUND`."""
    try:
        return run_cli(guest.home, "join", "-", "--pin", "-", "--json",
                       input=f"{code}\n{pin}\n", timeout=JOIN_BOUND)
    except subprocess.TimeoutExpired:
        pytest.fail(f"join still running after {JOIN_BOUND:g} s: a hang\n"
                    f"{guest.stderr()[-3000:]}")


@pytest.fixture(scope="module")
def fleet() -> Iterator[DaemonFactory]:
    """Daemons shared by the cases of this module (one host serves the whole sweep)."""
    factory = DaemonFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


# -- invitation ----------------------------------------------------------------------------


@dataclass
class InviteBed:
    """A host with a space, and a proxy in front of it."""

    fleet: DaemonFactory
    host: DaemonProc
    space: str
    proxy: ThreadedProxy


@pytest.fixture(scope="module")
def invite_bed(fleet: DaemonFactory) -> Iterator[InviteBed]:
    host = fleet.start()
    ok_json(host, "identity", "create", "--name", "Host")
    space = ok_json(host, "space", "create", "Faults")["space_id"]
    with running_proxy(address_of(host)) as proxy:
        yield InviteBed(fleet, host, space, proxy)


def invitation_case(bed: InviteBed, plan: FaultPlan) -> None:
    """One PIN join by a fresh guest through *plan*; every invariant checked after it."""
    host, proxy, space = bed.host, bed.proxy, bed.space
    guest = bed.fleet.start()
    me = ok_json(guest, "identity", "create", "--name", "Guest")["identity_key"]
    inv = ok_json(host, "invite", "create", "--space", space, "--role", "editor")
    proxy.set_plan(plan)
    started = time.monotonic()
    r = pin_join(guest, via(inv["code"], proxy.address), inv["pin"])
    took = time.monotonic() - started
    fired = proxy.fired()
    proxy.set_plan(None)
    what = f"{plan}: exit {r.returncode} after {took:.1f} s\n{r.stderr}"
    assert fired >= 1, f"{what}\nthe step was never reached: {proxy.connections()[-2:]}"

    # Success, or exactly one clear line saying why not; never a traceback.
    assert "Traceback" not in r.stderr, what
    admitted = r.returncode == 0
    if admitted:
        assert json.loads(r.stderr.splitlines()[-1])["state"] == "admitted", what
        assert json.loads(r.stdout)["space_id"] == space, what
    else:
        failure_line(r, json_mode=True)
    if plan.connections == 1:
        # One broken connection is what the guest's redial and resume are for.
        assert admitted, what
        assert took < TRANSIENT_JOIN, what

    # No half-admitted guest: the guest holds the space iff its join said so,
    # and then the host lists it. (A join that failed after the host's append
    # leaves an admission the guest never received: the resume state of
    # PROTOCOL Part 7 §5, which the retry below must close, not duplicate.)
    assert holds_space(guest, space) == admitted, what
    if admitted:
        assert me in member_ids(host, space), what
    else:
        retry = join(guest, inv["code"], "--json", pin=inv["pin"])  # direct: a clean path
        assert retry.returncode == 0, f"{what}\nretry: {retry.stderr}"

    # Admitted exactly once, by one use of the invitation, and no PIN attempt spent:
    # a corrupted proof fails the channel's AEAD, it is never a wrong PIN.
    assert holds_space(guest, space)
    assert member_ids(host, space).count(me) == 1
    entries = copy_log(host, space)
    assert admissions_by(entries, inv["id"]) == [bytes.fromhex(me)], what
    record = record_of(host, inv["id"])
    assert (record["uses"], record["accepted_by"], record["failed_attempts"]) == (
        1, [me], 0), f"{what}\n{record}"
    assert me in member_ids(guest, space)
    no_traceback(host, guest)
    assert guest.stop() == 0, guest.stderr()[-3000:]


def test_the_step_tables_match_a_clean_run(invite_bed: InviteBed) -> None:
    """A clean join through the proxy has exactly the frames INVITATION_STEPS names."""
    proxy = invite_bed.proxy
    seen = len(proxy.connections())
    guest = invite_bed.fleet.start()
    ok_json(guest, "identity", "create", "--name", "Clean")
    inv = ok_json(invite_bed.host, "invite", "create", "--space", invite_bed.space)
    r = pin_join(guest, via(inv["code"], proxy.address), inv["pin"])
    assert r.returncode == 0, r.stderr
    join_conn = proxy.connections()[seen]
    frames = {d: len(join_conn.frames[d]) for d in Direction}
    expected = {d: sum(s.direction is d for s in INVITATION_STEPS) for d in Direction}
    assert frames == expected, join_conn
    # The invariants' checks pass on a clean run too (the harness itself is sound).
    assert guest.stop() == 0


@pytest.mark.parametrize(("step", "fault"), _cases(INVITATION_STEPS, _CI_INVITATION))
def test_a_transient_fault_during_a_pin_join(invite_bed: InviteBed, step: Step,
                                             fault: Fault) -> None:
    """One fault on the join's first connection at *step*: the guest's own redial or
    resume admits it, exactly once, without spending a PIN attempt."""
    invitation_case(invite_bed, FaultPlan(fault, step.direction, frame=step.frame, delay=DELAY))


@pytest.mark.parametrize(("step", "fault"), _persistent_cases(INVITATION_STEPS, [
    (Fault.DROP, DOWN, 5),  # every admitted lost: the host admitted, the guest gave up
    (Fault.CORRUPT, UP, 5),  # every PIN proof corrupted: no attempt may be counted
]))
def test_a_persistent_fault_during_a_pin_join(invite_bed: InviteBed, step: Step,
                                              fault: Fault) -> None:
    """The fault hits every connection at *step*: the join succeeds or fails with one clear
    line; a retry through a clean path then admits the guest (resuming an admission the
    host already made), exactly once."""
    invitation_case(invite_bed, FaultPlan(fault, step.direction, frame=step.frame,
                                          delay=DELAY, connections=None))


#: Repeats of the race below: each run loses it about one time in four without the fix.
RACE_RUNS = size(10, 40)


@pytest.mark.parametrize("run", range(RACE_RUNS))
def test_a_guest_resuming_during_its_own_admission_is_admitted(invite_bed: InviteBed,
                                                               run: int) -> None:
    """Regression (found by the sweep): the guest's admission frame arrives twice in one
    read. The host takes the first, fails the stream on the replay (BadTag) at once and
    appends the admission meanwhile; the guest resumes within milliseconds, while that
    append is still in its fsync or its use not yet counted. The host must wait for the
    admission in flight and resume it: not refuse the guest as ``already_member``, nor
    with the uniform refusal for a use that is reserved or was just taken."""
    invitation_case(invite_bed, FaultPlan(Fault.DUPLICATE, UP, frame=6))


def test_the_host_still_serves_after_the_sweep(invite_bed: InviteBed) -> None:
    """After every fault, a fresh guest joins cleanly, directly and through the proxy."""
    host, space = invite_bed.host, invite_bed.space
    for through_proxy in (False, True):
        guest = invite_bed.fleet.start()
        me = ok_json(guest, "identity", "create", "--name", "Fresh")["identity_key"]
        inv = ok_json(host, "invite", "create", "--space", space)
        code = via(inv["code"], invite_bed.proxy.address) if through_proxy else inv["code"]
        r = pin_join(guest, code, inv["pin"])
        assert r.returncode == 0, r.stderr
        assert me in member_ids(host, space)
        no_traceback(host, guest)
        assert guest.stop() == 0
    assert "Traceback" not in host.stderr()


# -- sync ----------------------------------------------------------------------------------


@dataclass
class SyncBed:
    """An owner A and an admin B whose only member connection runs through the proxy.

    C and D are readers admitted by A (their daemons are stopped): A changes
    D's role and B changes C's, so each appends an entry without the other,
    and the two never conflict (no entry is rejected by the rules).
    """

    a: DaemonProc
    b: DaemonProc
    space: str
    c: str
    d: str
    proxy: ThreadedProxy
    #: When the member connection was last seen carrying a whole exchange.
    up_since: float = 0.0


def toggle_role(d: DaemonProc, space: str, member: str) -> None:
    """Append one role change (reader <-> editor) of *member*, as *d* sees it now."""
    [role] = [m["role"] for m in ok_json(d, "space", "members", space)
              if m["identity_key"] == member]
    ok_json(d, "space", "role", space, member, "editor" if role == "reader" else "reader")


@pytest.fixture(scope="module")
def sync_bed(fleet: DaemonFactory) -> Iterator[SyncBed]:
    a = fleet.start()
    ok_json(a, "identity", "create", "--name", "Owner")
    space = ok_json(a, "space", "create", "Synced")["space_id"]
    readers = []
    for name in ("Carol", "Dave"):
        r_ = fleet.start()
        readers.append(ok_json(r_, "identity", "create", "--name", name)["identity_key"])
        inv = ok_json(a, "invite", "create", "--space", space, "--role", "reader")
        assert join(r_, inv["code"], "--json", pin=inv["pin"]).returncode == 0
        assert r_.stop() == 0
    b = fleet.start()
    ok_json(b, "identity", "create", "--name", "Bob")
    with running_proxy(address_of(a)) as proxy:
        inv = ok_json(a, "invite", "create", "--space", space, "--role", "admin")
        r = pin_join(b, via(inv["code"], proxy.address), inv["pin"])
        assert r.returncode == 0, r.stderr
        bed = SyncBed(a, b, space, readers[0], readers[1], proxy)
        eventually(lambda: len(ok_json(a, "space", "peers", space)), lambda n: n == 1,
                   what="the member connection through the proxy")
        # One clean round: the harness works and the wire has SYNC_STEPS' frames.
        seen = len(proxy.connections())
        sync_round(bed, None)
        [conn] = proxy.connections()[seen:]
        frames = {d: len(conn.frames[d]) for d in Direction}
        assert frames == {d: sum(s.direction is d for s in SYNC_STEPS) for d in Direction}, conn
        yield bed


def both_logs(bed: SyncBed) -> tuple[set[bytes], set[bytes]]:
    """Both logs, as the library reads them from copies (every entry verified)."""
    return set(copy_log(bed.a, bed.space)), set(copy_log(bed.b, bed.space))


def sync_round(bed: SyncBed, plan: FaultPlan | None, *, persist_for: float = 0.0) -> None:
    """Part the two, let each append one entry, reconnect them through *plan*, check.

    The proxy holds the member's next connection (it redials at once) while
    both append, so the whole exchange of the new entries, handshake first,
    runs through the fault. *persist_for*: leave the plan in place that long
    after the reconnection before clearing it.
    """
    a, b, space, proxy = bed.a, bed.b, bed.space, bed.proxy
    # The member redials a connection that ended at once: one that lasted under
    # 1 s counts as a failed dial and makes its next redial back off longer
    # (PROTOCOL Part 4, "Dialing"), which would slow every later round down.
    time.sleep(max(0.0, bed.up_since + 1.1 - time.monotonic()))
    proxy.hold()
    proxy.cut()
    before = set(copy_log(a, space)) | set(copy_log(b, space))
    toggle_role(a, space, bed.d)
    toggle_role(b, space, bed.c)
    new_a, new_b = set(copy_log(a, space)) - before, set(copy_log(b, space)) - before
    assert len(new_a) == len(new_b) == 1, "each side appended alone"
    want = before | new_a | new_b
    proxy.set_plan(plan)
    proxy.release()
    if plan is not None:
        eventually(proxy.fired, lambda n: n >= 1, what=f"{plan} reached")
    if persist_for:
        time.sleep(persist_for)
        copy_log(a, space)  # whatever got through verifies
        copy_log(b, space)
        no_traceback(a, b)
    proxy.set_plan(None)
    eventually(lambda: both_logs(bed), lambda logs: logs[0] == logs[1] == want,
               what=f"the logs converge ({plan}): {proxy.connections()[-3:]}")
    bed.up_since = time.monotonic()
    for d in (a, b):
        assert ok_json(d, "space", "members", space, "--all")["rejected"] == [], plan
    no_traceback(a, b)


@pytest.mark.parametrize(("step", "fault"), _cases(SYNC_STEPS, _CI_SYNC))
def test_a_transient_fault_during_sync(sync_bed: SyncBed, step: Step, fault: Fault) -> None:
    """One fault on the member connection at *step*: nothing unverified is written,
    nothing is rejected, and the redialed connection brings both logs together."""
    sync_round(sync_bed, FaultPlan(fault, step.direction, frame=step.frame, delay=DELAY))


@pytest.mark.parametrize(("step", "fault"), _persistent_cases(SYNC_STEPS, [
    (Fault.CORRUPT, DOWN, 4),  # every batch of the owner's entries corrupted
]))
def test_a_persistent_fault_during_sync(sync_bed: SyncBed, step: Step, fault: Fault) -> None:
    """The fault hits every reconnection for a while: both daemons keep serving and
    keep only verified entries; once it is cleared the logs converge."""
    sync_round(sync_bed, FaultPlan(fault, step.direction, frame=step.frame, delay=DELAY,
                                   connections=None), persist_for=PERSIST_FOR)
