# Sourced by the quick-start scripts: creates .venv if missing and installs fedcore into it,
# with the extras the calling script needs (FEDCORE_EXTRAS, set by the caller; main.sh needs
# only cli,datasets; test.sh adds test,ray,docs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
EXTRAS="${FEDCORE_EXTRAS:-cli,datasets}"
STAMP=".venv/.fedcore-installed-${EXTRAS//,/-}"
if [ ! -x .venv/bin/python ]; then
  echo "fedcore: creating a virtual environment in .venv" >&2
  "$PYTHON" -m venv .venv
fi
NO_GPU=1
if command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi -L > /dev/null 2>&1; then NO_GPU=0; fi
# A .venv set up by an earlier version of this script holds the CUDA build of TensorFlow,
# which was a hard dependency then: on a machine without a GPU it is swapped for the
# CPU-only build (uninstalled first, so that no file of one is left among the other's).
if [ -f .venv/.fedcore-installed ] && [ "$NO_GPU" = 1 ] && [ -z "${FEDCORE_TF_EXTRA:-}" ] \
   && .venv/bin/python -m pip show -q tensorflow > /dev/null 2>&1 \
   && ! .venv/bin/python -m pip show -q tensorflow-cpu > /dev/null 2>&1; then
  echo "fedcore: replacing the CUDA build of TensorFlow in .venv by the CPU-only build (no GPU here)" >&2
  .venv/bin/python -m pip uninstall -y -q tensorflow > .venv/install.log 2>&1 || { tail -n 20 .venv/install.log >&2; exit 1; }
fi
if [ -f .venv/.fedcore-installed ]; then
  # That set-up installed this source tree under the distribution name fedcore; it is
  # fedcore-tf now, and the old record would stay beside the new one.
  .venv/bin/python -m pip uninstall -y -q fedcore > /dev/null 2>&1 || true
  rm -f .venv/.fedcore-installed
fi
# TensorFlow: a build already in .venv is kept (replacing one TensorFlow distribution with
# another in place leaves a mix of both); otherwise the CUDA build where nvidia-smi sees a
# GPU, and the CPU-only build elsewhere, which does not probe for CUDA at every start.
if ! .venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('tensorflow') is None)" 2>/dev/null; then
  if [ -n "${FEDCORE_TF_EXTRA:-}" ]; then
    EXTRAS="$EXTRAS,$FEDCORE_TF_EXTRA"
  elif [ "$NO_GPU" = 0 ]; then
    EXTRAS="$EXTRAS,gpu"
  else
    EXTRAS="$EXTRAS,cpu"
  fi
fi
if [ ! -f "$STAMP" ] || [ setup.cfg -nt "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "fedcore: installing fedcore with the extras [$EXTRAS] into .venv (log: .venv/install.log)" >&2
  if ! { .venv/bin/python -m pip install --upgrade pip \
         && .venv/bin/python -m pip install -e ".[$EXTRAS]"; } > .venv/install.log 2>&1; then
    tail -n 40 .venv/install.log >&2
    echo "fedcore: installation failed; see .venv/install.log" >&2
    exit 1
  fi
  touch "$STAMP"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
