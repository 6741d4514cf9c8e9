"""Importing TensorFlow without the notices its C++ side prints while it loads.

Used by fedcore's commands (and its test suite) before anything else imports TensorFlow; the
library itself never redirects a process's output.
"""

from __future__ import annotations

# What TensorFlow's C++ side prints while it loads, and that a command's user cannot act on. It is
# printed whatever TF_CPP_MIN_LOG_LEVEL says.
_LOAD_NOTICES = ("All log messages before absl::InitializeLog() is called", "oneDNN custom operations are on",
                 "This TensorFlow binary is optimized to use available CPU instructions",
                 "To enable the following instructions:")


def import_tensorflow() -> None:
    """Imports TensorFlow with its load-time notices held back; every other line it prints is kept.

    ``TF_CPP_MIN_LOG_LEVEL`` does not hide these notices; with ``TF_CPP_MIN_LOG_LEVEL=0`` (a user
    asking for all of TensorFlow's logs) nothing is held back.
    """
    import os
    import sys
    import tempfile

    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no file descriptor 2 to redirect (an embedded interpreter)
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except ImportError:
            pass  # the command that needs it says how to install it
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode("utf-8", "replace").splitlines()
                    if not any(notice in line for notice in _LOAD_NOTICES)]
            if kept:
                print("\n".join(kept), file=sys.stderr)
