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
is reported as such, with its path, instead of loading wrong numbers.  A file
with a valid hash is still checked field by field: the header against
``HEADER_SCHEMA`` (a JSON Schema), every leaf of the structure against the
array stored for it (dtype and shape), and ``extra`` against the caller's
schema when one is given (``load_checkpoint(..., extra_schema=...)``).  What
does not match is a ``CheckpointError`` naming the file and the field.

Writes are atomic: the bytes go to a temporary file in the same directory,
which is flushed and fsync'ed, then renamed over the final name with
``os.replace`` and the directory is fsync'ed.  A process killed at any point
leaves either the previous checkpoints or the new one complete, never a
partial file under a checkpoint's name.  Temporary files left by a killed
writer start with ``.tmp-`` and are ignored (and removed by the next save).
A write that fails (a full disk, say) removes its temporary file and raises
a ``CheckpointError``; the previous checkpoints are untouched.
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
import jsonschema
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
    "schema_error",
]

MAGIC = b"FCCKPT01"
FORMAT = "fedcore-checkpoint"
VERSION = 1
_NAME = re.compile(r"^checkpoint-(\d{8,})\.fckpt$")
_TMP_PREFIX = ".tmp-checkpoint-"
_HASH_LEN = 64
_LEN = struct.Struct("<Q")
# Containers nested deeper than this are refused before anything recurses over them.
MAX_DEPTH = 64


