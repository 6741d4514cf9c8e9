"""Proxy values used while tracing a federated computation, conversion of
Python values into IR nodes and types, and the arrangement of a call's
Python arguments for a computation's one parameter."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import numpy as np

from fedcore.compiler import building_blocks as bb
from fedcore.compiler import context
from fedcore.compiler.intrinsics import lookup
from fedcore.structure import Struct as StructValue, nests_deeper_than, python_items
from fedcore.types import (
    CLIENTS,
    MAX_DEPTH,
    SERVER,
    FederatedType,
    FunctionType,
    Placement,
    SequenceType,
    StructType,
    TensorType,
    Type,
    to_type,
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
    return call_intrinsic(map_uri(t), bb.Struct([(None, selector), (None, value._node)]))


literal = bb.literal  # a Python constant as a Literal node (defined with the IR)


def _literal(value: Any, what: str) -> bb.Literal:
    try:
        return literal(value)
    except ValueError as e:
        location = context.user_location()
        raise context.ArgumentError(f"{what}: {e}" + (f"\n  at {location}" if location else "")) from None


def to_node(value: Any, what: str = "value", _depth_checked: bool = False) -> bb.BuildingBlock:
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
        return _literal(value, what)
    if hasattr(value, "numpy") and hasattr(value, "dtype"):  # an eager tf.Tensor
        return _literal(value.numpy(), what)
    items = python_items(value)
    if items is not None:
        if not _depth_checked and nests_deeper_than(value, MAX_DEPTH):
            raise context.type_error(
                f"cannot use a {what} that nests more than MAX_DEPTH={MAX_DEPTH} levels deep "
                "(fedcore.types.MAX_DEPTH), the deepest a fedcore type may be"
            )
        container = None if isinstance(value, StructValue) else type(value)
        return bb.Struct([(n, to_node(v, what, _depth_checked=True)) for n, v in items], container=container)
    if callable(value):
        raise context.type_error(
            f"cannot use the Python function {getattr(value, '__name__', value)!r} as a {what} here; "
            "decorate it with tf_computation or federated_computation"
        )
    raise context.type_error(f"cannot use {value!r} of Python type {type(value).__name__} as a {what} in a federated computation")


# --------------------------------------------------------------------------
# Intrinsic calls.


def require_tracing(name: str) -> context.TracingContext:
    """The current tracing context; RuntimeError when no federated computation is being traced.

    Called before any argument is checked, so that an intrinsic used outside a
    federated computation says so instead of complaining about its arguments.
    """
    ctx = context.current_tracing()
    if ctx is None:
        raise RuntimeError(
            f"{name} can only be used while tracing a federated_computation; "
            "call it from inside a function decorated with @fedcore.federated_computation"
        )
    return ctx


def call_intrinsic(uri: str, argument: Optional[bb.BuildingBlock], public_name: Optional[str] = None) -> Value:
    """Appends a call of intrinsic ``uri``, instantiated at the argument's type, to the current trace."""
    name = public_name or uri
    ctx = require_tracing(name)
    location = context.user_location()
    argument_type = None if argument is None else argument.type_signature
    try:
        fn_type = lookup(uri).instantiate(argument_type)
    except TypeError as e:
        message = str(e)
        if public_name and public_name != uri:
            message = f"{public_name}: {message}"
        raise context.type_error(message, location) from None
    node = bb.Call(bb.Intrinsic(uri, fn_type), argument, source=location)
    return Value(ctx.bind(node))


def map_uri(t: Type) -> str:
    """The map intrinsic for a value of type ``t``: federated_map, federated_apply or the all-equal map."""
    if isinstance(t, FederatedType):
        if t.placement is SERVER:
            return "federated_apply"
        return "federated_map_all_equal" if t.all_equal else "federated_map"
    return "federated_map"


# --------------------------------------------------------------------------
# Calls of computations: arguments.


def call_traced(fn_node, name, fn_type: FunctionType, args, kwargs, parameter_names) -> Value:
    """Appends a call of a computation to the current trace, checking the argument type."""
    ctx = context.current_tracing()
    location = context.user_location()
    argument = pack_arguments_as_node(name, fn_type, args, kwargs, parameter_names)
    if ctx is not None:
        outside = sorted({ref.name for ref, bound in bb.references_out_of_scope(fn_node, ctx.visible) if bound is None})
        if outside:
            raise context.captured_values_error(name, outside, ctx.name, location)
    if fn_type.parameter is not None and not fn_type.parameter.is_assignable_from(argument.type_signature):
        raise context.type_error(
            f"{name} expects an argument of type {fn_type.parameter}, got {argument.type_signature}", location
        )
    call = bb.Call(fn_node, argument, source=location)
    return Value(ctx.bind(call))


