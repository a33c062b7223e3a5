"""The whole benchmark suite: every part, one table, one JSON file.

Run: ./scripts/bench [--quick] [--json FILE] [--parts a,b,...]

Each part (``bench/bench_<part>.py``) runs in its own process, one after the
other, with ``--json`` into a scratch file (and ``--quick`` when given), so a
part's memory, threads and daemons never weigh on the next one. Its own
output is shown as it runs; at the end this prints every figure in one table
(median, min, max, n, unit, target), grouped by part, with the date, the
machine and the load average before and after, and writes all of it as JSON.

Exit status: 0 when every part ran and met its targets (always, for a part's
targets, with ``--quick``: a smoke run asserts none); 1 when a target was
missed or a part failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._report import Row, table

HERE = Path(__file__).resolve().parent
#: Cheap and self-contained first; the ones that start many processes last.
PARTS = ("noise", "log", "discovery", "pairing", "cli", "sync", "scale", "wormhole")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    info: dict[str, Any] = {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:  # not Linux: the rest still says enough
        pass
    return info


def run_part(part: str, quick: bool, scratch: Path) -> dict[str, Any]:
    """Run one part in its own process; its JSON, with its exit status and wall time."""
    out = scratch / f"{part}.json"
    argv = [sys.executable, str(HERE / f"bench_{part}.py"), "--json", str(out)]
    if quick:
        argv.append("--quick")
    print(f"\n=== {part}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, check=False)
    wall = time.perf_counter() - t0
    result: dict[str, Any] = {"suite": part, "rows": []}
    if out.exists():
        result = json.loads(out.read_text())
    result["exit"] = proc.returncode
    result["wall_s"] = round(wall, 1)
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and not result["rows"]):
        result["failed"] = f"exit status {proc.returncode}"
    return result


def summary(results: list[dict[str, Any]], info: dict[str, Any]) -> list[str]:
    """The one table of every part's figures."""
    lines = [f"p2pinvite benchmark suite, {info['date']}{' (quick)' if info['quick'] else ''}",
             f"{info['machine'].get('cpu', '?')}, {info['machine']['cpus']} CPUs, "
             f"{info['machine']['python']}; load average {info['load_before'][0]:.2f} before, "
             f"{info['load_after'][0]:.2f} after"]
    for r in results:
        head = f"\n[{r['suite']}] {r['wall_s']} s"
        if "failed" in r:
            lines.append(f"{head}: FAILED ({r['failed']})")
            continue
        if r.get("skipped"):
            lines.append(f"{head}: skipped: {r['skipped']}")
            continue
        lines.append(head)
        lines += table([Row(**row) for row in r["rows"]])
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description="Run every benchmark part; print one table.")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run of every part (about a minute), targets not asserted")
    p.add_argument("--json", metavar="FILE", help="also write every figure as JSON to FILE")
    p.add_argument("--parts", help=f"comma-separated subset of {','.join(PARTS)}")
    args = p.parse_args()
    parts = PARTS if not args.parts else tuple(x.strip() for x in args.parts.split(","))
    unknown = [x for x in parts if not (HERE / f"bench_{x}.py").exists()]
    if unknown:
        p.error(f"no such part: {', '.join(unknown)}")
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "quick": args.quick, "load_before": os.getloadavg()}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="p2pbench-") as scratch:
        results = [run_part(part, args.quick, Path(scratch)) for part in parts]
    info["load_after"] = os.getloadavg()
    info["wall_s"] = round(time.perf_counter() - t0, 1)
    print("\n" + "=" * 72)
    print("\n".join(summary(results, info)))
    print(f"\nwhole suite: {info['wall_s']} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**info, "parts": results}, f, indent=2)
        print(f"wrote {args.json}")
    failed = [r["suite"] for r in results if "failed" in r]
    missed = [r["suite"] for r in results if r["exit"] == 1 and "failed" not in r]
    if failed:
        print(f"parts that failed: {', '.join(failed)}")
    if missed and not args.quick:
        print(f"parts that missed a target: {', '.join(missed)}")
    return 1 if failed or (missed and not args.quick) else 0


if __name__ == "__main__":
    raise SystemExit(main())
