# Shared by scripts/*: create .venv if missing and install the project into it.
# Usage: source scripts/_venv.sh EXTRAS   (EXTRAS: "" or "test")
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
if [[ ! -x "$VENV/bin/python" ]]; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
extras="${1:-}"
stamp="$VENV/.installed${extras:+-$extras}"
# Reinstall only when pyproject.toml changed since the last install: idempotent and fast.
if [[ ! -f "$stamp" || "$ROOT/pyproject.toml" -nt "$stamp" ]]; then
  spec="$ROOT"
  [[ -n "$extras" ]] && spec="$ROOT[$extras]"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec"
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
