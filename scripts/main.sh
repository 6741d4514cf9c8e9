#!/usr/bin/env bash
# The main job. Sets up .venv on first use, then runs fedcore's demo.
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
exec .venv/bin/python -m fedcore.demo "$@"
