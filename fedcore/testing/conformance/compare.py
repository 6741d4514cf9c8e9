"""Comparing results: ``assert_values_equal``."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np
import tensorflow as tf

from fedcore.structure import Struct, is_namedtuple
from fedcore.testing.conformance.case import DEFAULT_ATOL, DEFAULT_RTOL


def _fail(path: str, message: str):
    raise AssertionError(f"{path}: {message}")


def _type_name(value: Any) -> str:
    return type(value).__qualname__


def _same_type(actual: Any, expected: Any, path: str) -> None:
    if type(actual) is not type(expected):
        _fail(path, f"expected a {_type_name(expected)}, got a {_type_name(actual)}: {actual!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (np.ndarray, np.generic, int, float, complex)) and not isinstance(value, (str, bytes))


def _is_dataset(value: Any) -> bool:
    return isinstance(value, tf.data.Dataset)


def assert_values_equal(
    actual: Any,
    expected: Any,
    *,
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    strict: bool = True,
    path: str = "result",
) -> None:
    """Raises AssertionError, naming the first differing element, unless equal.

    Containers (fedcore.Struct, attrs classes, namedtuples, dicts, lists,
    tuples) must have the same type, names or keys in the same order, and
    equal elements.  Floating-point tensors compare within ``rtol``/``atol``
    with NaN equal to NaN and infinities equal when of the same sign; other
    tensors and strings compare exactly.  ``strict`` also requires numpy
    leaves of the same class (scalar or array) and dtype; without it a Python
    number matches a numpy value of any dtype.
    """
    _compare(actual, expected, rtol, atol, strict, path)


def _compare(a: Any, e: Any, rtol: float, atol: float, strict: bool, path: str) -> None:
    if _is_dataset(a) or _is_dataset(e):
        _fail(path, "datasets cannot be compared; compare lists of their elements")
    if isinstance(e, Struct):
        if not isinstance(a, Struct):
            _fail(path, f"expected a fedcore.Struct, got a {_type_name(a)}: {a!r}")
        if a.names() != e.names():
            _fail(path, f"expected a Struct with names {list(e.names())}, got names {list(a.names())}")
        for i, (n, av, ev) in enumerate(zip(e.names(), a, e)):
            _compare(av, ev, rtol, atol, strict, f"{path}.{n}" if n else f"{path}[{i}]")
        return
    if attrs.has(type(e)):
        _same_type(a, e, path)
        for f in attrs.fields(type(e)):
            _compare(getattr(a, f.name), getattr(e, f.name), rtol, atol, strict, f"{path}.{f.name}")
        return
    if is_namedtuple(e):
        _same_type(a, e, path)
        for n in e._fields:
            _compare(getattr(a, n), getattr(e, n), rtol, atol, strict, f"{path}.{n}")
        return
    if isinstance(e, dict):
        _same_type(a, e, path)
        if list(a.keys()) != list(e.keys()):
            _fail(path, f"expected keys {list(e.keys())}, got keys {list(a.keys())}")
        for k in e:
            _compare(a[k], e[k], rtol, atol, strict, f"{path}[{k!r}]")
        return
    if isinstance(e, (list, tuple)):
        _same_type(a, e, path)
        if len(a) != len(e):
            _fail(path, f"expected {len(e)} elements, got {len(a)}: {a!r}")
        for i, (av, ev) in enumerate(zip(a, e)):
            _compare(av, ev, rtol, atol, strict, f"{path}[{i}]")
        return
    if isinstance(e, (str, bytes)):
        if (strict and type(a) is not type(e)) or not isinstance(a, (str, bytes)) or a != e:
            _fail(path, f"expected {e!r}, got {a!r}")
        return
    if e is None:
        if a is not None:
            _fail(path, f"expected None, got {a!r}")
        return
    if _is_number(e):
        _compare_tensors(a, e, rtol, atol, strict, path)
        return
    if (strict and type(a) is not type(e)) or a != e:
        _fail(path, f"expected {e!r}, got {a!r}")


def _compare_tensors(a: Any, e: Any, rtol: float, atol: float, strict: bool, path: str) -> None:
    if not _is_number(a):
        _fail(path, f"expected a tensor {e!r}, got a {_type_name(a)}: {a!r}")
    an, en = np.asarray(a), np.asarray(e)
    if strict:
        if isinstance(a, np.ndarray) != isinstance(e, np.ndarray) or not isinstance(a, (np.ndarray, np.generic)):
            _fail(path, f"expected a {_type_name(e)}, got a {_type_name(a)}: {a!r}")
        if an.dtype != en.dtype:
            _fail(path, f"expected dtype {en.dtype}, got dtype {an.dtype}: {a!r}")
    if an.shape != en.shape:
        _fail(path, f"expected shape {en.shape}, got shape {an.shape}: {a!r}")
    if an.dtype.kind == "O" or en.dtype.kind == "O":
        equal = bool(np.array_equal(an, en))
    elif an.dtype.kind in "fc" or en.dtype.kind in "fc":
        equal = bool(np.all(np.isclose(an, en, rtol=rtol, atol=atol, equal_nan=True)))
    else:
        equal = bool(np.array_equal(an, en))
    if not equal:
        _fail(path, f"expected {e!r}, got {a!r}")
