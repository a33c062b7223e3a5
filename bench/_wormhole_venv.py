"""The separate virtualenv with magic-wormhole for ``bench/bench_wormhole.py``.

magic-wormhole pulls in Twisted, autobahn and friends; they must not leak
into the project's own virtualenv, so the comparison gets its own venv at
``.bench/wormhole-venv`` (git-ignored). It is built once with ``python -m
venv`` and pip, and reused while its marker file holds the same pinned
requirement set; a changed pin set rebuilds it from scratch.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".bench" / "wormhole-venv"
MARKER = VENV / "bench-requirements.txt"
# Compatible ranges: the benchmark drives the CLIs' flags and the spake2 API,
# which a major release may change.
REQUIREMENTS = (
    "magic-wormhole>=0.24,<0.25",
    "magic-wormhole-mailbox-server>=0.8,<0.9",
    "spake2>=0.9,<0.10",
)
PIP_TIMEOUT = 900


def _marker_text() -> str:
    return "\n".join(REQUIREMENTS) + "\n"


def bin_path(name: str) -> Path:
    """The path of the executable *name* inside the venv."""
    return VENV / "bin" / name


def is_built() -> bool:
    """True when the venv exists with exactly the pinned requirement set installed."""
    try:
        return (bin_path("python").exists() and bin_path("wormhole").exists()
                and bin_path("twist").exists() and MARKER.read_text() == _marker_text())
    except OSError:
        return False


def ensure_venv() -> Path:
    """Build the venv unless it is already built with the pinned set; return its python."""
    if is_built():
        return bin_path("python")
    if VENV.exists():
        # A half-built venv or one with other pins: start again from nothing,
        # so the marker only ever describes what pip installed.
        print(f"wormhole venv: removing stale {VENV}", flush=True)
        shutil.rmtree(VENV)
    VENV.parent.mkdir(parents=True, exist_ok=True)
    print(f"wormhole venv: creating {VENV} (once; about a minute)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    print(f"wormhole venv: pip install {' '.join(REQUIREMENTS)}", flush=True)
    # pip's own progress goes to our stdout, so a long first build is visibly alive.
    subprocess.run([str(bin_path("python")), "-m", "pip", "install",
                    "--disable-pip-version-check", "--progress-bar", "off", *REQUIREMENTS],
                   check=True, timeout=PIP_TIMEOUT)
    # Written last: an interrupted build leaves no marker and is redone next time.
    MARKER.write_text(_marker_text())
    print("wormhole venv: ready", flush=True)
    return bin_path("python")


if __name__ == "__main__":
    print(ensure_venv())
