"""Proxy values used while tracing a federated computation, and conversion of
Python values into IR nodes."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from fedcore.compiler import building_blocks as bb
from fedcore.compiler import context
from fedcore.structure import Struct as StructValue, python_items
from fedcore.types import (
    CLIENTS,
    SERVER,
    FederatedType,
    FunctionType,
    Placement,
    SequenceType,
    StructType,
    TensorType,
    Type,
)


class Value:
    """A traced value: wraps an IR node, supports ``v.name``, ``v[i]`` and calls."""

    __slots__ = ("_node",)

    def __init__(self, node: bb.BuildingBlock):
        object.__setattr__(self, "_node", node)

    @property
    def type_signature(self) -> Type:
        return self._node.type_signature

    def __repr__(self) -> str:
        return f"Value({bb.to_string(self._node)}: {self.type_signature})"

    def __str__(self) -> str:
        return bb.to_string(self._node)

    def __setattr__(self, name, value):
        raise context.type_error(f"cannot assign attribute {name!r} of a traced value of type {self.type_signature}")

    def __bool__(self):
        raise context.type_error(
            f"a traced value of type {self.type_signature} has no truth value while tracing; "
            "Python control flow on federated values is not supported, use tf_computation for TF logic"
        )

    def __iter__(self):
        t = self.type_signature
        if isinstance(t, StructType):
            return iter([self[i] for i in range(len(t))])
        if isinstance(t, FederatedType) and isinstance(t.member, StructType):
            return iter([self[i] for i in range(len(t.member))])
        raise context.type_error(f"cannot iterate over a traced value of type {t}; only structs can be unpacked")

    def __len__(self):
        t = self.type_signature
        if isinstance(t, StructType):
            return len(t)
        if isinstance(t, FederatedType) and isinstance(t.member, StructType):
            return len(t.member)
        raise context.type_error(f"a traced value of type {t} has no length; only structs do")

    def __getattr__(self, name: str) -> "Value":
        if name.startswith("_"):
            raise AttributeError(name)
        return self._select(name)

    def __getitem__(self, key) -> "Value":
        if isinstance(key, slice):
            t = self.type_signature
            if not isinstance(t, StructType):
                raise context.type_error(f"cannot slice a traced value of type {t}; only structs can be sliced")
            indices = range(len(t))[key]
            return Value(bb.Struct([(t.elements[i][0], self._select(i)._node) for i in indices]))
        if not isinstance(key, (int, str, np.integer)) or isinstance(key, bool):
            raise context.type_error(f"a struct index must be an int or a name, got {key!r}")
        return self._select(int(key) if isinstance(key, np.integer) else key)

    def _select(self, key) -> "Value":
        t = self.type_signature
        if isinstance(t, FederatedType) and isinstance(t.member, StructType):
            return _federated_select(self, key)
        if not isinstance(t, StructType):
            raise context.type_error(f"cannot select {key!r} from a traced value of type {t}, which is not a struct")
        index = _resolve_index(t, key)
        name = t.elements[index][0]
        return Value(bb.Selection(self._node, index, name))

    def __call__(self, *args, **kwargs) -> "Value":
        t = self.type_signature
        if not isinstance(t, FunctionType):
            raise context.type_error(f"cannot call a traced value of type {t}, which is not a function")
        from fedcore.compiler.computation import call_traced

        return call_traced(self._node, "function value", t, args, kwargs, None)

    def _unsupported(self, *_):
        raise context.type_error(
            f"arithmetic on a traced value of type {self.type_signature} is not supported in a "
            "federated_computation; put the math in a tf_computation and apply it with federated_map"
        )

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = _unsupported
    __truediv__ = __rtruediv__ = __neg__ = __lt__ = __le__ = __gt__ = __ge__ = _unsupported
    __hash__ = object.__hash__


def _resolve_index(t: StructType, key) -> int:
    if isinstance(key, str):
        if not t.has_name(key):
            names = [n for n in t.names() if n is not None]
            raise context.type_error(f"a value of type {t} has no element named {key!r}; its names are {names}")
        return t.index_of(key)
    if not -len(t) <= key < len(t):
        raise context.type_error(f"index {key} is out of range for a value of type {t} with {len(t)} elements")
    return key % len(t)


def _federated_select(value: Value, key) -> Value:
    """``v.name`` on a federated struct: a federated map/apply of the selection."""
    t = value.type_signature
    index = _resolve_index(t.member, key)
    name = t.member.elements[index][0]
    selector = bb.Lambda("s", t.member, bb.Selection(bb.Reference("s", t.member), index, name))
    from fedcore.compiler.federated_api import map_uri, call_intrinsic

    return call_intrinsic(map_uri(t), bb.Struct([(None, selector), (None, value._node)]))


def literal(value: Any, dtype: Optional[str] = None) -> bb.Literal:
    if isinstance(value, (str, bytes)):
        return bb.Literal(value.decode() if isinstance(value, bytes) else value, TensorType("string"))
    if isinstance(value, bool):
        arr = np.asarray(value)
    elif isinstance(value, int) and dtype is None:
        arr = np.asarray(value, np.int32)
    elif isinstance(value, float) and not isinstance(value, np.generic) and dtype is None:
        # Python floats are float32, as in TF; np.float64 (a float subclass) keeps its dtype.
        arr = np.asarray(value, np.float32)
    else:
        arr = np.asarray(value) if dtype is None else np.asarray(value, dtype)
    if arr.dtype.kind in ("U", "S", "O"):
        return bb.Literal(arr.astype(object), TensorType("string", arr.shape))
    return bb.Literal(arr, TensorType(arr.dtype, arr.shape))


def to_node(value: Any, what: str = "value") -> bb.BuildingBlock:
    """Converts a traced value, computation, placement or Python constant to an IR node."""
    if isinstance(value, Value):
        return value._node
    if isinstance(value, bb.BuildingBlock):
        return value
    ir = getattr(value, "_fedcore_ir", None)
    if ir is not None:
        return ir()
    if isinstance(value, Placement):
        return bb.Placement(value)
    if isinstance(value, (str, bytes, bool, int, float, np.ndarray, np.generic)):
        return literal(value)
    if hasattr(value, "numpy") and hasattr(value, "dtype"):  # an eager tf.Tensor
        return literal(value.numpy())
    items = python_items(value)
    if items is not None:
        container = None if isinstance(value, StructValue) else type(value)
        return bb.Struct([(n, to_node(v, what)) for n, v in items], container=container)
    if callable(value):
        raise context.type_error(
            f"cannot use the Python function {getattr(value, '__name__', value)!r} as a {what} here; "
            "decorate it with tf_computation or federated_computation"
        )
    raise context.type_error(f"cannot use {value!r} of Python type {type(value).__name__} as a {what} in a federated computation")


__all__ = ["Value", "to_node", "literal", "SERVER", "CLIENTS", "SequenceType"]