def _is_integer(_checker: Any, value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(_checker: Any, value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


# JSON Schema (draft 2020-12) with a strict "integer" (2.0 and 2.75 are not integers) and a
# "finite" type for numbers that must not be NaN or infinite.
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine_many(
        {"integer": _is_integer, "finite": _is_finite_number}
    ),
)

HEADER_SCHEMA: Dict[str, Any] = {
    "type": "object",
    "required": ["format", "version", "round", "structure", "num_leaves", "extra"],
    "additionalProperties": False,
    "properties": {
        "format": {"const": FORMAT},
        "version": {"const": VERSION},
        "round": {"type": "integer", "minimum": 0},
        "num_leaves": {"type": "integer", "minimum": 0},
        "extra": {"type": "object"},
        "structure": {"$ref": "#/$defs/node"},
    },
    "$defs": {
        "node": {
            "type": "object",
            "if": {"required": ["leaf"]},
            "then": {"$ref": "#/$defs/leaf"},
            "else": {"$ref": "#/$defs/container"},
        },
        "leaf": {
            "type": "object",
            "required": ["leaf", "dtype", "shape"],
            "additionalProperties": False,
            "properties": {
                "leaf": {"type": "integer", "minimum": 0},
                "dtype": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            },
        },
        "container": {
            "type": "object",
            "required": ["container", "names", "items"],
            "additionalProperties": False,
            "properties": {
                "container": {"type": "string"},
                "names": {"type": "array", "items": {"type": ["string", "null"]}},
                "items": {"type": "array", "items": {"$ref": "#/$defs/node"}},
            },
        },
    },
}


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read: the message names the file and what is wrong with it."""


def _field(path: Sequence[Any], root: str) -> str:
    """``['structure', 'items', 0, 'dtype']`` -> ``structure.items[0].dtype``."""
    text = root
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "the header"


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def schema_error(instance: Any, schema: Mapping[str, Any], root: str = "") -> Optional[str]:
    """The first way ``instance`` breaks ``schema`` as "field: what is wrong", or None when it is valid.

    Integers are strict (``2.0`` is not one) and ``{"type": "finite"}`` is a
    number that is neither NaN nor infinite.  ``root`` prefixes field names.
    """
    if _depth(instance) > MAX_DEPTH:
        return f"{root or 'the data'} is nested more than {MAX_DEPTH} levels deep"
    error = jsonschema.exceptions.best_match(_Validator(schema).iter_errors(instance))
    if error is None:
        return None
    return f"{_field(error.absolute_path, root)}: {_short(error.message)}"


def _depth(value: Any) -> int:
    """How deeply lists and dicts nest in ``value`` (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


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
    if _depth(header) > MAX_DEPTH:
        raise CheckpointError(
            f"cannot checkpoint a state or extra metadata nested more than {MAX_DEPTH} levels deep (with the header)"
        )
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
    final = directory / checkpoint_name(int(round_num))
    tmp = directory / f"{_TMP_PREFIX}{int(round_num):08d}-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(directory)
        write_atomically(final, data, tmp)
    except OSError as e:
        previous = latest_checkpoint(directory)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint was written"
        raise CheckpointError(f"cannot write the checkpoint {final}: {e.strerror or e}; {kept}") from e
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


def _leaf_specs(structure: Any, num_leaves: int, bad) -> List[Any]:
    """Per leaf index, (header field, dtype, shape) from a schema-valid structure; checks names and indices."""
    specs: List[Any] = [None] * num_leaves
    stack = [(structure, "structure", "state")]
    while stack:
        node, where, name = stack.pop()
        if "leaf" in node:
            try:
                dtype = np.dtype(node["dtype"])
            except (TypeError, ValueError):
                raise bad(f"header field {where}.dtype: {_short(repr(node['dtype']))} is not a numpy dtype") from None
            if dtype.kind not in "biufc":
                raise bad(f"header field {where}.dtype: {dtype} is not a number type")
            index = node["leaf"]
            if index >= num_leaves:
                raise bad(f"header field {where}.leaf: leaf {index}, but num_leaves is {num_leaves}")
            if specs[index] is not None:
                raise bad(f"header field {where}.leaf: leaf {index} appears twice (also at {specs[index][0]})")
            specs[index] = (f"{where} ({name})", dtype, tuple(node["shape"]))
            continue
        if len(node["names"]) != len(node["items"]):
            raise bad(f"header field {where}: {len(node['names'])} names for {len(node['items'])} items")
        children = [
            (item, f"{where}.items[{i}]", f"{name}.{n}" if n is not None else f"{name}[{i}]")
            for i, (n, item) in enumerate(zip(node["names"], node["items"]))
        ]
        stack.extend(reversed(children))  # depth first, in order: the first bad leaf is reported
    missing = [i for i, spec in enumerate(specs) if spec is None]
    if missing:
        raise bad(f"header field num_leaves: {num_leaves} leaves, but the structure has no leaf {missing[0]}")
    return specs


def decode(data: bytes, path: Union[str, os.PathLike] = "<bytes>", template: Any = None,
           extra_schema: Optional[Mapping[str, Any]] = None) -> Checkpoint:
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
    if _LEN.size + header_len > len(body):
        raise bad(f"its header length {header_len} runs past the end of the file")
    try:
        header = json.loads(body[_LEN.size : _LEN.size + header_len].decode("utf-8"))
    except RecursionError:
        raise bad("its header is nested too deeply to be read") from None
    except ValueError as e:
        raise bad(f"its header is not JSON ({type(e).__name__}: {e})") from None
    if isinstance(header, dict) and (header.get("format"), header.get("version")) != (FORMAT, VERSION) and (
        "format" in header or "version" in header
    ):
        raise bad(f"format {header.get('format')!r} version {header.get('version')!r}, expected {FORMAT!r} {VERSION}")
    problem = schema_error(header, HEADER_SCHEMA)
    if problem is not None:
        raise bad(f"header field {problem}")
    structure, round_num, num_leaves, extra = header["structure"], header["round"], header["num_leaves"], header["extra"]
    leaf_specs = _leaf_specs(structure, num_leaves, bad)
    try:
        with np.load(io.BytesIO(body[_LEN.size + header_len :]), allow_pickle=False) as arrays:
            names = sorted(arrays.files)
            expected = sorted(f"leaf{i}" for i in range(num_leaves))
            if names != expected:
                raise bad(f"its arrays are {names}, but its header describes {expected}")
            leaves = [arrays[f"leaf{i}"] for i in range(num_leaves)]
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged payload can fail in many ways; name the file
        raise bad(f"its arrays cannot be read ({type(e).__name__}: {e})") from None
    for i, (where, dtype, shape) in enumerate(leaf_specs):
        if leaves[i].dtype != dtype or leaves[i].shape != shape:
            raise bad(
                f"header field {where} says {dtype.name}{list(shape)}, but the array stored for it (leaf{i}) is "
                f"{leaves[i].dtype.name}{list(leaves[i].shape)}"
            )
    if extra_schema is not None:
        problem = schema_error(extra, extra_schema, root="extra")
        if problem is not None:
            raise CheckpointError(f"{path} does not hold what this program saves: its metadata field {problem}")
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


def load_checkpoint(path: Union[str, os.PathLike], template: Any = None,
                    extra_schema: Optional[Mapping[str, Any]] = None) -> Checkpoint:
    """Reads a checkpoint file, or the latest checkpoint of a directory.

    With ``template`` (a state of the same process, e.g. ``process.initialize()``)
    the leaves are put back into the template's containers (``ServerState``,
    ``ModelWeights``, ...) after checking that names, dtypes and shapes match;
    without, named structs come back as dicts and unnamed ones as lists.
    ``extra_schema``: a JSON Schema that the ``extra`` metadata must satisfy
    (see :func:`schema_error` for its two strict types).
    Raises CheckpointError naming the file (and the field) when it is missing,
    truncated, damaged, inconsistent or holds a different structure.
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
    return decode(data, path, template, extra_schema)


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
