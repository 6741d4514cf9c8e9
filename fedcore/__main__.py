"""``python -m fedcore ...``: the ``fedcore`` command (``fedcore --help`` lists its subcommands)."""

import sys

from fedcore.cli import main

if __name__ == "__main__":
    sys.exit(main())
