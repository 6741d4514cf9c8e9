"""``to_type(spec)``: builds a type from the many ways users describe one."""

from __future__ import annotations

import collections
from typing import Any

import attrs
import numpy as np

from fedcore.structure import Struct
from fedcore.types.core import (
    Placement,
    PlacementType,
    SequenceType,
    StructType,
    TensorType,
    Type,
    canonical_dtype,
)


def _is_namedtuple_class(cls: type) -> bool:
    return issubclass(cls, tuple) and hasattr(cls, "_fields")


def _is_dtype_like(spec: Any) -> bool:
    if isinstance(spec, np.dtype):
        return True
    if isinstance(spec, type) and issubclass(spec, np.generic):
        return True
    # Attributes looked up on the class: tf.resource.as_numpy_dtype raises KeyError.
    cls = type(spec)
    return hasattr(cls, "as_numpy_dtype") and hasattr(cls, "name") and not hasattr(spec, "shape")


def to_type(spec: Any) -> Type:
    """Converts ``spec`` to a fedcore type.

    Accepts types, type strings, numpy and TF dtypes, ``(dtype, shape)`` pairs,
    ``tf.TensorSpec``, ``tf.data.DatasetSpec`` and nested element specs, and
    lists, tuples, dicts, OrderedDicts, namedtuples, attrs instances and
    ``fedcore.Struct`` values of any of these.  Containers are remembered on
    the resulting StructType.

    As in TFF, a pair ``(name, spec)`` whose first element is a string is a
    named element: ``('a', tf.int32)`` is ``<a=int32>``, and a list or tuple
    holding such pairs is a struct with those names,
    ``[('a', tf.int32), tf.bool]`` is ``<a=int32,bool>`` (with no Python
    container: its values come back as ``fedcore.Struct``).  A string that is
    itself a type (``'int32'``, ``'T'``, ``'placement'``) is read as that
    type, so ``('int32', [2])`` stays ``int32[2]`` and ``('int32', 'bool')``
    stays ``<int32,bool>``; name such an element with
    ``StructType([('int32', ...)])``.
    """
    try:
        return _to_type(spec)
    except RecursionError:
        # Raised at the innermost level; the levels above let the ValueError through.
        raise ValueError(
            "cannot convert a type spec nested this deeply: converting it exceeds Python's recursion limit"
        ) from None


