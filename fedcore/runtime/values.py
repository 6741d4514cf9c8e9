"""Values at the boundary between users and executors.

Executors see one canonical form of every value:
  * a tensor is a numpy array (0-d for scalars) or a Python ``str`` for strings;
  * a struct is a ``fedcore.Struct`` whose names are those of its type;
  * a sequence is a Python list of elements or a ``tf.data.Dataset``;
  * an all-equal federated value is its one member value, and a
    ``{T}@CLIENTS`` value is a list with one member value per client.

``to_internal`` checks and converts a user's argument to that form;
``to_python`` converts a result back into the declared containers.
``ArgumentError`` and ``infer_type`` are the front end's (``fedcore.compiler``),
re-exported here.
"""

from __future__ import annotations

import weakref
from typing import Any, List, Optional

import numpy as np

from fedcore.compiler.context import ArgumentError
from fedcore.compiler.tracing import infer_type  # noqa: F401  (the type of a Python value; lives in the front end)
from fedcore.structure import Struct, build_container, python_items
from fedcore.types import (
    CLIENTS,
    FederatedType,
    FunctionType,
    SequenceType,
    StructType,
    TensorType,
    Type,
    to_type,
)


def _is_dataset(value: Any) -> bool:
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, tf.data.Dataset)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _text(item: Any, t: TensorType, where: str, value: Any) -> str:
    """A string element as ``str``; ArgumentError for non-strings, bytes that are not UTF-8 and
    lone surrogates, which no TF string (UTF-8 bytes) can hold."""
    if isinstance(item, bytes):
        try:
            return item.decode()
        except UnicodeDecodeError as e:
            raise ArgumentError(f"{where}: expected {t}, got {_shown(value)}, bytes that are not UTF-8 ({e.reason})") from None
    if not isinstance(item, str):
        raise ArgumentError(
            f"{where}: expected {t}, got {_shown(value)}, which holds {_shown(item)} of Python type "
            f"{type(item).__name__}, not a string"
        )
    try:
        item.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ArgumentError(
            f"{where}: expected {t}, got {_shown(value)}, which is not valid Unicode ({e.reason} at "
            f"position {e.start}) and cannot be encoded as UTF-8"
        ) from None
    return item


def _range(dtype: np.dtype) -> str:
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return f"range [{info.min}, {info.max}]"
    return f"largest finite value {float(np.finfo(dtype).max):.8g}"


def _python_ints(source: np.ndarray, t: TensorType, where: str, value: Any) -> np.ndarray:
    """Python ints too large for any numpy integer (numpy keeps them as objects), converted exactly or refused."""
    target = np.dtype(t.np_dtype)
    items = source.reshape(-1).tolist()
    if target.kind in "iu":
        info = np.iinfo(target)
        bad = [v for v in items if not info.min <= v <= info.max]
        if bad:
            raise ArgumentError(f"{where}: expected {t}, got {_shown(value)}, which does not fit in {t.dtype} ({_range(target)})")
        return np.array(items, dtype=target).reshape(source.shape)
    if target.kind in "fc":
        try:
            floats = [float(v) for v in items]
        except OverflowError:
            floats = [np.inf]
        with np.errstate(over="ignore"):  # checked next
            converted = np.array(floats, dtype=target)
        if not np.isfinite(converted).all():
            raise ArgumentError(f"{where}: expected {t}, got {_shown(value)}, which does not fit in {t.dtype} ({_range(target)})")
        return converted.reshape(source.shape)
    raise ArgumentError(f"{where}: expected {t}, got {_shown(value)}")


