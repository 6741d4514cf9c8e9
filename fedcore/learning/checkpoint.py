"""Checkpoints of a training run: the server state, the round number and run metadata, data only.

A checkpoint file is::

    b"FCCKPT01"                      8 bytes, the format's magic and version
    SHA-256 of everything after it   64 ASCII hex digits
    header length                    8 bytes, little-endian unsigned
    header                           UTF-8 JSON: format, round, structure, leaves, extra
    payload                          an .npz of the state's leaves (read with allow_pickle=False)

Nothing is pickled: the header is JSON and the leaves are plain arrays, so a
checkpoint from an untrusted source can be read without running its code.
The hash covers the header and the payload, so a truncated or damaged file
is reported as such, with its path, instead of loading wrong numbers.

Writes are atomic: the bytes go to a temporary file in the same directory,
which is flushed and fsync'ed, then renamed over the final name with
``os.replace`` and the directory is fsync'ed.  A process killed at any point
leaves either the previous checkpoints or the new one complete, never a
partial file under a checkpoint's name.  Temporary files left by a killed
writer start with ``.tmp-`` and are ignored (and removed by the next save).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import attrs
import numpy as np

from fedcore._files import fsync_directory, write_atomically

from fedcore.learning import _nest
from fedcore.structure import python_items

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointManager",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "save_checkpoint",
]

MAGIC = b"FCCKPT01"
FORMAT = "fedcore-checkpoint"
VERSION = 1
_NAME = re.compile(r"^checkpoint-(\d{8,})\.fckpt$")
_TMP_PREFIX = ".tmp-checkpoint-"
_HASH_LEN = 64
_LEN = struct.Struct("<Q")


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read: the message names the file and what is wrong with it."""


@attrs.frozen
class Checkpoint:
    """A loaded checkpoint: the state, the round it was saved after, the ``extra`` metadata and its path."""

    state: Any
    round_num: int
    extra: Dict[str, Any]
    path: Path


def checkpoint_name(round_num: int) -> str:
    return f"checkpoint-{round_num:08d}.fckpt"


# --------------------------------------------------------------------------
# The state's structure as JSON, and back.


def _describe(value: Any, leaves: List[np.ndarray]) -> Any:
    """A JSON description of ``value``'s containers; its leaves are appended to ``leaves`` in order."""
    items = python_items(value)
    if items is None:
        array = np.asarray(value)
        if array.dtype.kind not in "biufc":
            raise CheckpointError(
                f"cannot checkpoint a leaf of dtype {array.dtype} ({type(value).__name__}); only numbers are saved"
            )
        leaves.append(array)
        return {"leaf": len(leaves) - 1, "dtype": array.dtype.str, "shape": list(array.shape)}
    return {
        "container": type(value).__name__,
        "names": [n for n, _ in items],
        "items": [_describe(v, leaves) for _, v in items],
    }


def _rebuild(description: Any, leaves: Sequence[np.ndarray]) -> Any:
    """Plain containers from a description: named items as a dict, unnamed as a list."""
    if "leaf" in description:
        return leaves[description["leaf"]]
    values = [_rebuild(d, leaves) for d in description["items"]]
    names = description["names"]
    if names and all(n is not None for n in names):
        return dict(zip(names, values))
    return values


def _shape_of(description: Any) -> Any:
    """The description without container names: what must match between a checkpoint and a template."""
    if "leaf" in description:
        return ("leaf", description["dtype"], tuple(description["shape"]))
    return (tuple(description["names"]), tuple(_shape_of(d) for d in description["items"]))


