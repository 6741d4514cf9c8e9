"""Errors about data files: missing, unreadable, corrupt or laid out wrongly."""

from __future__ import annotations

from pathlib import Path
from typing import Union


class DatasetFileError(ValueError):
    """A data file (an HDF5 file or a downloaded archive) is corrupt or has the wrong layout.

    ``path`` is the file and ``problem`` says what is wrong with it.
    """

    def __init__(self, path: Union[str, Path], problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class DatasetDownloadError(OSError):
    """A data set's files are not on disk and could not be downloaded (no network, for instance)."""
