"""Test-wide settings.

Hypothesis: under CI (``CI`` set) examples are derandomized, so a run is
reproducible from the commit alone, and the example database is off (a fresh
clone has none). Locally, examples stay random to keep exploring new inputs.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
