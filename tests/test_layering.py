"""Imports point down the layers of docs/ARCHITECTURE.md, and siblings stay apart."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import p2pinvite

ROOT = Path(p2pinvite.__file__).parent

#: Package -> the p2pinvite packages and modules it must never import.
FORBIDDEN = {
    "rendezvous": {"net", "halo", "invitations", "swarm", "sync", "daemon", "cli", "client"},
    "net": {"rendezvous", "halo", "invitations", "swarm", "sync", "daemon", "cli", "client"},
    "swarm": {"invitations", "daemon", "cli", "client"},
    "invitations": {"swarm", "sync", "daemon", "cli", "client"},
    "halo": {"net", "rendezvous", "invitations", "swarm", "sync", "daemon", "cli", "client"},
    "crypto": {"net", "rendezvous", "halo", "invitations", "swarm", "sync", "daemon", "cli",
               "client"},
}


def _imports(path: Path) -> set[str]:
    """The absolute module names *path* imports (relative imports resolved)."""
    package = ["p2pinvite", *path.relative_to(ROOT).parent.parts]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
                out.add(module)
                if node.module is None:  # "from .. import x": x may be a module
                    out.update(f"{module}.{a.name}" for a in node.names)
            elif node.module:
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_or_beside_it(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    for path in files:
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "p2pinvite" and len(parts) > 1:
                assert parts[1] not in FORBIDDEN[package], (
                    f"{path.relative_to(ROOT)} imports {name}")
