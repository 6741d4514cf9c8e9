"""Federated EMNIST: handwritten characters grouped by the writer who drew them.

The data lives in two HDF5 files (train and test) with one layout:

    /examples/<writer id>/label    int32   [N]
    /examples/<writer id>/pixels   float32 [N, 28, 28]   (1.0 is background, ink is darker)

``load_data`` reads them lazily: a writer's arrays are read when that
writer's dataset is first requested.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from fedcore.simulation.client_data import ClientData
from fedcore.simulation.datasets import download
from fedcore.simulation.hdf5 import load_hdf5

URL_BASE = "https://storage.googleapis.com/tff-datasets-public/"

# Archive prefix and the sha256 published alongside it by the data set's original loader.
ARCHIVES = {
    True: ("fed_emnist_digitsonly", "55333deb8546765427c385710ca5e7301e16f4ed8b60c1dc5ae224b42bd5b14b"),
    False: ("fed_emnist", "fe1ed5a502cea3a952eb105920bff8cffb32836b5173cb18a57a32c3606f3ea0"),
}

LAYOUT = collections.OrderedDict(
    label=(np.int32, ()),
    pixels=(np.float32, (28, 28)),
)


def file_names(only_digits: bool = True) -> Tuple[str, str]:
    """The (train, test) HDF5 file names: ``fed_emnist_digitsonly_train.h5``, ... ."""
    prefix = ARCHIVES[bool(only_digits)][0]
    return f"{prefix}_train.h5", f"{prefix}_test.h5"


def load_data(
    only_digits: bool = True,
    cache_dir: Optional[Union[str, Path]] = None,
    path: Optional[Union[str, Path]] = None,
) -> Tuple[ClientData, ClientData]:
    """Federated EMNIST as (train, test) ClientData; elements are ``<label=int32,pixels=float32[28,28]>``.

    ``only_digits`` keeps the 10 digit classes (3383 writers); otherwise there
    are 62 classes (digits, upper and lower case letters; 3400 writers).

    With ``path``, the two files are read from that directory and nothing is
    downloaded.  Without it, they are looked for in ``cache_dir`` (by default
    :func:`download.default_cache_dir`), and if absent the archive is
    downloaded there, checked against its published sha256 and unpacked.  Needs
    the ``datasets`` extra (h5py).

    Args:
        only_digits: the 10-class digits-only variant (True) or all 62 classes (False).
        cache_dir: where downloaded files are kept; ``$FEDCORE_DATA_DIR`` or the user's
            cache folder when None.
        path: a directory that already holds the two HDF5 files; nothing is downloaded.

    Returns:
        ``(train, test)`` ClientData, read lazily (a writer's arrays on first use).

    Raises:
        FileNotFoundError: when ``path`` lacks one of the files.
        NotADirectoryError: when ``path`` is a file.
        DatasetDownloadError: when the download fails (the message says how to get the
            files without network access).
        DatasetFileError: when the download's checksum is wrong, or a file is not the
            expected HDF5 layout.
        ModuleNotFoundError: when h5py is not installed (the message names the extra).
    """
    prefix, sha256 = ARCHIVES[bool(only_digits)]
    names = file_names(only_digits)
    if path is not None:
        directory = Path(path).expanduser()
        if directory.is_file():
            raise NotADirectoryError(
                f"path must be the directory that holds {names[0]} and {names[1]}, but {directory} is a file"
            )
        missing = download.find_missing(directory, names)
        if missing:
            raise FileNotFoundError(
                f"{directory} does not hold {' and '.join(missing)}; put {names[0]} and {names[1]} there "
                f"(they are in the archive {URL_BASE}{prefix}.tar.bz2)"
            )
    else:
        directory = Path(cache_dir).expanduser() if cache_dir is not None else download.default_cache_dir()
        if download.find_missing(directory, names):
            help_text = (
                f"Federated EMNIST needs the files {names[0]} and {names[1]}. Without network access, "
                f"unpack {prefix}.tar.bz2 elsewhere and copy the two files into {directory}, or pass "
                f"path=DIR with the directory that holds them (on the command line: fedcore train --emnist DIR)."
            )
            archive = download.download_archive(URL_BASE + prefix + ".tar.bz2", sha256, directory, help_text)
            download.extract_files(archive, names, directory)
    train = load_hdf5(directory / names[0], layout=LAYOUT)
    test = load_hdf5(directory / names[1], layout=LAYOUT)
    return train, test
