"""docs/SECURITY.md stays true: every test it cites as a proof exists.

A defence whose proving test was renamed or deleted would otherwise be a
claim nobody checks.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
DOC = ROOT / "docs" / "SECURITY.md"
# `dir/test_x.py::test_name`, `::test_name` (same file as the previous one), or `dir/test_x.py`.
_REF = re.compile(r"`((?:[\w/]+/)?test_\w+\.py)?(?:::(test_\w+))?`")


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name.startswith("test_")}


def test_every_cited_test_exists() -> None:
    cited: list[tuple[str, str | None]] = []
    current: str | None = None
    for m in _REF.finditer(DOC.read_text()):
        file, name = m.group(1), m.group(2)
        if file is None and name is None:
            continue
        if file is not None:
            current = file
        assert current is not None, f"{m.group(0)} names no file before it"
        cited.append((current, name))
    assert len(cited) > 40  # the document cites its proofs
    missing = []
    for file, name in cited:
        path = ROOT / "tests" / file
        if not path.is_file():
            missing.append(file)
        elif name is not None and name not in _tests_in(path):
            missing.append(f"{file}::{name}")
    assert not missing, f"docs/SECURITY.md cites tests that do not exist: {missing}"
