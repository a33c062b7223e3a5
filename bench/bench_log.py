"""Space log benchmark: durable appends (1 and 32 writers), reopen, full verification.

Uses real HALO credentials: a space whose owner device admits READER members
on a linear history (``tests/halo/strategies.build_space_log``). Every append
verifies its strict Ed25519 signature, checks the rules and is fsynced
before it returns. Targets are ratios within this run, never absolute:

* group commit (32 concurrent appenders) reaches >= 60 % of the verify-bound
  ceiling, 1 / (time of one strict Ed25519 verify, measured here);
* reopening the big log with its checkpoint costs <= 2x reading and hashing
  the file (BLAKE2b over all of it, measured here).

Work happens in a temporary directory on the same file system as /tmp.

Appends run 3 times (each into a new log, the same credentials), so each
rate is a median of 3 with its min and max.

    ./scripts/bench log [--json FILE] [--quick] [--entries N] [--appends N]
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.halo.strategies

from _report import Row, parser, report

from p2pinvite.crypto.ed25519 import verify as strict_verify
from p2pinvite.halo.credentials import Credential, decode_credential
from p2pinvite.halo.log import SpaceLog, file_header, frame_record
from tests.halo.strategies import build_space_credentials


def write_log_file(path: Path, creds: list[bytes]) -> None:
    """Write a log file directly (no verification): the input of the reopen runs."""
    data = [file_header()]
    data += [frame_record(decode_credential(c).id + c) for c in creds]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(b"".join(data))


def read_and_hash(path: Path) -> float:
    """Seconds to read *path* and BLAKE2b all of it: the floor of any reopen."""
    t = time.perf_counter()
    with path.open("rb") as f:
        h = hashlib.blake2b(digest_size=32)
        while chunk := f.read(8 << 20):
            h.update(chunk)
    h.digest()
    return time.perf_counter() - t


def as_issued(cred: Credential) -> Credential:
    """*cred* as an ``issue_*`` function returns it: payload computed (it was just
    signed), id and encoding not yet -- what the daemon hands to ``append``."""
    fresh = dataclasses.replace(cred)
    object.__setattr__(fresh, "_payload", cred.payload)
    return fresh


async def append_rate(path: Path, base: list[bytes], creds: list[Credential], writers: int
                      ) -> tuple[float, int]:
    """Appends/s for *creds* (a linear chain on *base*) from *writers* tasks; commits."""
    log = SpaceLog.create(path, base)
    it = iter(creds)

    async def writer() -> None:
        # Tasks share the iterator: each credential is appended once, in chain
        # order (taking the next one and admitting it involves no await).
        for cred in it:
            await log.append(cred)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(writers):
            nursery.start_soon(writer)
    elapsed = time.perf_counter() - t0
    assert log.count == len(base) + len(creds)
    commits = log.commit_count
    log.close()
    return len(creds) / elapsed, commits


def strict_verify_times(creds: list[bytes], n: int = 2000) -> list[float]:
    """Seconds per strict Ed25519 verification, in each of 3 rounds of *n*."""
    work = []
    for c in creds[:n]:
        d = decode_credential(c)
        work.append((d.signer, d.signature, d.payload))
    rounds = []
    for _ in range(3):
        t = time.perf_counter()
        for signer, sig, payload in work:
            strict_verify(signer, sig, payload)
        rounds.append((time.perf_counter() - t) / len(work))
    return rounds


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, help="entries in the reopened log (100,000)")
    p.add_argument("--appends", type=int, help="appends per 32-writer run (2,000)")
    args = p.parse_args()
    entries = args.entries or (5_000 if args.quick else 100_000)
    appends = args.appends or (300 if args.quick else 2_000)
    one_writer = 100 if args.quick else 500

    t = time.perf_counter()
    objects = build_space_credentials(max(entries, appends + 2) - 2)
    creds = [c.encode() for c in objects]
    print(f"built {len(creds):,} credentials in {time.perf_counter() - t:.1f} s", flush=True)
    base, admissions = creds[:2], creds[2:]
    rows: list[Row] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-log-"))
    try:
        verifies = strict_verify_times(admissions)
        ceiling = 1 / statistics.median(verifies)
        rows.append(Row.of("strict Ed25519 verify", verifies, "us", scale=1e6))
        rows.append(Row("  -> verify-bound append ceiling", ceiling, "appends/s"))

        def runs(n: int, writers: int) -> tuple[list[float], list[int]]:
            rates, commits = [], []
            for i in range(3):  # fresh copies: a run caches the credentials' ids
                issued = [as_issued(c) for c in objects[2 : 2 + n]]
                rate, commit = trio.run(append_rate, tmp / f"w{writers}-{i}.log", base,
                                        issued, writers)
                rates.append(rate)
                commits.append(commit)
            return rates, commits

        rates1, commits1 = runs(min(one_writer, appends), 1)
        rows.append(Row.of("append, 1 writer (verify + rules + fsync)", rates1, "appends/s",
                           extra={"appends": min(one_writer, appends), "commits": commits1},
                           floor="one fsync per append"))
        rates32, commits32 = runs(appends, 32)
        rows.append(Row.of("append, 32 writers (group commit)", rates32, "appends/s",
                           extra={"appends": appends, "commits": commits32,
                                  "mean_batch": [appends / c for c in commits32]},
                           floor="the strict Ed25519 verify of each entry"))
        rate32 = statistics.median(rates32)
        rows.append(Row("  -> group commit / ceiling", rate32 / ceiling, "ratio", ">= 0.60",
                        rate32 / ceiling >= 0.6))
        print(f"32 writers: {appends} appends in {commits32} commits", flush=True)

        big = tmp / "big.log"
        log_creds = creds[:entries]
        write_log_file(big, log_creds)
        size = big.stat().st_size
        t = time.perf_counter()
        log = SpaceLog.open(big)  # no checkpoint yet: every record verified
        full = time.perf_counter() - t
        assert log.report.verified == len(log_creds), log.report
        log.close()  # writes the checkpoint
        rows.append(Row(f"open {len(log_creds):,} entries, no checkpoint (verify all)", full,
                        "s", extra={"per_entry_us": full / len(log_creds) * 1e6,
                                    "vs_strict_verify": full / len(log_creds) * ceiling}))
        times, floors = [], []
        for _ in range(3):
            floors.append(read_and_hash(big))
            t = time.perf_counter()
            log = SpaceLog.open(big)
            times.append(time.perf_counter() - t)
            assert log.report.from_checkpoint == len(log_creds), log.report
            log.close()
            del log  # freed here, not inside the next timed open
        reopen, floor = statistics.median(times), statistics.median(floors)
        rows.append(Row.of(f"read + BLAKE2b the file ({size / 2**20:.1f} MiB)", floors, "s"))
        rows.append(Row.of(f"reopen {len(log_creds):,} entries (checkpoint)", times, "s",
                           floor="reading and hashing the file"))
        rows.append(Row("  -> reopen / (read + hash)", reopen / floor, "ratio", "<= 2.0",
                        reopen / floor <= 2.0))

        # What the first merge after a reopen costs: facts read from the file,
        # then a full recompute (informational).
        log = SpaceLog.open(big)
        t = time.perf_counter()
        log.resolver.dag.load_facts()
        load = time.perf_counter() - t
        log.resolver._dirty = True  # force the full recompute a merge triggers
        t = time.perf_counter()
        log.resolver.settle()
        recompute = time.perf_counter() - t
        t = time.perf_counter()
        lacking = log.ids_not_below([log.resolver.dag.ids[len(log_creds) - 101]])
        not_below = time.perf_counter() - t
        assert len(lacking) == 100
        log.close()
        rows.append(Row(f"  load every fact from the file ({len(log_creds):,})", load, "s"))
        rows.append(Row(f"  recompute the order and state ({len(log_creds):,})", recompute,
                        "s"))
        rows.append(Row("  ids_not_below, peer 100 behind", not_below * 1e3, "ms"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report("log", rows, args.json, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
