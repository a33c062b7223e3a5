"""sync/ sits beside invitations/: it may import net/, wire.py and errors.py, nothing above."""

from __future__ import annotations

import ast
from pathlib import Path

import p2pinvite.sync

ALLOWED = {"p2pinvite.net", "p2pinvite.wire", "p2pinvite.errors", "p2pinvite.sync"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against p2pinvite/sync/
                base = ["p2pinvite", "sync"][: 2 - (node.level - 1)]
                out.add(".".join([*base, *(node.module or "").split(".")]).rstrip("."))
            elif node.module:
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return out


def test_sync_imports_only_net_wire_and_errors() -> None:
    package = Path(p2pinvite.sync.__file__).parent
    for path in sorted(package.glob("*.py")):
        for name in _imports(path):
            if name.startswith("p2pinvite"):
                assert any(name == a or name.startswith(a + ".") for a in ALLOWED), (
                    f"{path.name} imports {name}")