def _tensor(value: Any, t: TensorType, where: str) -> Any:
    if t.dtype == "string":
        if isinstance(value, (str, bytes)):
            if t.shape not in ((), None):
                raise ArgumentError(f"{where}: expected {t}, got the string {value!r}")
            return _text(value, t, where, value)
        arr = np.asarray(value.numpy() if hasattr(value, "numpy") else value, dtype=object)
        if arr.ndim == 0:
            item = arr.item()
            if not isinstance(item, (str, bytes)):
                raise ArgumentError(f"{where}: expected {t}, got {value!r}")
            return _text(item, t, where, value)
        _check_shape(arr.shape, t, where, value)
        out = np.empty(arr.shape, dtype=object)
        for index, item in np.ndenumerate(arr):
            out[index] = _text(item, t, where, value)
        return out
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        value = value.numpy()
    if isinstance(value, (str, bytes)):
        raise ArgumentError(f"{where}: expected {t}, got the string {value!r}")
    try:
        source = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise ArgumentError(f"{where}: expected {t}, got {_shown(value)}, which is not a rectangular array") from None
    target = np.dtype(t.np_dtype)
    if source.dtype.kind == "O" and source.size and all(
        isinstance(v, int) and not isinstance(v, bool) for v in source.reshape(-1).tolist()
    ):
        source = _python_ints(source, t, where, value)
    if source.dtype.kind not in "biufc":
        raise ArgumentError(f"{where}: expected {t}, got {_shown(value)}")
    if source.dtype.kind == "b" and t.dtype != "bool":
        raise ArgumentError(f"{where}: expected {t}, got booleans {_shown(value)}")
    if t.dtype == "bool" and source.dtype.kind != "b":
        raise ArgumentError(f"{where}: expected {t}, got {_shown(value)}")
    if source.dtype.kind == "c" and target.kind != "c":
        # astype would silently drop the imaginary part.
        raise ArgumentError(f"{where}: expected {t}, got complex values {_shown(value)}")
    if source.dtype.kind == "f" and target.kind in "iu":
        _check_integral(source, t, target, where, value)
    with np.errstate(over="ignore", invalid="ignore"):  # each loss is checked below
        converted = source.astype(target)
    if target.kind in "fc" and (np.isfinite(source) & ~np.isfinite(converted)).any():
        raise ArgumentError(
            f"{where}: expected {t}, got {_shown(value)}, which does not fit in {t.dtype} ({_range(target)}) "
            "and would become inf"
        )
    if source.dtype.kind in "iu" and target.kind in "iu" and source.size and not (
        np.iinfo(target).min <= int(source.min()) and int(source.max()) <= np.iinfo(target).max
    ):
        raise ArgumentError(f"{where}: expected {t}, got {_shown(value)}, which does not fit in {t.dtype} ({_range(target)})")
    _check_shape(converted.shape, t, where, value)
    return converted


def _check_integral(source: np.ndarray, t: TensorType, target: np.dtype, where: str, value: Any) -> None:
    """Floating-point values for an integer type: each must be finite, in range and whole."""
    if not np.isfinite(source).all():
        bad = source[~np.isfinite(source)].reshape(-1)[0]
        raise ArgumentError(f"{where}: expected {t}, got {_shown(value)}, which is not finite ({bad}) and has no {t.dtype} value")
    bits = target.itemsize * 8
    low, high = (0.0, 2.0**bits) if target.kind == "u" else (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1))
    if ((source < low) | (source >= high)).any():
        raise ArgumentError(f"{where}: expected {t}, got {_shown(value)}, which does not fit in {t.dtype} ({_range(target)})")
    if not np.array_equal(np.trunc(source), source):
        raise ArgumentError(f"{where}: expected {t}, got {_shown(value)}, which has a fractional part")


def _check_shape(shape, t: TensorType, where: str, value: Any) -> None:
    if t.shape is None:
        return
    if len(shape) != len(t.shape) or any(d is not None and d != s for d, s in zip(t.shape, shape)):
        dims = ",".join(str(s) for s in shape)
        raise ArgumentError(f"{where}: expected {t}, got a value of shape [{dims}]")


_DATASET_CHECKS: dict = {}
# The element types each live dataset object was found to stand for (datasets are immutable), so that
# passing the same datasets again, round after round, skips even the spec's text.
_DATASETS_PASSED: "weakref.WeakKeyDictionary[Any, set]" = weakref.WeakKeyDictionary()


def _dataset_problem(spec_key: str, spec: Any, element_type: Type) -> Optional[str]:
    """Why a dataset with ``spec`` cannot stand for a sequence of ``element_type``, or None.

    Remembered by the spec's text (names, shapes, dtypes and container kinds),
    so that a cohort of datasets with one element structure is checked once.
    """
    key = (spec_key, element_type)
    if key not in _DATASET_CHECKS:
        try:
            given = to_type(spec)
        except TypeError as e:
            problem: Optional[str] = f"whose elements {e}"
        else:
            problem = None if element_type.is_assignable_from(given) else f"of {SequenceType(given)}"
        if len(_DATASET_CHECKS) > 512:
            _DATASET_CHECKS.clear()
        _DATASET_CHECKS[key] = problem
    return _DATASET_CHECKS[key]


def _passed(value: Any, element_type: Type) -> bool:
    """Whether ``value`` is a dataset already checked against sequences of ``element_type``."""
    try:
        passed = _DATASETS_PASSED.get(value)
    except TypeError:  # not weakly referable: not a dataset
        return False
    return passed is not None and element_type in passed


