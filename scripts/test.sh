#!/usr/bin/env bash
# Runs the whole test suite. Sets up .venv on first use; exits non-zero on any failure.
# Checks the import contracts in setup.cfg ([importlinter]) first: a broken layer fails the run.
# Besides what the main job needs, the tests need pytest and friends, Ray and the docs tools.
FEDCORE_EXTRAS="${FEDCORE_EXTRAS:-cli,datasets,test,ray,docs}"
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
# Ray workers import TensorFlow as they start: give them time on a loaded machine (see docs/distributed.md).
export FEDCORE_RAY_START_TIMEOUT_S="${FEDCORE_RAY_START_TIMEOUT_S:-300}"
.venv/bin/lint-imports --no-logo --no-cache || exit 1
# worksteal: a worker that runs out of tests takes some of the other's, so a slow test near the end does not leave a core idle.
exec .venv/bin/python -m pytest -n 2 --dist worksteal -q "$@"