def arrange_arguments(name, parameter: Optional[Type], args, kwargs, parameter_names, error=context.type_error):
    """Arranges a call's Python arguments for a computation's one parameter.

    Returns ``(None, False)`` for no parameter, ``(argument, False)`` when the
    single argument is the whole parameter, and ``(Struct, True)`` when several
    arguments (or keywords) fill the elements of a struct parameter.  Shared by
    tracing, execution and calls from inside TF code; ``error`` makes the
    exception for a wrong number of arguments.
    """
    if parameter is None:
        if args or kwargs:
            raise error(f"{name} takes no arguments, got {len(args) + len(kwargs)}")
        return None, False
    if not args and not kwargs:
        raise error(f"{name} expects an argument of type {parameter}, got none")
    if len(args) == 1 and not kwargs and parameter_names is None:
        return args[0], False
    if not isinstance(parameter, StructType):
        if kwargs:
            raise error(
                f"{name} takes one positional argument of type {parameter}, got keyword arguments {sorted(kwargs)}"
            )
        raise error(f"{name} expects one argument of type {parameter}, got {len(args) + len(kwargs)}")
    return StructValue(_match_arguments(name, parameter, args, kwargs)), True


def pack_arguments_as_node(name, fn_type: FunctionType, args, kwargs, parameter_names):
    value, packed = arrange_arguments(name, fn_type.parameter, args, kwargs, parameter_names)
    if value is None and not packed:
        return None
    if packed:
        return bb.Struct([(n, to_node(v, f"argument of {name}")) for n, v in value.items()])
    return to_node(value, f"argument of {name}")


def _match_arguments(name: str, parameter: StructType, args, kwargs) -> List[Tuple[Optional[str], Any]]:
    """Maps positional and keyword arguments onto the elements of a struct parameter."""
    if len(args) + len(kwargs) != len(parameter):
        raise context.type_error(
            f"{name} expects {len(parameter)} arguments for its parameter of type {parameter}, "
            f"got {len(args) + len(kwargs)}"
        )
    unknown = set(kwargs) - set(parameter.names())
    if unknown:
        raise context.type_error(f"{name} got unexpected keyword arguments {sorted(unknown)}; parameter type is {parameter}")
    items: List[Tuple[Optional[str], Any]] = []
    for i, (n, _) in enumerate(parameter.elements):
        if i < len(args):
            if n is not None and n in kwargs:
                raise context.type_error(f"{name} got two values for argument {n!r}")
            items.append((n, args[i]))
        else:
            if n is None or n not in kwargs:
                raise context.type_error(f"{name} is missing argument {n if n else i!r} of parameter type {parameter}")
            items.append((n, kwargs[n]))
    return items


# --------------------------------------------------------------------------
# Types of Python values (for polymorphic computations called outside tracing).


def _is_dataset(value: Any) -> bool:
    try:
        import tensorflow as tf
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, tf.data.Dataset)


def infer_type(value: Any) -> Type:
    """The fedcore type of a Python value, for polymorphic computations; ArgumentError if it has none."""
    if nests_deeper_than(value, MAX_DEPTH):
        raise context.ArgumentError(
            f"cannot infer a fedcore type for a value nested this deeply: it nests more than MAX_DEPTH={MAX_DEPTH} levels "
            "(fedcore.types.MAX_DEPTH), the deepest a fedcore type may be"
        )
    try:
        return _infer_type(value)
    except RecursionError:
        # Raised at the innermost level; the levels above let the ArgumentError through.
        raise context.ArgumentError(
            "cannot infer a fedcore type for a value nested this deeply: it exceeds Python's recursion limit"
        ) from None


def _infer_type(value: Any) -> Type:
    if _is_dataset(value):
        try:
            return SequenceType(to_type(value.element_spec))
        except TypeError as e:
            raise context.ArgumentError(f"cannot pass this dataset: {e}") from None
    if isinstance(value, np.ma.MaskedArray):
        raise context.ArgumentError(
            f"cannot pass the masked array {value!r}: a fedcore value has no mask; pass value.filled(fill_value)"
        )
    # numpy first: np.float64 is a subclass of Python's float, but keeps its dtype.
    if isinstance(value, (np.ndarray, np.generic)):
        if value.dtype.kind in ("U", "S", "O"):
            return TensorType("string", np.shape(value))
        return TensorType(value.dtype, np.shape(value))
    if isinstance(value, bool):
        return TensorType("bool")
    if isinstance(value, (int, float)):
        try:  # the constant's type: int32, int64 for larger ints, float32 (as tf.constant)
            return literal(value).type_signature
        except ValueError as e:
            raise context.ArgumentError(f"cannot infer a fedcore type for {value!r}: {e}") from None
    if isinstance(value, (str, bytes)):
        return TensorType("string")
    if hasattr(value, "numpy") and hasattr(value, "dtype") and hasattr(value, "shape"):
        return TensorType(value.dtype, tuple(value.shape))
    items = python_items(value)
    if items is not None:
        container = None if isinstance(value, StructValue) else type(value)
        elements = [(n, infer_type(v)) for n, v in items]
        try:
            return StructType(elements, container=container)
        except ValueError as e:  # e.g. dict keys that are not names
            raise context.ArgumentError(f"cannot infer a fedcore type for {value!r}: {e}") from None
    raise context.ArgumentError(
        f"cannot infer a fedcore type for {value!r} of Python type {type(value).__name__}; "
        "pass tensors, numbers, strings, datasets or containers of them, or declare the parameter types"
    )


__all__ = [
    "Value",
    "arrange_arguments",
    "call_intrinsic",
    "call_traced",
    "infer_type",
    "literal",
    "map_uri",
    "to_node",
    "SERVER",
    "CLIENTS",
    "SequenceType",
]
