"""Sizes of the adversarial and fault tests: small enough for CI, full with P2PINVITE_SOAK=1.

``./scripts/test`` runs every family at its CI size, which keeps the whole
suite under 20 minutes on 2 cores; ``P2PINVITE_SOAK=1 ./scripts/test -m slow``
runs them at full size (docs/SECURITY.md lists both sizes per family).
"""

from __future__ import annotations

import os

__all__ = ["SOAK", "examples", "size"]

#: Whether the full-size (soak) run was asked for.
SOAK = os.environ.get("P2PINVITE_SOAK", "") not in ("", "0")


def size(ci: int, soak: int) -> int:
    """*soak* under ``P2PINVITE_SOAK=1``, else *ci*."""
    return soak if SOAK else ci


def examples(ci: int, soak: int | None = None) -> int:
    """Hypothesis ``max_examples`` of a fuzz target: *ci*, or *soak* (default 10× *ci*)."""
    return size(ci, soak if soak is not None else 10 * ci)