def _first_difference(saved: Any, wanted: Any, where: str = "state") -> str:
    if ("leaf" in saved) != ("leaf" in wanted):
        return f"{where} is {'a leaf' if 'leaf' in saved else 'a container'} in the checkpoint but not in the template"
    if "leaf" in saved:
        return (
            f"{where} is {np.dtype(saved['dtype']).name}{saved['shape']} in the checkpoint but "
            f"{np.dtype(wanted['dtype']).name}{wanted['shape']} in the template"
        )
    if saved["names"] != wanted["names"]:
        return f"{where} has items {saved['names']} in the checkpoint but {wanted['names']} in the template"
    for i, (s, w) in enumerate(zip(saved["items"], wanted["items"])):
        if _shape_of(s) != _shape_of(w):
            name = saved["names"][i]
            return _first_difference(s, w, f"{where}.{name}" if name is not None else f"{where}[{i}]")
    return f"{where} differs"


# --------------------------------------------------------------------------
# Writing.


def encode(state: Any, round_num: int, extra: Optional[Mapping[str, Any]] = None) -> bytes:
    """The bytes of a checkpoint file (see the module docstring)."""
    if isinstance(round_num, bool) or not isinstance(round_num, (int, np.integer)) or round_num < 0:
        raise CheckpointError(f"round_num must be a whole number >= 0, got {round_num!r}")
    leaves: List[np.ndarray] = []
    structure = _describe(state, leaves)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "round": int(round_num),
        "structure": structure,
        "num_leaves": len(leaves),
        "extra": dict(extra or {}),
    }
    try:
        header_bytes = json.dumps(header, sort_keys=True).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"the checkpoint's extra metadata must be plain JSON data: {e}") from None
    payload = io.BytesIO()
    np.savez(payload, **{f"leaf{i}": leaf for i, leaf in enumerate(leaves)})
    body = _LEN.pack(len(header_bytes)) + header_bytes + payload.getvalue()
    return MAGIC + hashlib.sha256(body).hexdigest().encode("ascii") + body


def save_checkpoint(
    directory: Union[str, os.PathLike],
    state: Any,
    round_num: int,
    extra: Optional[Mapping[str, Any]] = None,
    keep: Optional[int] = 3,
) -> Path:
    """Writes ``state`` after round ``round_num`` atomically into ``directory``; returns the file's path.

    ``extra`` is JSON data saved alongside (run settings, RNG state, metric
    history).  Only the ``keep`` most recent checkpoints are kept (None: all).
    """
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise CheckpointError(f"keep must be a whole number >= 1 or None, got {keep!r}")
    directory = Path(directory)
    data = encode(state, round_num, extra)
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(directory)
    final = directory / checkpoint_name(int(round_num))
    tmp = directory / f"{_TMP_PREFIX}{int(round_num):08d}-{os.getpid()}"
    write_atomically(final, data, tmp)
    if keep is not None:
        for old in list_checkpoints(directory)[:-keep]:
            try:
                old.unlink()
            except FileNotFoundError:
                pass
        fsync_directory(directory)
    return final


