#!/usr/bin/env bash
# The main job. Sets up .venv on first use, then runs `fedcore train`: federated averaging
# on the embedded handwritten digits. Arguments are passed on (see `--help`).
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
exec .venv/bin/python -m fedcore.cli train "$@"
