#!/usr/bin/env bash
# Runs the whole test suite. Sets up .venv on first use; exits non-zero on any failure.
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
exec .venv/bin/python -m pytest -n 2 -q "$@"
