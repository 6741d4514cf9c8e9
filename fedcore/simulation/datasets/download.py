"""Fetching, verifying and unpacking data set archives into a local cache.

The download and its cache are pooch's (``pooch.create(...).fetch``): the archive goes to a
temporary file in the cache folder and is moved to its name only once its sha256 matches,
an archive already there with the right hash is not downloaded again, a failed attempt is
retried once, and on a terminal the download shows a progress bar (tqdm).  ``fetch`` is the
one function that touches the network; tests replace it
(``monkeypatch.setattr(download, "fetch", ...)``) so that nothing is downloaded.

Unpacking stays here (``extract_files``): it writes only the named files, by base name,
so an archive cannot write outside the cache folder whatever its member paths.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Iterable, List, Optional, Union

from fedcore._extras import require
from fedcore.simulation.errors import DatasetDownloadError, DatasetFileError

# Attempts after the first when a download fails or its checksum does not match.
RETRIES = 1


def default_cache_dir() -> Path:
    """``$FEDCORE_DATA_DIR``, else ``$XDG_CACHE_HOME/fedcore/datasets``, else ``~/.cache/fedcore/datasets``."""
    explicit = os.environ.get("FEDCORE_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "fedcore" / "datasets"


def fetch(url: str, destination: Path, timeout: float = 60.0) -> None:
    """Copies the resource at ``url`` to the file ``destination``, with a progress bar on a terminal.

    Raises:
        OSError: when the download fails (``requests``' errors are OSErrors).
    """
    pooch = require("pooch", "datasets", "downloading a data set")
    progress = sys.stderr.isatty() and importlib.util.find_spec("tqdm") is not None
    pooch.HTTPDownloader(progressbar=progress, timeout=timeout)(url, str(destination), None)


def download_archive(url: str, sha256: str, directory: Path, help_text: str = "") -> Path:
    """The archive at ``url`` as a verified file in ``directory``, downloaded if not already there.

    Args:
        url: where the archive is; its last path component is the file's name.
        sha256: the archive's published SHA-256, in hex.
        directory: the cache folder (made if missing).
        help_text: appended to error messages (how to get the files another way).

    Returns:
        The path of the verified archive.

    Raises:
        DatasetDownloadError: when the download fails.
        DatasetFileError: when the downloaded bytes do not have the published sha256; nothing
            is left under the archive's name.
    """
    pooch = require("pooch", "datasets", "downloading a data set")
    directory.mkdir(parents=True, exist_ok=True)
    base, name = url.rsplit("/", 1)
    cache = pooch.create(path=directory, base_url=base + "/", registry={name: f"sha256:{sha256}"},
                         retry_if_failed=RETRIES)
    try:
        # ``fetch`` is looked up at call time, so tests can replace it.
        path = cache.fetch(name, downloader=lambda u, output, _pooch: fetch(u, Path(output)))
    except OSError as e:
        raise DatasetDownloadError(f"could not download {url} ({e}). {help_text}".strip()) from None
    except ValueError as e:  # pooch: the hash of the downloaded file does not match
        raise DatasetFileError(url, f"the downloaded archive is corrupt: {e} {help_text}".strip()) from None
    return Path(path)


def extract_files(archive: Path, names: Iterable[str], directory: Path) -> List[Path]:
    """Extracts the regular files called ``names`` (matched by base name) from a tar archive.

    Nothing else in the archive is written, and member paths are never used
    as destination paths, so an archive cannot write outside ``directory``.
    """
    wanted = list(names)
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as e:
        raise DatasetFileError(archive, f"not a readable tar archive ({e})") from None
    written = []
    with tar:
        by_name = {}
        for member in tar.getmembers():
            if member.isfile():
                by_name.setdefault(os.path.basename(member.name), member)
        missing = [n for n in wanted if n not in by_name]
        if missing:
            held = sorted(by_name)[:5]
            raise DatasetFileError(archive, f"the archive does not contain {missing}; it holds {held}")
        for name in wanted:
            target = directory / name
            partial = target.with_name(target.name + ".part")
            source = tar.extractfile(by_name[name])
            with source, open(partial, "wb") as out:
                shutil.copyfileobj(source, out, length=1 << 20)
            partial.replace(target)
            written.append(target)
    return written


def find_missing(directory: Optional[Path], names: Iterable[str]) -> List[str]:
    if directory is None:
        return list(names)
    return [n for n in names if not (directory / n).is_file()]