def _remove_stale_temporaries(directory: Path) -> None:
    """Removes temporary files that a killed writer left; a live writer's own file is skipped."""
    for path in directory.glob(f"{_TMP_PREFIX}*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _process_alive(int(pid)):
            continue
        try:
            path.unlink()
        except OSError:
            pass


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------
# Reading.


def list_checkpoints(directory: Union[str, os.PathLike]) -> List[Path]:
    """The checkpoint files in ``directory``, oldest round first (temporary files are not listed)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        m = _NAME.match(path.name)
        if m and path.is_file():
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: Union[str, os.PathLike]) -> Optional[Path]:
    """The checkpoint of the highest round in ``directory``, or None when it holds none."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def decode(data: bytes, path: Union[str, os.PathLike] = "<bytes>", template: Any = None) -> Checkpoint:
    """A checkpoint from its bytes; ``path`` names it in errors.  See :func:`load_checkpoint`."""

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a valid fedcore checkpoint: {what}")

    if len(data) < len(MAGIC) + _HASH_LEN + _LEN.size:
        raise bad(f"it is only {len(data)} bytes long (truncated or empty)")
    if data[: len(MAGIC)] != MAGIC:
        if data[:6] == MAGIC[:6]:
            raise bad(f"it has format version {data[6:8]!r}, this fedcore reads {MAGIC[6:]!r}")
        raise bad("it does not start with the checkpoint marker FCCKPT01")
    digest = data[len(MAGIC) : len(MAGIC) + _HASH_LEN].decode("ascii", errors="replace")
    body = data[len(MAGIC) + _HASH_LEN :]
    if hashlib.sha256(body).hexdigest() != digest:
        raise bad("its SHA-256 does not match its contents (the file is truncated or damaged)")
    (header_len,) = _LEN.unpack_from(body)
    try:
        header = json.loads(body[_LEN.size : _LEN.size + header_len].decode("utf-8"))
        structure, round_num = header["structure"], header["round"]
        num_leaves, extra = header["num_leaves"], header["extra"]
    except (ValueError, KeyError, TypeError) as e:
        raise bad(f"its header cannot be read ({type(e).__name__}: {e})") from None
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise bad(f"format {header.get('format')!r} version {header.get('version')!r}, expected {FORMAT!r} {VERSION}")
    try:
        with np.load(io.BytesIO(body[_LEN.size + header_len :]), allow_pickle=False) as arrays:
            leaves = [arrays[f"leaf{i}"] for i in range(num_leaves)]
    except Exception as e:  # noqa: BLE001 - a damaged payload can fail in many ways; name the file
        raise bad(f"its arrays cannot be read ({type(e).__name__}: {e})") from None
    if template is None:
        state = _rebuild(structure, leaves)
    else:
        wanted_leaves: List[np.ndarray] = []
        wanted = _describe(template, wanted_leaves)
        if _shape_of(structure) != _shape_of(wanted):
            raise CheckpointError(
                f"{path} does not hold a state like the one expected: {_first_difference(structure, wanted)}"
            )
        state = _nest.pack_as(template, leaves)
    return Checkpoint(state=state, round_num=int(round_num), extra=extra, path=Path(path))


def load_checkpoint(path: Union[str, os.PathLike], template: Any = None) -> Checkpoint:
    """Reads a checkpoint file, or the latest checkpoint of a directory.

    With ``template`` (a state of the same process, e.g. ``process.initialize()``)
    the leaves are put back into the template's containers (``ServerState``,
    ``ModelWeights``, ...) after checking that names, dtypes and shapes match;
    without, named structs come back as dicts and unnamed ones as lists.
    Raises CheckpointError naming the file when it is missing, truncated,
    damaged or holds a different structure.
    """
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise CheckpointError(f"{path} holds no checkpoint (no checkpoint-NNNNNNNN.fckpt file)")
        path = found
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read: {e.strerror or e}") from None
    return decode(data, path, template)


class CheckpointManager:
    """Saves every ``every`` rounds into ``directory`` and keeps the ``keep`` most recent.

    ``maybe_save(state, round_num, extra, final=...)`` saves when the round is
    a multiple of ``every`` (or ``final`` is true); ``restore(template)``
    returns the latest checkpoint, or None when there is none yet.
    """

    def __init__(self, directory: Union[str, os.PathLike], every: int = 5, keep: Optional[int] = 3):
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise CheckpointError(f"every must be a whole number >= 0 (0: only when asked), got {every!r}")
        self.directory = Path(directory)
        self.every = every
        self.keep = keep

    def should_save(self, round_num: int, final: bool = False) -> bool:
        return final or (self.every > 0 and round_num % self.every == 0)

    def maybe_save(self, state: Any, round_num: int, extra: Optional[Mapping[str, Any]] = None,
                   final: bool = False) -> Optional[Path]:
        if not self.should_save(round_num, final):
            return None
        return save_checkpoint(self.directory, state, round_num, extra, keep=self.keep)

    def latest(self) -> Optional[Path]:
        return latest_checkpoint(self.directory)

    def restore(self, template: Any = None) -> Optional[Checkpoint]:
        path = self.latest()
        return None if path is None else load_checkpoint(path, template)

    def __repr__(self) -> str:
        return f"CheckpointManager({str(self.directory)!r}, every={self.every}, keep={self.keep})"
