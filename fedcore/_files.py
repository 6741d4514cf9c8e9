"""Crash-safe file writes, shared by checkpoints and compiled forms."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """Makes a rename inside ``directory`` durable (where the platform has directory handles)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover (platforms without directory handles)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_atomically(final: Path, data: bytes, tmp: Path) -> None:
    """Writes ``data`` to ``tmp``, fsyncs it and renames it over ``final``: readers see the old file or the
    whole new one, never a part.  ``tmp`` must be in ``final``'s directory; it is removed on failure."""
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    fsync_directory(final.parent)
