"""mDNS discovery latency between two network namespaces joined by veth (needs root).

Two measures, each over --runs runs (default 15; 3 with --quick), reported as
medians with min and max. Neither has a target: both are bounded by protocol
delays (RFC 6762), not by computation, and the bound is shown beside each.

* browse -> found: a host is already advertising; a fresh browser (new
  zeroconf instance, empty cache) starts, and we time until it reports the
  host. Dominated by RFC 6762's 20-120 ms random delay before a querier's
  first question; the first question asks for a unicast reply (QU), which
  zeroconf answers without the multicast aggregation delay.
* join -> found: a browser is running in the other namespace; the host joins
  the topic (registers the service) and we time until the browser reports
  it. We register with ``cooperating_responders=True``, which skips the
  probing phase (a 150-250 ms random wait plus three probes 250 ms apart,
  ~1 s in all): our instance names carry 48 random bits per daemon run, so a
  conflict is not a practical concern, and a conflict would only confuse
  discovery, never authentication (the Noise handshake decides who a peer
  is). The first announcement then goes out immediately.

Times come from time.monotonic() in the peer processes (CLOCK_MONOTONIC is
host-wide).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trio

from bench._report import Row, parser, percentile, report, skipped
from tests.net.netns import NsProcess, skip_reason, veth_namespaces


async def measure(runs: int) -> tuple[list[float], list[float]]:
    with veth_namespaces() as (a, b):
        host = await NsProcess.start(a)
        guest = await NsProcess.start(b)
        try:
            with trio.fail_after(60 + runs * 10):
                await host.send({"cmd": "start", "listen": [a.addr, 0], "mdns": [a.iface]})
                await host.expect("ready")

                # 1. browse -> found, host already advertising.
                spec = {"secret": os.urandom(32).hex()}
                await host.send({"cmd": "join", "topic": spec})
                await host.expect("joined")
                browse: list[float] = []
                for _ in range(runs):
                    await guest.send({"cmd": "browse", "topic": spec, "mdns": [b.iface],
                                      "first": True, "seconds": 5})
                    found = await guest.expect("found")
                    done = await guest.expect("browse_done")
                    browse.append(found["t"] - done["t0"])
                await host.send({"cmd": "leave", "topic": spec})
                await host.expect("left")

                # 2. join -> found, browser already running.
                join: list[float] = []
                for _ in range(runs):
                    spec = {"secret": os.urandom(32).hex()}
                    await guest.send({"cmd": "browse", "topic": spec, "mdns": [b.iface],
                                      "first": True, "seconds": 5})
                    await trio.sleep(0.5)  # past the browser's startup queries
                    await host.send({"cmd": "join", "topic": spec})
                    joined = await host.expect("joined")
                    found = await guest.expect("found")
                    await guest.expect("browse_done")
                    join.append(found["t"] - joined["t0"])
                    await host.send({"cmd": "leave", "topic": spec})
                    await host.expect("left")
        finally:
            with trio.CancelScope(shield=True):
                await host.aclose()
                await guest.aclose()
    return browse, join


def main() -> int:
    p = parser("mDNS discovery latency between two network namespaces (root)")
    p.add_argument("--runs", type=int, help="runs per measure (default 15, 3 with --quick)")
    args = p.parse_args()
    reason = skip_reason()
    if reason is not None:
        return skipped("discovery", reason, args.json)
    browse, join = trio.run(measure, args.runs or (3 if args.quick else 15))
    rows = [
        Row.of("browse -> found", browse, "ms", scale=1e3, extra={"p95_ms": percentile(
            [s * 1e3 for s in browse], 95)},
               floor="RFC 6762 5.2: a querier waits 20-120 ms before its first question"),
        Row.of("join -> found", join, "ms", scale=1e3, extra={"p95_ms": percentile(
            [s * 1e3 for s in join], 95)},
               floor="the first announcement, sent at once (probing skipped, see above)"),
    ]
    return report("discovery", rows, args.json, quick=args.quick)


if __name__ == "__main__":
    raise SystemExit(main())
