"""``python -m fedcore.cli ...``: the ``fedcore`` command."""

import sys

from fedcore.cli import main

sys.exit(main())