def _to_type(spec: Any) -> Type:
    if isinstance(spec, Type):
        return spec
    if spec is None:
        raise TypeError("cannot convert None to a type; use a type, a dtype or a type string")
    if isinstance(spec, str):
        from fedcore.types.parser import parse

        return parse(spec)
    if isinstance(spec, Placement):
        return PlacementType()
    if _is_dtype_like(spec):
        return TensorType(canonical_dtype(spec))
    if isinstance(spec, type) and spec in (bool, int, float, str):  # not ``==`` on arrays
        return TensorType({bool: "bool", int: "int32", float: "float32", str: "string"}[spec])
    # tf.TensorSpec and friends, recognized by their attributes.
    type_name = type(spec).__name__
    if type_name in ("TensorSpec", "BoundedTensorSpec") and hasattr(spec, "dtype"):
        return TensorType(spec.dtype, spec.shape)
    if type_name in ("RaggedTensorSpec", "SparseTensorSpec"):
        kind = "ragged" if type_name.startswith("Ragged") else "sparse"
        raise TypeError(
            f"cannot convert {spec!r} to a fedcore type: {kind} tensors are not supported, since fedcore tensors are dense; "
            f"make the data dense first (for a dataset, map .to_tensor() over its elements, or pad them)"
        )
    if type_name == "DatasetSpec" and hasattr(spec, "element_spec"):
        return SequenceType(to_type(spec.element_spec))
    if type_name in ("DatasetV2", "_DatasetV2", "Dataset") or hasattr(spec, "element_spec") and hasattr(
        spec, "prefetch"
    ):
        return SequenceType(to_type(spec.element_spec))
    if attrs.has(type(spec)):
        elements = [(f.name, to_type(getattr(spec, f.name))) for f in attrs.fields(type(spec))]
        return StructType(elements, container=type(spec))
    if isinstance(spec, tuple) and _is_namedtuple_class(type(spec)):
        return StructType([(n, to_type(v)) for n, v in zip(spec._fields, spec)], container=type(spec))
    if isinstance(spec, tuple) and is_tensor_pair(spec):
        return TensorType(spec[0], spec[1])
    if isinstance(spec, Struct):
        return StructType([(n, to_type(v)) for n, v in spec.items()], container=Struct)
    pair = named_element(spec)
    if pair is not None:
        return StructType([_convert_named(spec, *pair)])
    if isinstance(spec, (list, tuple)):
        pairs = [named_element(v) for v in spec]
        if any(p is not None for p in pairs):
            return StructType([(None, to_type(v)) if p is None else _convert_named(v, *p) for v, p in zip(spec, pairs)])
        return StructType([(None, to_type(v)) for v in spec], container=type(spec))
    if isinstance(spec, dict):
        container = collections.OrderedDict if isinstance(spec, collections.OrderedDict) else dict
        for key in spec:
            if not isinstance(key, str):
                raise TypeError(f"dict keys of a type spec must be strings, got {key!r} in {spec!r}")
        return StructType([(k, to_type(v)) for k, v in spec.items()], container=container)
    raise TypeError(
        f"cannot convert {spec!r} (of Python type {type(spec).__name__}) to a fedcore type; expected a "
        "type, a type string, a dtype, a (dtype, shape) pair, a tf.TensorSpec, a tf.data.DatasetSpec, "
        "or a list, tuple, dict, namedtuple or attrs instance of these"
    )


def is_tensor_pair(spec: tuple) -> bool:
    """Whether a tuple is a ``(dtype, shape)`` pair such as ``(tf.float32, [None, 784])``."""
    return len(spec) == 2 and not _is_namedtuple_class(type(spec)) and _is_dtype_or_name(spec[0]) and _is_shape(spec[1])


def _is_type_text(text: str) -> bool:
    from fedcore.types.parser import parse

    try:
        parse(text)
    except (TypeError, ValueError):
        return False
    return True


def named_element(spec: Any):
    """``(name, spec)`` when ``spec`` is a named element ``('a', tf.int32)``, else None.

    That is a plain 2-tuple whose first element is a string that is not itself
    a type's notation (and is not a ``(dtype, shape)`` pair).
    """
    if not isinstance(spec, tuple) or len(spec) != 2 or _is_namedtuple_class(type(spec)):
        return None
    name, value = spec
    if not isinstance(name, str) or _is_type_text(name):
        return None
    return name, value


def _convert_named(spec: tuple, name: str, value: Any):
    """The element ``(name, to_type(value))``; when that fails and ``value`` looks like a shape,
    the error also says why ``spec`` is not a ``(dtype, shape)`` pair."""
    try:
        return name, to_type(value)
    except (TypeError, ValueError) as e:
        if not _is_shape(value):
            raise
        try:
            canonical_dtype(name)
            why = f"{name!r} is not a dtype"
        except TypeError as dtype_error:
            why = str(dtype_error)
        raise TypeError(
            f"cannot convert {spec!r}: as a (dtype, shape) pair, {why}; as an element named {name!r}, {e}"
        ) from None


def _is_dtype_or_name(value: Any) -> bool:
    if isinstance(value, str):
        try:
            canonical_dtype(value)
            return True
        except TypeError:
            return False
    return _is_dtype_like(value)


def _is_shape(value: Any) -> bool:
    if value is None:
        return True
    if hasattr(value, "as_list") and hasattr(value, "rank"):
        return True
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return True
    if isinstance(value, (list, tuple)):
        return all(d is None or (isinstance(d, (int, np.integer)) and not isinstance(d, bool)) for d in value)
    return False
