# Sourced by the quick-start scripts: creates .venv if missing and installs fedcore into it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "fedcore: creating a virtual environment in .venv" >&2
  "$PYTHON" -m venv .venv
fi
STAMP=.venv/.fedcore-installed
if [ ! -f "$STAMP" ] || [ setup.cfg -nt "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "fedcore: installing fedcore and its dependencies into .venv (log: .venv/install.log)" >&2
  if ! { .venv/bin/python -m pip install --upgrade pip \
         && .venv/bin/python -m pip install -e ".[${FEDCORE_EXTRAS:-test,ray}]"; } > .venv/install.log 2>&1; then
    tail -n 40 .venv/install.log >&2
    echo "fedcore: installation failed; see .venv/install.log" >&2
    exit 1
  fi
  touch "$STAMP"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
