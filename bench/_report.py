"""Shared output for the benchmark parts: a plain table on stdout, JSON on request.

Every part (``bench/bench_<part>.py``) builds a list of :class:`Row` and
hands it to :func:`report`. A row is one figure: the median of its samples
with their min and max (:meth:`Row.of`), or a single derived value (a ratio
of two medians measured in the same run, a count). ``--quick`` makes a
smoke run: fewer samples, smaller sizes, and targets shown but not asserted.
``bench/suite.py`` runs every part and merges their JSON into one table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Row:
    """One figure: *value* (a median, or a derived value), its unit, and an optional target.

    *lo* and *hi* are the min and max of the samples behind a median and *n*
    their count (``n == 1``: a single or derived value). *floor* says what
    bounds the figure (the cryptography, an fsync, a bare interpreter...),
    with the floor's own figure where one was measured.
    """

    name: str
    value: float
    unit: str
    target: str = ""
    ok: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    lo: float | None = None
    hi: float | None = None
    n: int = 1
    floor: str = ""

    @classmethod
    def of(cls, name: str, samples: Sequence[float], unit: str, *, scale: float = 1.0,
           **kw: Any) -> Row:
        """The median of *samples* (times *scale*), with their min, max and count."""
        if not samples:
            raise ValueError(f"{name}: no samples")
        xs = [s * scale for s in samples]
        return cls(name, statistics.median(xs), unit, lo=min(xs), hi=max(xs), n=len(xs), **kw)


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the common ``--json FILE`` and ``--quick`` options."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: few samples, small sizes, targets not asserted")
    return p


def timeit(fn: Callable[[], object], *, min_time: float = 0.5, min_runs: int = 5) -> list[float]:
    """Run *fn* repeatedly for at least *min_time* seconds; return per-run seconds."""
    runs: list[float] = []
    start = time.perf_counter()
    while len(runs) < min_runs or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return runs


def percentile(samples: Sequence[float], p: float) -> float:
    """The *p*-th percentile (0-100) of *samples*, by linear interpolation."""
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[max(0, min(98, int(p) - 1))]


def _num(x: float | None) -> str:
    if x is None:
        return ""
    return f"{x:,.0f}" if abs(x) >= 10_000 else f"{x:,.3f}"


def table(rows: Sequence[Row]) -> list[str]:
    """*rows* as the lines of a plain-text table (median, min, max, n, unit, target)."""
    w = max(len(r.name) for r in rows)
    lines = [f"{'figure':<{w}}  {'median':>12}  {'min':>12}  {'max':>12}  {'n':>4}  "
             f"{'unit':<10}  target"]
    for r in rows:
        verdict = "" if r.ok is None else ("  PASS" if r.ok else "  MISS")
        n = f"{r.n:>4}" if r.n > 1 else " " * 4
        lines.append(f"{r.name:<{w}}  {_num(r.value):>12}  {_num(r.lo):>12}  "
                     f"{_num(r.hi):>12}  {n}  {r.unit:<10}  {r.target}{verdict}")
        if r.floor:
            lines.append(f"{'':<{w}}    bound: {r.floor}")
    return lines


def report(suite: str, rows: Sequence[Row], json_path: str | None, *,
           quick: bool = False) -> int:
    """Print *rows* as a table, optionally write JSON; 1 if a target was missed (not *quick*)."""
    print(f"\n{suite} benchmark ({platform.python_implementation()} {platform.python_version()},"
          f" {platform.machine()}){' -- quick run, targets not asserted' if quick else ''}")
    print("\n".join(table(rows)))
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"suite": suite, "quick": quick, "rows": [asdict(r) for r in rows]},
                      f, indent=2)
        print(f"\nwrote {json_path}")
    return 0 if quick or all(r.ok is not False for r in rows) else 1


def skipped(suite: str, reason: str, json_path: str | None) -> int:
    """Say why *suite* did not run (no root, say), write that as its JSON; 0."""
    print(f"\n{suite} benchmark skipped: {reason}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"suite": suite, "skipped": reason, "rows": []}, f, indent=2)
    return 0
