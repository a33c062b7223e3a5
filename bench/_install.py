"""A regular (not editable) install of this tree, for the start-up benchmarks.

A user runs p2pinvite from a wheel installed into a virtualenv, with its
bytecode compiled at install time. The development venv's editable install
adds a path finder that runs at every interpreter start (about 15 ms here):
figures that include process start-up are taken from this install instead.
The venv is ``.bench/cli-venv`` (git-ignored), rebuilt when the sources change.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._daemons import PY, REPO, STEP_TIMEOUT

VENV = REPO / ".bench" / "cli-venv"
MARKER = VENV / "bench-source.json"
PIP_TIMEOUT = 900
#: What goes into the wheel; the key of the venv.
_SOURCES = ("pyproject.toml", "README.md", "LICENSE")


def _source_key() -> tuple[str, str]:
    """Hashes of (the dependencies: pyproject.toml, everything that goes into the wheel)."""
    files = [REPO / name for name in _SOURCES]
    files += sorted(p for p in (REPO / "p2pinvite").rglob("*")
                    if p.is_file() and "__pycache__" not in p.parts)
    whole = hashlib.sha256()
    for f in files:
        whole.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    deps = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    return deps, whole.hexdigest()


def _pip(python: Path | str, *args: str) -> None:
    # pip's output (warnings about the machine's index configuration included) is
    # shown only when it fails.
    r = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "--quiet", *args],
                       capture_output=True, text=True, timeout=PIP_TIMEOUT, cwd="/")
    if r.returncode != 0:
        raise RuntimeError(f"pip {args[0]} failed:\n{r.stdout}{r.stderr}")


def cli_venv() -> Path:
    """The venv's ``bin`` with this tree's wheel installed; (re)built when the sources changed."""
    VENV.parent.mkdir(parents=True, exist_ok=True)
    deps, whole = _source_key()
    with (VENV.parent / "cli-venv.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs at once must not build it together
        try:
            marker = json.loads(MARKER.read_text())
        except (OSError, ValueError):
            marker = {}
        if marker.get("source") == whole:
            return VENV / "bin"
        with tempfile.TemporaryDirectory(prefix="p2pb-wheel-") as tmp:
            # Build from a copy: the tree is shared, and setuptools writes build/ into it.
            src = Path(tmp) / "src"
            src.mkdir()
            for name in _SOURCES:
                shutil.copy2(REPO / name, src / name)
            shutil.copytree(REPO / "p2pinvite", src / "p2pinvite",
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            print("cli venv: building the wheel", file=sys.stderr, flush=True)
            _pip(PY, "wheel", "--no-deps", "-w", str(Path(tmp) / "dist"), str(src))
            (wheel,) = (Path(tmp) / "dist").glob("p2pinvite-*.whl")
            MARKER.unlink(missing_ok=True)  # from here on, a failure means a rebuild
            if marker.get("deps") == deps and (VENV / "bin" / "python").exists():
                print("cli venv: reinstalling p2pinvite", file=sys.stderr, flush=True)
                _pip(VENV / "bin" / "python", "install", "--no-deps", "--force-reinstall",
                     str(wheel))
            else:
                print(f"cli venv: creating {VENV} (about 10 s)", file=sys.stderr, flush=True)
                shutil.rmtree(VENV, ignore_errors=True)
                subprocess.run([PY, "-m", "venv", str(VENV)], check=True, timeout=PIP_TIMEOUT)
                _pip(VENV / "bin" / "python", "install", str(wheel))
        MARKER.write_text(json.dumps({"deps": deps, "source": whole}))
    return VENV / "bin"


def cli_env() -> dict[str, str]:
    """The environment of the CLI processes: a user's, nothing pointing at the source tree."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE",
                 "PYTHONPROFILEIMPORTTIME", "PYTHONDEVMODE", "PYTHONTRACEMALLOC",
                 "PYTHONSTARTUP", "P2PINVITE_HOME"):
        env.pop(name, None)
    return env


def check_install(bin_dir: Path, cwd: Path, env: dict[str, str]) -> None:
    """Refuse to measure unless the venv imports p2pinvite from its own site-packages."""
    r = subprocess.run([str(bin_dir / "python"), "-c",
                        "import p2pinvite; print(p2pinvite.__file__)"],
                       capture_output=True, text=True, cwd=cwd, env=env, timeout=STEP_TIMEOUT)
    where = Path(r.stdout.strip())
    if r.returncode != 0 or not where.is_relative_to(VENV) or "site-packages" not in where.parts:
        raise RuntimeError(f"the CLI venv imports p2pinvite from {where or r.stderr}")