def to_internal(value: Any, t: Type, where: str = "argument") -> Any:
    """Checks ``value`` against ``t`` and converts it to the canonical form."""
    if isinstance(value, np.ma.MaskedArray):
        raise ArgumentError(
            f"{where}: expected {t}, got a masked array (numpy.ma), whose mask a fedcore value cannot represent; "
            "pass value.filled(fill_value), or only the unmasked values (value.compressed())"
        )
    match t:
        case TensorType():
            return _tensor(value, t, where)
        case StructType():
            if _is_dataset(value):
                raise ArgumentError(f"{where}: expected {t}, got a dataset")
            items = python_items(value)
            if items is None:
                raise ArgumentError(f"{where}: expected a struct of type {t}, got {value!r}")
            if len(items) != len(t):
                raise ArgumentError(f"{where}: expected {t} with {len(t)} elements, got {len(items)}: {value!r}")
            if isinstance(value, dict):
                missing = [n for n in t.names() if n is not None and n not in value]
                if missing:
                    raise ArgumentError(f"{where}: expected {t}, got a dict without {missing}")
                items = [(n, value[n]) if n is not None else item for n, item in zip(t.names(), items)]
            result = []
            for (name, element_type), (given_name, element) in zip(t.elements, items):
                if given_name is not None and name is not None and given_name != name:
                    raise ArgumentError(f"{where}: expected {t}, got element named {given_name!r} instead of {name!r}")
                label = name if name is not None else str(len(result))
                result.append((name, to_internal(element, element_type, f"{where}.{label}")))
            return Struct(result)
        case SequenceType(element=element_type):
            if _is_dataset(value):
                if _passed(value, element_type):
                    return value
                problem = _dataset_problem(repr(value.element_spec), value.element_spec, element_type)
                if problem is not None:
                    raise ArgumentError(f"{where}: expected a dataset of {t}, got a dataset {problem}")
                _DATASETS_PASSED.setdefault(value, set()).add(element_type)
                return value
            if isinstance(value, (list, tuple)):
                return [to_internal(v, element_type, f"{where}[{i}]") for i, v in enumerate(value)]
            raise ArgumentError(f"{where}: expected a sequence {t} (a list or a tf.data.Dataset), got {value!r}")
        case FederatedType(member=member, placement=placement, all_equal=all_equal):
            if placement is CLIENTS and not all_equal:
                if not isinstance(value, (list, tuple)) or (value and isinstance(value, tuple) and hasattr(value, "_fields")):
                    raise ArgumentError(f"{where}: expected {t}, a list with one value per client, got {value!r}")
                if isinstance(member, SequenceType) and all(_passed(v, member.element) for v in value):
                    return list(value)  # every client's dataset was checked for this type before
                return [to_internal(v, member, f"{where}[client {i}]") for i, v in enumerate(value)]
            return to_internal(value, member, where)
        case FunctionType():
            raise ArgumentError(f"{where}: passing functions of type {t} as arguments is not supported")
    raise ArgumentError(f"{where}: cannot pass a value for parameter type {t}")


def count_clients(value: Any, t: Optional[Type]) -> Optional[int]:
    """The number of clients implied by a canonical value, or None if it implies none.

    Raises ArgumentError if two client-placed values disagree.
    """
    counts: List[int] = []

    def visit(v, t):
        match t:
            case FederatedType(placement=placement, all_equal=False) if placement is CLIENTS:
                counts.append(len(v))
            case StructType():
                for element, element_type in zip(v, t):
                    visit(element, element_type)

    if t is not None:
        visit(value, t)
    if not counts:
        return None
    if len(set(counts)) > 1:
        raise ArgumentError(f"client-placed arguments disagree on the number of clients: {sorted(set(counts))}")
    return counts[0]


def to_python(value: Any, t: Type) -> Any:
    """Converts a canonical result to Python and numpy values in their declared containers."""
    match t:
        case TensorType(dtype="string"):
            if isinstance(value, bytes):
                return value.decode()
            if isinstance(value, np.ndarray) and value.ndim == 0:
                item = value.item()
                return item.decode() if isinstance(item, bytes) else item
            if isinstance(value, np.ndarray):
                return np.vectorize(lambda x: x.decode() if isinstance(x, bytes) else x, otypes=[object])(value)
            return value
        case TensorType():
            arr = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
            if arr.ndim == 0:
                return arr.astype(t.np_dtype)[()]
            return arr.astype(t.np_dtype, copy=False)
        case StructType():
            items = [(n, to_python(v, e)) for (n, e), v in zip(t.elements, value)]
            return build_container(t.container, items)
        case SequenceType(element=e):
            if _is_dataset(value):
                from fedcore.runtime.datasets import dataset_elements

                return [to_python(v, e) for v in dataset_elements(value, e)]
            return [to_python(v, e) for v in value]
        case FederatedType(member=member, placement=placement, all_equal=all_equal):
            if placement is CLIENTS and not all_equal:
                return [to_python(v, member) for v in value]
            return to_python(value, member)
    return value
