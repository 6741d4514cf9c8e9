"""Fetching, verifying and unpacking data set archives into a local cache.

``fetch`` is the only function that touches the network; tests replace it
(``monkeypatch.setattr(download, "fetch", ...)``) so that nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.request
from pathlib import Path
from typing import Iterable, List, Optional, Union

from fedcore.simulation.errors import DatasetDownloadError, DatasetFileError


def default_cache_dir() -> Path:
    """``$FEDCORE_DATA_DIR``, else ``$XDG_CACHE_HOME/fedcore/datasets``, else ``~/.cache/fedcore/datasets``."""
    explicit = os.environ.get("FEDCORE_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "fedcore" / "datasets"


def fetch(url: str, destination: Path, timeout: float = 60.0) -> None:
    """Copies the resource at ``url`` to the file ``destination``; raises OSError on failure."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(destination, "wb") as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def sha256_of(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_archive(url: str, sha256: str, directory: Path, help_text: str = "") -> Path:
    """The archive at ``url`` as a verified file in ``directory``, downloaded if not already there.

    A download goes to a ``.part`` file and is renamed only once its sha256
    matches, so an interrupted or corrupt download never looks complete.
    """
    directory.mkdir(parents=True, exist_ok=True)
    archive = directory / url.rsplit("/", 1)[-1]
    if archive.is_file() and sha256_of(archive) == sha256:
        return archive
    partial = archive.with_name(archive.name + ".part")
    try:
        fetch(url, partial)  # looked up at call time, so tests can replace it
    except OSError as e:
        partial.unlink(missing_ok=True)
        raise DatasetDownloadError(f"could not download {url} ({e}). {help_text}".strip()) from None
    actual = sha256_of(partial)
    if actual != sha256:
        partial.unlink(missing_ok=True)
        raise DatasetFileError(
            url, f"the downloaded archive is corrupt: its sha256 is {actual}, expected {sha256}. {help_text}".strip()
        )
    partial.replace(archive)
    return archive


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
