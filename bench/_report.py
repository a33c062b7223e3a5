"""Shared output for the benchmark scripts: a plain table on stdout, JSON on request."""

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
    """One measured quantity: name, value, unit, and an optional target verdict."""

    name: str
    value: float
    unit: str
    target: str = ""
    ok: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the common ``--json FILE`` option."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
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


def report(suite: str, rows: Sequence[Row], json_path: str | None) -> int:
    """Print *rows* as a table, optionally write JSON; return 1 if a target was missed."""
    w = max(len(r.name) for r in rows)
    print(f"\n{suite} benchmark ({platform.python_implementation()} {platform.python_version()},"
          f" {platform.machine()})")
    print(f"{'measure':<{w}}  {'value':>14}  {'unit':<10}  target")
    for r in rows:
        verdict = "" if r.ok is None else ("  PASS" if r.ok else "  MISS")
        print(f"{r.name:<{w}}  {r.value:>14,.3f}  {r.unit:<10}  {r.target}{verdict}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"suite": suite, "rows": [asdict(r) for r in rows]}, f, indent=2)
        print(f"\nwrote {json_path}")
    return 0 if all(r.ok is not False for r in rows) else 1
