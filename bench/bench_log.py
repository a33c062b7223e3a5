"""Space log benchmark: durable appends (1 and 32 writers), reopen, full verification.

Uses real HALO credentials: a space whose owner device admits READER members
(``tests/halo/strategies.build_space_log``), checked by ``MembershipState``.
Every append verifies its Ed25519 signature and is fsynced before it returns.
Work happens in a temporary directory on the same file system as /tmp.

    ./scripts/bench log [--json FILE] [--entries N] [--appends N]
"""

from __future__ import annotations

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

from p2pinvite.halo.credentials import decode_credential
from p2pinvite.halo.log import (
    LOG_MAGIC,
    SpaceLog,
    entries_from_credentials,
    frame_record,
)
from p2pinvite.halo.state import MembershipState
from tests.halo.strategies import build_space_log


def write_log_file(path: Path, creds: list[bytes]) -> None:
    """Write a log file directly (no verification): the input of the reopen runs."""
    header = LOG_MAGIC + (1).to_bytes(2, "big") + b"\0\0"
    import zlib

    data = [header + zlib.crc32(header).to_bytes(4, "big")]
    data += [frame_record(b) for b in entries_from_credentials(creds)]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(b"".join(data))


async def append_rate(path: Path, base: list[bytes], creds: list[bytes], writers: int
                      ) -> tuple[float, int]:
    """Appends/s for *creds* from *writers* concurrent tasks; also the commit count."""
    state = MembershipState()
    log = SpaceLog.import_entries(path, entries_from_credentials(base), state)
    it = iter(creds)

    async def writer() -> None:
        for cred in it:  # tasks share the iterator: each credential appended once
            await log.append(cred)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(writers):
            nursery.start_soon(writer)
    elapsed = time.perf_counter() - t0
    assert log.length == len(base) + len(creds)
    commits = log.commit_count
    log.close()
    return len(creds) / elapsed, commits


def main() -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=100_000, help="entries in the reopened log")
    p.add_argument("--appends", type=int, default=6_000, help="appends in the 32-writer run")
    args = p.parse_args()

    t = time.perf_counter()
    creds = build_space_log(max(args.entries, args.appends + 2) - 2)
    print(f"built {len(creds):,} credentials in {time.perf_counter() - t:.1f} s", flush=True)
    base, admissions = creds[:2], creds[2:]
    rows: list[Row] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-log-"))
    try:
        n1 = min(1_500, len(admissions))
        rate1, commits1 = trio.run(append_rate, tmp / "one.log", base, admissions[:n1], 1)
        rows.append(Row("append, 1 writer (verify + fsync)", rate1, "appends/s",
                        extra={"appends": n1, "commits": commits1}))
        n32 = min(args.appends, len(admissions))
        rate32, commits32 = trio.run(append_rate, tmp / "many.log", base, admissions[:n32], 32)
        rows.append(Row("append, 32 writers (group commit)", rate32, "appends/s",
                        ">= 5,000", rate32 >= 5_000,
                        extra={"appends": n32, "commits": commits32,
                               "mean_batch": n32 / commits32}))
        print(f"32 writers: {n32} appends in {commits32} commits "
              f"(mean batch {n32 / commits32:.1f})", flush=True)

        big = tmp / "big.log"
        log_creds = creds[: args.entries]
        write_log_file(big, log_creds)
        t = time.perf_counter()
        SpaceLog.open(big, MembershipState()).close()  # no checkpoint yet: trusted replay
        replay = time.perf_counter() - t
        rows.append(Row(f"reopen {len(log_creds):,}, no checkpoint", replay, "s",
                        extra={"note": "rules replayed, last signature verified"}))
        times = []
        for _ in range(3):
            state = MembershipState()
            t = time.perf_counter()
            log = SpaceLog.open(big, state)
            times.append(time.perf_counter() - t)
            assert log.report.from_checkpoint == len(log_creds), log.report
            log.close()
        reopen = statistics.median(times)
        rows.append(Row(f"reopen {len(log_creds):,} entries (checkpoint)", reopen, "s", "< 1 s",
                        reopen < 1.0, extra={"runs": times}))

        t = time.perf_counter()
        log = SpaceLog.open(big, MembershipState(), full_verify=True)
        full = time.perf_counter() - t
        assert log.report.verified_signatures == len(log_creds)
        log.close()

        decoded = [decode_credential(c) for c in log_creds]
        keys: dict[bytes, object] = {}
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        work = []
        for c in decoded:
            pk = keys.get(c.signer)
            if pk is None:
                pk = keys[c.signer] = Ed25519PublicKey.from_public_bytes(c.signer)
            work.append((pk, c.signature, c.payload))
        t = time.perf_counter()
        for pk, sig, payload in work:
            pk.verify(sig, payload)  # type: ignore[attr-defined]
        bare = time.perf_counter() - t
        rows.append(Row(f"full verification, {len(log_creds):,} entries", full, "s",
                        f"<= 1.5 x bare ({1.5 * bare:.2f} s)", full <= 1.5 * bare,
                        extra={"ratio": full / bare}))
        rows.append(Row(f"bare Ed25519 verify loop, {len(log_creds):,}", bare, "s",
                        extra={"per_verify_us": bare / len(work) * 1e6}))
        rows.append(Row("  -> verify-bound append ceiling", len(work) / bare, "appends/s",
                        extra={"note": "signature checks alone, one core"}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report("log", rows, args.json)


if __name__ == "__main__":
    sys.exit(main())
