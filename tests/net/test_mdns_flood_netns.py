"""mDNS flooding: thousands of fake ``_p2pinvite._tcp`` instances on the LAN.

Adversarial suite, load (issue 18). Two namespaces joined by veth, a host
daemon in one, a guest daemon in the other, each with mDNS on its veth. A
flooder (tests/net/mdns_flooder.py, python-zeroconf in the guest's namespace)
publishes FAKES service instances in the project's format: random discovery
keys, random discriminators and, for 1 in 50, the very discriminator of the
host's short code, pointing at ports where nothing listens (decoys). Then:

* a short-code join, which finds the host by mDNS only, still succeeds
  within the CLI's normal timeouts, and the members agree;
* the admitted member connects to the host over the member swarm (found by
  mDNS among the fakes as well);
* both daemons' RSS stays within ``baseline + FAKES * PER_FAKE + SLACK``.
  Why that bound: zeroconf caches each instance's PTR/SRV/TXT/A records for
  their TTL (that is its job and unavoidable), and the daemon's own state
  does not depend on the fakes (browse results go through a bounded channel,
  discovery.py; only instances whose TXT matches a browsed topic are
  resolved and reported). ``PER_FAKE`` = 16 KiB is several times what one
  instance's records and one resolve task cost; a leak per record or per
  resolution attempt (or an unbounded queue of events) goes well over it.

Never multicasts outside the namespaces. Root only; skipped with the reason
otherwise. Sizes: tests/soak.py.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from ..daemon.conftest import DaemonProc
from ..daemon.test_e2e_members import eventually
from ..daemon.test_e2e_netns import NsDaemons, members, ok_json
from ..daemon.test_e2e_pairing import join
from ..daemon.test_load import settled_rss, vm_rss
from ..soak import size
from .netns import ROOT, Namespace, skip_reason, veth_namespaces

pytestmark = [
    pytest.mark.slow,
    pytest.mark.netns,
    pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or ""),
]

#: Before browsers resolved only their topic's tagged names, a few at a time, 7000
#: fakes made the guest's browser (which then resolved every instance it saw)
#: miss the real host within the CLI's 30 s: thousands of queries in flight
#: starved the real answer.
FAKES = size(1000, 10_000)
PER_FAKE = 16 * 1024
SLACK = 32 * 1024 * 1024
FLOODER = ROOT / "tests" / "net" / "mdns_flooder.py"


@pytest.fixture
def lan() -> Iterator[tuple[Namespace, Namespace, NsDaemons]]:
    with veth_namespaces() as (a, b):
        starter = NsDaemons()
        try:
            yield a, b, starter
        finally:
            starter.cleanup()


class Peak:
    """The highest RSS of some processes, sampled every 0.1 s in a thread."""

    def __init__(self, *ds: DaemonProc) -> None:
        self.ds = ds
        self.peak = {d.proc.pid: 0 for d in ds}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            for d in self.ds:
                with contextlib.suppress(OSError):
                    self.peak[d.proc.pid] = max(self.peak[d.proc.pid], vm_rss(d.proc.pid))

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def test_discovery_and_joins_survive_thousands_of_fake_instances(
        lan: tuple[Namespace, Namespace, NsDaemons]) -> None:
    """A short-code join and a member connection over mDNS work; RSS stays bounded."""
    a, b, start = lan
    host = start.start(a, start.home("alice"))
    guest = start.start(b, start.home("bob"))
    alice = ok_json(host, "identity", "create", "--name", "Alice")
    bob = ok_json(guest, "identity", "create", "--name", "Bob")
    space = ok_json(host, "space", "create", "Garden")["space_id"]
    inv = ok_json(host, "invite", "create", "--space", space, "--role", "editor",
                  "--auth", "short")
    disc = inv["code"].split("-")[0]
    baseline = {d.proc.pid: settled_rss(d.proc.pid) for d in (host, guest)}

    flooder = subprocess.Popen(b.argv(sys.executable, str(FLOODER), b.addr, str(FAKES), disc),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               cwd=ROOT)
    peak = Peak(host, guest)
    try:
        assert flooder.stdout is not None
        line = flooder.stdout.readline()
        assert line.startswith(f"ready {FAKES} "), line
        began = time.monotonic()
        r = join(guest, inv["code"], "--json")  # mDNS is the only way to the host
        joined_in = time.monotonic() - began
        assert r.returncode == 0, f"{r.stderr}\n{host.stderr()[-3000:]}\n{guest.stderr()[-3000:]}"
        expected = sorted([(alice["identity_key"], "Alice", "owner"),
                           (bob["identity_key"], "Bob", "editor")])
        assert members(host, space) == members(guest, space) == expected
        # The new member and the host find each other on the member swarm.
        eventually(lambda: ok_json(host, "space", "peers", space), lambda p: len(p) == 1,
                   within=30, what="the member connected to the host")
        for d in (host, guest):
            assert d.proc.poll() is None
    finally:
        peak.close()
        if flooder.stdin is not None:
            flooder.stdin.close()
        try:
            flooder.wait(timeout=10)
        except subprocess.TimeoutExpired:
            flooder.kill()
            flooder.wait()
    bound = FAKES * PER_FAKE + SLACK
    for d, name in ((host, "host"), (guest, "guest")):
        grew = peak.peak[d.proc.pid] - baseline[d.proc.pid]
        assert grew < bound, f"the {name}'s RSS grew by {grew >> 20} MiB with {FAKES} fakes"
        assert "Traceback" not in d.stderr()
    grown = [(peak.peak[d.proc.pid] - baseline[d.proc.pid]) >> 20 for d in (host, guest)]
    print(f"\nmdns flood: {FAKES} fakes ({line.split()[2]}s to publish); joined in "
          f"{joined_in:.1f}s; RSS growth host {grown[0]} MiB, guest {grown[1]} MiB "
          f"(bound {bound >> 20} MiB)")
